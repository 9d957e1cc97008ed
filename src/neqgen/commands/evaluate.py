"""Score a trained model, or the training ensemble (the noise floor), frame by frame."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from neqgen.commands.reference import (
    exact_masses_on_bins,
    load_reference_archive,
    reference_path,
)
from neqgen.commands.train import training_seed
from neqgen.config import (
    build_system,
    dataset_path,
    metrics_path,
    model_dir,
    plots_dir,
    to_container,
)
from neqgen.data.dataset import Ensemble, load_ensemble
from neqgen.evaluation.entropy import (
    entropy_production,
    grid_thermodynamics,
    path_heat,
    sample_thermodynamics,
    window_summary,
)
from neqgen.evaluation.figures import plot_metrics_over_time, plot_snapshots
from neqgen.evaluation.frames import (
    evaluation_frames,
    score_frames,
    summarize,
    write_frame_table,
)
from neqgen.tracking import ensure_experiment, tracking_uri

log = logging.getLogger(__name__)

NOISE_FLOOR = "noise_floor"


def _run_tags(run) -> dict[str, str]:
    keys = ("model", "family", "system", "protocol", "replica", "dataset_hash")
    return {key: run.data.tags[key] for key in keys if key in run.data.tags}


def snapshot_frames(times: np.ndarray, requested: list[float]) -> np.ndarray:
    """Return positions in ``times`` nearest to each requested time inside the horizon."""
    inside = [t for t in requested if times[0] <= t <= times[-1]] or [times[0], times[-1]]
    return np.unique([int(np.argmin(np.abs(times - t))) for t in inside])


def _exact_masses(cfg: DictConfig, frames: np.ndarray) -> list[np.ndarray] | None:
    """Return the exact masses on the histogram cells at the given frames, if solved."""
    path = reference_path(cfg)
    if not path.is_file():
        return None
    reference = load_reference_archive(path)
    bins = int(cfg.evaluation.jsd_bins)
    masses = [exact_masses_on_bins(reference, int(frame), bins) for frame in frames]
    if any(mass is None for mass in masses):
        log.warning(
            "Ignoring %s: its grid is not a multiple of evaluation.jsd_bins=%d", path, bins
        )
        return None
    return masses


def _entropy_production(cfg, system, samples, times, frames, paths: bool, name: str) -> dict:
    """Estimate the entropy production of samples at the evaluated frames; compare with exact.

    Writes the per-interval rates to ``<name>_entropy.csv`` and returns the summary. It
    contains the entropy produced up to evaluation.early_until and the mean rate after it,
    from the first law on the marginals. With ``paths`` (the same particle in every column)
    it adds the heat-along-paths estimate, and with a reference the exact values.
    """
    split = float(cfg.evaluation.early_until)
    thermodynamics = sample_thermodynamics(samples, times, system)
    rates = entropy_production(thermodynamics, times, system)
    series = {"epr": rates["epr"]}
    summary = window_summary(rates, split)
    if paths:
        path_rates = entropy_production(
            thermodynamics, times, system, heat=path_heat(samples, times, system)
        )
        series["epr_paths"] = path_rates["epr"]
        summary.update(
            {f"{key}_paths": value for key, value in window_summary(path_rates, split).items()}
        )
    path = reference_path(cfg)
    if path.is_file():
        archive = load_reference_archive(path)
        masses = archive["masses"][frames]
        edges = [archive[f"edges_{axis}"] for axis in range(system.dim)]
        exact = entropy_production(
            grid_thermodynamics(masses, edges, times, system), times, system
        )
        series["epr_exact"] = exact["epr"]
        exact_summary = window_summary(exact, split)
        for key, value in exact_summary.items():
            summary[f"{key}_exact"] = value
            summary[f"{key}_error"] = abs(summary[key] - value)
    plots_dir(cfg).mkdir(parents=True, exist_ok=True)
    write_frame_table(plots_dir(cfg) / f"{name}_entropy.csv", rates["time"], series)
    return summary


def check_evaluation_settings(cfg: DictConfig) -> None:
    """Raise ValueError naming the first evaluation setting out of its range."""
    evaluation = cfg.evaluation
    minimums = {"jsd_bins": 1, "w1_max_points": 2, "frame_stride": 1}
    for key, minimum in minimums.items():
        value = evaluation.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"evaluation.{key} must be an integer >= {minimum}, got {value!r}")
    n_samples = evaluation.get("n_samples")
    if n_samples is not None and (not isinstance(n_samples, int) or n_samples < 2):
        raise ValueError(
            f"evaluation.n_samples must be null (the held-out size) or an integer >= 2, "
            f"got {n_samples!r}"
        )


def _load_reference(cfg: DictConfig) -> tuple[Ensemble, np.ndarray]:
    check_evaluation_settings(cfg)
    heldout = load_ensemble(dataset_path(cfg, "heldout"))
    frames = evaluation_frames(
        heldout.times, int(cfg.evaluation.frame_stride), float(cfg.evaluation.dense_until)
    )
    return heldout, frames


def _write_outputs(
    cfg, name, times, scores, samples, snapshot_index, entropy: dict
) -> dict[str, float]:
    summary = summarize(scores, times, float(cfg.evaluation.early_until))
    summary.update(entropy)
    summary["n_frames"] = len(times)
    summary["n_samples"] = int(samples.shape[1])
    path = metrics_path(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")

    folder = plots_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    write_frame_table(folder / f"{name}.csv", times, scores)
    np.savez(
        folder / f"{name}_snapshots.npz",
        times=times[snapshot_index],
        samples=samples[snapshot_index].astype(np.float32),
    )
    return summary


def run_noise_floor(cfg: DictConfig) -> dict[str, float]:
    """Score the training ensemble against the held-out one: the sampling-noise floor.

    Both ensembles are cut to the number of samples that models are scored with, so the
    floor is what a perfect model would reach.
    """
    heldout, frames = _load_reference(cfg)
    train = load_ensemble(dataset_path(cfg, "train"))
    n_samples = int(cfg.evaluation.n_samples or heldout.n_particles)
    if train.n_particles < n_samples:
        log.warning(
            "Training ensemble has %d particles, fewer than the %d samples models are scored "
            "with; the noise floor is computed from %d",
            train.n_particles,
            n_samples,
            train.n_particles,
        )
    samples = np.asarray(train.positions[frames, :n_samples])
    system = build_system(cfg.system)
    scores = score_frames(
        samples,
        heldout.positions[frames],
        heldout.times[frames],
        system,
        int(cfg.evaluation.jsd_bins),
        int(cfg.evaluation.w1_max_points),
        seed=training_seed(cfg),
        desc="noise floor",
        exact_masses=_exact_masses(cfg, frames),
    )
    snapshots = snapshot_frames(heldout.times[frames], list(cfg.evaluation.snapshot_times))
    times = heldout.times[frames]
    entropy = _entropy_production(cfg, system, samples, times, frames, True, NOISE_FLOOR)
    summary = _write_outputs(cfg, NOISE_FLOOR, times, scores, samples, snapshots, entropy)
    # The held-out ensemble at the snapshot frames is the "truth" row of snapshot figures.
    np.savez(
        plots_dir(cfg) / "truth_snapshots.npz",
        times=heldout.times[frames][snapshots],
        samples=heldout.positions[frames][snapshots],
    )
    log.info("Noise floor of %s/%s: %s", cfg.system.name, cfg.protocol.name, summary)
    return summary


def load_trained_model(cfg: DictConfig, device: str = "cpu"):
    """Load the configured model's checkpoint and its run record from ``model_dir``."""
    folder = model_dir(cfg)
    record_path = folder / "run.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{record_path} not found; train the model first with `neqgen train "
            f"system={cfg.system.name} protocol={cfg.protocol.name} model={cfg.model.name}`"
        )
    record = json.loads(record_path.read_text())
    model_class = hydra.utils.get_class(record["model_target"])
    model = model_class.load_from_checkpoint(folder / "model.ckpt", map_location=device)
    return model, record


def run_evaluation(cfg: DictConfig) -> dict[str, float]:
    """Sample the trained model at the evaluated frames and score it against the held-out set.

    Writes the time-averaged metrics, the per-frame table and snapshot samples, and logs
    metrics and figures into the model's own MLflow run.
    """
    device = str(cfg.evaluation.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "evaluation.device=cuda but no CUDA device is visible; use evaluation.device=cpu"
        )
    heldout, frames = _load_reference(cfg)
    model, record = load_trained_model(cfg, device)
    if record["dataset_hash"] != load_ensemble(dataset_path(cfg, "train")).content_hash:
        log.warning("The training dataset changed since %s was trained", record["run_name"])

    times = heldout.times[frames]
    n_samples = int(cfg.evaluation.n_samples or heldout.n_particles)
    generator = torch.Generator(device=device).manual_seed(training_seed(cfg))
    samples = model.sample(
        torch.as_tensor(times),
        n_samples,
        generator=generator,
        batch_size=int(cfg.evaluation.batch_size),
        progress=True,
    ).numpy()
    if not np.isfinite(samples).all():
        raise RuntimeError(
            f"{record['run_name']} generated NaN or inf samples; the model diverged. "
            f"Retrain with a smaller model.learning_rate (now {cfg.model.learning_rate})"
        )
    system = build_system(cfg.system)
    scores = score_frames(
        samples,
        heldout.positions[frames],
        times,
        system,
        int(cfg.evaluation.jsd_bins),
        int(cfg.evaluation.w1_max_points),
        seed=training_seed(cfg),
        desc=f"score {cfg.model.name}",
        exact_masses=_exact_masses(cfg, frames),
    )
    snapshots = snapshot_frames(times, list(cfg.evaluation.snapshot_times))
    paths = getattr(model, "data_kind", "frames") == "paths"
    entropy = _entropy_production(cfg, system, samples, times, frames, paths, cfg.model.name)
    summary = _write_outputs(cfg, cfg.model.name, times, scores, samples, snapshots, entropy)
    _log_to_run(
        cfg, system, record["run_id"], times, scores, summary, samples, heldout, frames, snapshots
    )
    log.info("Evaluated %s: %s", record["run_name"], summary)
    return summary


def _log_to_run(cfg, system, run_id, times, scores, summary, samples, heldout, frames, snapshots):
    """Log summary metrics and figures into the training run, per-frame series into a child.

    MLflow keeps every logged value of a metric, so evaluating a model twice would repeat
    its per-frame series in one history. Each evaluation therefore gets its own nested run
    for the series, while the training run keeps the latest summary values.
    """
    experiment_id = ensure_experiment(cfg)
    client = MlflowClient(tracking_uri(cfg))
    try:
        parent = client.get_run(run_id)
    except MlflowException as error:
        raise FileNotFoundError(
            f"MLflow run {run_id} of {model_dir(cfg) / 'run.json'} is not in the store "
            f"{tracking_uri(cfg)}; retrain with `dvc repro --force train@{cfg.system.name}-"
            f"{cfg.protocol.name}-{cfg.model.name}` or set tracking.uri to the store that has it"
        ) from error

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(f"eval/{name}", float(value), now, 0) for name, value in summary.items()],
    )
    child = client.create_run(
        experiment_id,
        run_name=f"{parent.info.run_name}-evaluation",
        tags={"mlflow.parentRunId": run_id, "kind": "evaluation", **_run_tags(parent)},
    )
    per_frame = [
        Metric(f"eval/{name}", float(value), now, int(frames[index]))
        for name, values in scores.items()
        for index, value in enumerate(values)
    ]
    for start in range(0, len(per_frame), 1000):
        client.log_batch(child.info.run_id, metrics=per_frame[start : start + 1000])
    client.log_batch(
        child.info.run_id,
        params=[
            Param(f"config.evaluation.{key}", str(value))
            for key, value in to_container(cfg.evaluation).items()
        ],
    )
    client.set_terminated(child.info.run_id)

    curves = {cfg.model.name: {"time": times, **scores}}
    floor_table = plots_dir(cfg) / f"{NOISE_FLOOR}.csv"
    if floor_table.is_file():
        floor = np.genfromtxt(floor_table, delimiter=",", names=True)
        curves["noise floor"] = {name: floor[name] for name in floor.dtype.names}
    title = f"{cfg.model.name} on {cfg.system.name}/{cfg.protocol.name}"
    figures = {
        "metrics_over_time.png": plot_metrics_over_time(curves, title),
        "snapshots.png": plot_snapshots(
            {
                "held-out truth": heldout.positions[frames][snapshots],
                cfg.model.name: samples[snapshots],
            },
            times[snapshots],
            system.domain,
            title=title,
        ),
    }
    with tempfile.TemporaryDirectory() as scratch:
        for filename, figure in figures.items():
            figure.savefig(Path(scratch) / filename, dpi=110)
            plt.close(figure)
            client.log_artifact(run_id, str(Path(scratch) / filename), artifact_path="figures")
        client.log_artifact(run_id, str(plots_dir(cfg) / f"{cfg.model.name}.csv"), "metrics")
