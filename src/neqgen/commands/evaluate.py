"""Score a trained model, or the training ensemble (the noise floor), frame by frame."""

from __future__ import annotations

import inspect
import json
import logging
import tempfile
import time
from dataclasses import dataclass
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
from neqgen.data.dataset import Ensemble, load_ensemble, write_arrays
from neqgen.evaluation.entropy import (
    entropy_production,
    grid_thermodynamics,
    path_heat,
    sample_thermodynamics,
    window_summary,
)
from neqgen.evaluation.figures import plot_snapshots
from neqgen.evaluation.frames import (
    evaluation_frames,
    score_frames,
    summarize,
    write_frame_table,
)
from neqgen.evaluation.run_figures import (
    DensityGrid,
    domain_edges,
    plot_density_snapshots,
    plot_energy_comparison,
    plot_metrics_against_time,
    plot_sample_paths,
    render_summary,
    write_marginal_animation,
)
from neqgen.tracking import ensure_experiment, tracking_uri

log = logging.getLogger(__name__)

NOISE_FLOOR = "noise_floor"
# Histogram cells a dimension of the generated densities in the run's figures.
FIGURE_BINS = {1: 60, 2: 40}
# Paths drawn in the sample-path figure of trajectory models, and their time points.
FIGURE_PATHS = 8
FIGURE_PATH_TIMES = 101


@dataclass(frozen=True)
class ScoredFrames:
    """A model's samples and scores at the evaluated frames, as the run's figures need them.

    Attributes
    ----------
    times:
        Physical times of the evaluated frames, shape (n_frames,).
    frames:
        Positions of the evaluated frames in the held-out ensemble and the reference.
    snapshots:
        Positions in ``times`` of the snapshot figures' columns.
    samples:
        Generated samples, shape (n_frames, n_samples, dim).
    scores:
        Per-frame metrics, each of shape (n_frames,).
    summary:
        Time-averaged metrics, as in metrics/<system>/<protocol>/r<k>/<model>.json.
    """

    times: np.ndarray
    frames: np.ndarray
    snapshots: np.ndarray
    samples: np.ndarray
    scores: dict[str, np.ndarray]
    summary: dict[str, float]


def _run_tags(run) -> dict[str, str]:
    keys = ("model", "family", "system", "protocol", "replica", "dataset_hash", "dataset_path")
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
    write_arrays(
        folder / f"{name}_snapshots.npz",
        {
            "times": times[snapshot_index],
            "samples": samples[snapshot_index].astype(np.float32),
        },
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
    write_arrays(
        plots_dir(cfg) / "truth_snapshots.npz",
        {
            "times": heldout.times[frames][snapshots],
            "samples": heldout.positions[frames][snapshots],
        },
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
        cfg,
        system,
        model,
        record["run_id"],
        times,
        scores,
        summary,
        samples,
        heldout,
        frames,
        snapshots,
    )
    log.info("Evaluated %s: %s", record["run_name"], summary)
    return summary


def _log_to_run(
    cfg, system, model, run_id, times, scores, summary, samples, heldout, frames, snapshots
):
    """Log summary metrics, figures and summary.md into the training run, series into a child.

    MLflow keeps every logged value of a metric, so evaluating a model twice would repeat
    its per-frame series in one history. Each evaluation therefore gets its own nested run
    for the series, while the training run keeps the latest summary values, figures and
    summary page (a new evaluation overwrites them).
    """
    experiment_id = ensure_experiment(cfg)
    client = MlflowClient(tracking_uri(cfg))
    stand_in_run = False
    try:
        parent = client.get_run(run_id)
    except MlflowException:
        # A checkpoint pulled with `dvc pull` or restored from DVC's run cache keeps the id
        # of a training run in another MLflow store. The evaluation is still logged, under
        # a stand-in run that records which training run it belongs to.
        stand_in = f"{cfg.model.name}-{cfg.system.name}-{cfg.protocol.name}-r{cfg.replica}"
        log.warning(
            "MLflow run %s of %s is not in the store %s (checkpoint pulled or restored by "
            "DVC?); logging the evaluation under a new run %s. Point tracking.uri at the "
            "store that has the training run to log into it instead.",
            run_id,
            model_dir(cfg) / "run.json",
            tracking_uri(cfg),
            stand_in,
        )
        parent = client.create_run(
            experiment_id,
            run_name=stand_in,
            tags={
                "model": str(cfg.model.name),
                "system": str(cfg.system.name),
                "protocol": str(cfg.protocol.name),
                "replica": str(cfg.replica),
                "training_run_id": run_id,
            },
        )
        run_id = parent.info.run_id
        stand_in_run = True

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

    floor_table = plots_dir(cfg) / f"{NOISE_FLOOR}.csv"
    floor = None
    if floor_table.is_file():
        table = np.genfromtxt(floor_table, delimiter=",", names=True)
        floor = {name: table[name] for name in table.dtype.names}
    title = f"{cfg.model.name} on {cfg.system.name}/{cfg.protocol.name}"
    client.log_figure(
        run_id,
        plot_snapshots(
            {
                "held-out truth": heldout.positions[frames][snapshots],
                cfg.model.name: samples[snapshots],
            },
            times[snapshots],
            system.domain,
            title=title,
        ),
        "figures/snapshots.png",
        save_kwargs={"dpi": 110},
    )
    plt.close("all")
    client.log_artifact(run_id, str(plots_dir(cfg) / f"{cfg.model.name}.csv"), "metrics")

    started = time.perf_counter()
    scored = ScoredFrames(times, frames, snapshots, samples, scores, summary)
    figures = _log_run_figures(cfg, client, run_id, system, model, scored, heldout, floor, title)
    page = _summary_page(cfg, parent, child.info.run_id, scored, figures)
    client.log_text(run_id, page, "summary.md")
    log.info(
        "Logged %d figures and summary.md to MLflow run %s in %.1f s",
        len(figures),
        parent.info.run_name,
        time.perf_counter() - started,
    )
    if stand_in_run:
        client.set_terminated(run_id)


def _true_density(cfg, system, heldout, frames) -> tuple[DensityGrid, str]:
    """Return the exact density at the frames if the reference is solved, else held-out's."""
    path = reference_path(cfg)
    if path.is_file():
        archive = load_reference_archive(path)
        edges = [archive[f"edges_{axis}"] for axis in range(system.dim)]
        return DensityGrid.from_masses(archive["masses"][frames], edges), "exact (Fokker-Planck)"
    edges = domain_edges(system.domain, FIGURE_BINS[system.dim])
    positions = np.asarray(heldout.positions[frames])
    return DensityGrid.from_samples(positions, edges), "held-out ensemble"


def _energy_function(model):
    """Return E(positions, time) in numpy for a model with an ``energy`` method, else None.

    Energy models define p = exp(-E) / Z, so E is in units of k_B T. A stationary energy
    takes no time and returns the same E at every time.
    """
    energy = getattr(model, "energy", None)
    if not callable(energy):
        return None
    takes_time = len(inspect.signature(energy).parameters) > 1

    def evaluate(positions: np.ndarray, time_point: float) -> np.ndarray:
        x = torch.as_tensor(positions, dtype=torch.float32, device=model.device)
        with torch.no_grad():
            if takes_time:
                values = energy(x, torch.full((len(x),), time_point, device=model.device))
            else:
                values = energy(x)
        return values.cpu().numpy()

    return evaluate


def _log_run_figures(
    cfg, client, run_id, system, model, scored: ScoredFrames, heldout, floor, title: str
) -> dict[str, str]:
    """Log the figures under figures/ of the training run and return their captions by path.

    ``floor`` is the noise floor's per-frame table (a ``time`` column and one column per metric)
    or None. Energy models add the learned energy, trajectory models sampled paths.
    """
    label = cfg.model.name
    times, frames, snapshots = scored.times, scored.frames, scored.snapshots
    samples, scores = scored.samples, scored.scores
    true, true_label = _true_density(cfg, system, heldout, frames)
    bins = FIGURE_BINS[system.dim]
    figures = {
        "figures/density_snapshots.png": (
            "potential, true and generated density at the snapshot times",
            lambda: plot_density_snapshots(
                system,
                times[snapshots],
                samples[snapshots],
                true.frames(snapshots),
                generated_label=label,
                true_label=true_label,
                bins=bins,
                title=title,
            ),
        ),
        "figures/metrics_over_time.png": (
            "per-frame metrics against time, with the noise floor",
            lambda: plot_metrics_against_time(times, scores, floor, label, title),
        ),
    }
    energy = _energy_function(model)
    if energy is not None:
        model.eval()
        figures["figures/energy_vs_potential.png"] = (
            "learned energy next to the true potential",
            lambda: plot_energy_comparison(
                system, times[snapshots], energy, f"learned E ({label})", title=title
            ),
        )
    if callable(getattr(model, "sample_paths", None)):
        figures["figures/sample_paths.png"] = (
            f"{FIGURE_PATHS} sampled paths over the potential",
            lambda: plot_sample_paths(system, *_sample_paths(cfg, model, times), title=title),
        )

    captions = {}
    for artifact, (caption, build) in figures.items():
        client.log_figure(run_id, build(), artifact, save_kwargs={"dpi": 100})
        plt.close("all")
        captions[artifact] = caption
    with tempfile.TemporaryDirectory() as scratch:
        animation = Path(scratch) / "marginal_animation.gif"
        write_marginal_animation(
            animation, system, times, samples, true, label, true_label, bins=bins
        )
        client.log_artifact(run_id, str(animation), artifact_path="figures")
    captions["figures/marginal_animation.gif"] = (
        "true and generated marginal over time, with the potential's contours (GIF)"
    )
    captions["figures/snapshots.png"] = "held-out and generated histograms at the snapshot times"
    return captions


def _sample_paths(cfg, model, times) -> tuple[np.ndarray, np.ndarray]:
    """Draw FIGURE_PATHS paths of a trajectory model on a fine time grid of the horizon."""
    fine = np.linspace(float(times[0]), float(times[-1]), FIGURE_PATH_TIMES)
    generator = torch.Generator(device=model.device).manual_seed(training_seed(cfg))
    paths = model.sample_paths(torch.as_tensor(fine), FIGURE_PATHS, generator)
    return fine, paths.cpu().numpy()


def _summary_page(cfg, parent, evaluation_run_id, scored: ScoredFrames, figures) -> str:
    """Render summary.md of a training run from its tags, metrics and the noise floor."""
    tags = parent.data.tags
    experiment_id = parent.info.experiment_id
    run_id = parent.info.run_id
    floor_path = metrics_path(cfg, NOISE_FLOOR)
    floor = json.loads(floor_path.read_text()) if floor_path.is_file() else None
    facts = {
        "model": f"{cfg.model.name} ({tags.get('family', 'unknown')} family)",
        "system": cfg.system.name,
        "protocol": cfg.protocol.name,
        "replica": str(tags.get("replica", "")),
        "training data": f"`{tags.get('dataset_path', dataset_path(cfg, 'train'))}`",
        "dataset hash": f"`{tags.get('dataset_hash', 'unknown')}`",
        "training run": f"{parent.info.run_name} (`{run_id}`)",
        "evaluation run": f"`{evaluation_run_id}`",
        "MLflow UI": (
            f"http://{cfg.ui.host}:{cfg.ui.port}/#/experiments/{experiment_id}/runs/{run_id}"
        ),
        "scored": f"{len(scored.times)} frames, {scored.samples.shape[1]} samples a frame",
    }
    return render_summary(parent.info.run_name, facts, scored.summary, floor, figures)
