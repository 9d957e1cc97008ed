"""Outputs of a study: the tuned model config, figures and the trial table."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from neqgen.config import ConfigError, load_config, to_container
from neqgen.tuning.settings import StudySettings, trial_config
from neqgen.tuning.study import FINISHED, count_trials

log = logging.getLogger(__name__)


def best_trial(study: optuna.Study, settings: StudySettings) -> optuna.trial.FrozenTrial | None:
    """Return the best complete trial; with two objectives, the Pareto trial best in metric."""
    if count_trials(study, optuna.trial.TrialState.COMPLETE) == 0:
        return None
    if not settings.multi_objective:
        return study.best_trial
    sign = 1 if settings.space.direction == "minimize" else -1
    return min(study.best_trials, key=lambda trial: (sign * trial.values[0], trial.number))


def tuned_model_yaml(
    cfg: DictConfig, settings: StudySettings, best: optuna.trial.FrozenTrial
) -> str:
    """Return the model config of the best trial, with a header that says where it came from."""
    model = to_container(cfg.model)
    model.update(best.params)
    base_name = model["name"]
    # Run names already carry the system and protocol, so a study with the default name
    # (<model>-<system>-<protocol>) gives the short name <model>-tuned.
    default_study = f"{base_name}-{cfg.system.name}-{cfg.protocol.name}"
    suffix = "" if settings.study_name == default_study else f"-{settings.study_name}"
    model["name"] = f"{base_name}-tuned{suffix}"
    values = ", ".join(f"{value:.6g}" for value in best.values)
    header = [
        f"# {base_name} tuned by `neqgen tune`: trial {best.number} of study "
        f"{settings.study_name},",
        f"# {settings.space.metric} {values}, searched {', '.join(settings.space.names)}.",
        f"# Storage: {settings.storage_label}",
        f"# The trials trained on system={cfg.system.name} protocol={cfg.protocol.name} with "
        f"trainer.max_epochs={cfg.trainer.max_epochs}.",
        f"# Retrain with `neqgen train model=tuned/{settings.study_name}` and the same size "
        f"overrides.",
    ]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(model))


def check_tuned_config(
    settings: StudySettings,
    best: optuna.trial.FrozenTrial,
    config_dir: Path,
    overrides: list[str],
) -> None:
    """Warn if composing model=tuned/<study> with the study's overrides loses tuned values.

    Size presets such as experiment=tiny set model keys after the model file, so they win
    over the tuned values of those keys.
    """
    study_overrides = [
        item for item in overrides if not item.lstrip("+~").startswith(("model=", "tune"))
    ]
    try:
        tuned = load_config([*study_overrides, f"model=tuned/{settings.study_name}"], config_dir)
    except ConfigError as error:
        log.warning("model=tuned/%s does not compose: %s", settings.study_name, error)
        return
    lost = {
        name: tuned.model.get(name)
        for name, value in best.params.items()
        if tuned.model.get(name) != value
    }
    if lost:
        log.warning(
            "With the overrides %s, model=tuned/%s composes to %s instead of the tuned %s; "
            "pass the tuned values as overrides when retraining",
            study_overrides,
            settings.study_name,
            lost,
            {name: best.params[name] for name in lost},
        )


def save_figures(study: optuna.Study, settings: StudySettings, folder: Path) -> list[Path]:
    """Save Optuna's matplotlib figures of the study as PNG files and return their paths.

    A figure that needs more trials than exist (parameter importance needs two complete
    trials with varied parameters) is skipped with a log line.
    """
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as figures

    complete = count_trials(study, optuna.trial.TrialState.COMPLETE)
    if complete == 0:
        log.info("Skipping the study figures: no trial has completed")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    metric = settings.space.metric
    target = None
    importance_target = None
    if settings.multi_objective:
        # The figures show the metric; importance is computed for low target values.
        sign = 1.0 if settings.space.direction == "minimize" else -1.0

        def target(trial):
            return trial.values[0]

        def importance_target(trial):
            return sign * trial.values[0]

    plots = {
        "optimization_history": lambda: figures.plot_optimization_history(
            study, target=target, target_name=metric
        ),
        "parallel_coordinate": lambda: figures.plot_parallel_coordinate(
            study, target=target, target_name=metric
        ),
    }
    if complete >= 2:
        plots["param_importances"] = lambda: figures.plot_param_importances(
            study, target=importance_target, target_name=metric
        )
    else:
        log.info("Skipping the parameter importance figure: it needs 2 complete trials")
    if settings.multi_objective:
        plots["pareto_front"] = lambda: figures.plot_pareto_front(
            study, target_names=[metric, "training time (s)"]
        )

    saved = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            # Optuna marks its matplotlib figures experimental, warns when an importance
            # target is given, and matplotlib warns about a parameter with a single value.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot()
            except (ValueError, RuntimeError) as error:
                log.info("Skipping the %s figure: %s", name, error)
                continue
            path = folder / f"{name}.png"
            axes.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        saved.append(path)
    return saved


def summarize(
    study: optuna.Study, settings: StudySettings, tuned_path: Path | None, parent_id: str
) -> dict[str, Any]:
    """Return the study's name, storage, trial counts and best trial as a plain dict."""
    best = best_trial(study, settings)
    return {
        "study_name": settings.study_name,
        "storage": settings.storage_label,
        "n_trials": settings.n_trials,
        "n_finished": count_trials(study, *FINISHED),
        "n_complete": count_trials(study, optuna.trial.TrialState.COMPLETE),
        "n_pruned": count_trials(study, optuna.trial.TrialState.PRUNED),
        "n_failed": count_trials(study, optuna.trial.TrialState.FAIL),
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.values[0],
        "best_params": None if best is None else dict(best.params),
        "tuned_config": None if tuned_path is None else str(tuned_path),
        "parent_run_id": parent_id,
    }


def write_study_files(
    study: optuna.Study,
    cfg: DictConfig,
    settings: StudySettings,
    folder: Path,
    config_dir: Path,
    overrides: list[str] | None,
) -> Path | None:
    """Write the tuned model config to the config folder, and the study's records to folder.

    The tuned config goes to ``<config_dir>/model/tuned/<study>.yaml``. Folder receives a
    copy of it (tuned_model.yaml), the whole config of the best trial
    (best_trial_config.yaml), the trial table (trials.csv) and the figures (figures/*.png).
    Returns the tuned config path, or None while no trial has completed.
    """
    best = best_trial(study, settings)
    tuned_path = None
    if best is not None:
        tuned_path = config_dir / "model" / "tuned" / f"{settings.study_name}.yaml"
        text = tuned_model_yaml(cfg, settings, best)
        _write_atomic(tuned_path, text)
        (folder / "tuned_model.yaml").write_text(text)
        best_cfg = trial_config(cfg, best.params)
        (folder / "best_trial_config.yaml").write_text(OmegaConf.to_yaml(best_cfg, resolve=True))
        log.info("Wrote %s (trial %d)", tuned_path, best.number)
        if overrides is not None:
            check_tuned_config(settings, best, config_dir, overrides)
    study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    save_figures(study, settings, folder / "figures")
    return tuned_path


def _write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file, so parallel workers never mix writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        file.write(text)
    Path(file.name).replace(path)
