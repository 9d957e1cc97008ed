"""Tune one model's hyperparameters with an Optuna study, tracked in MLflow.

Every trial trains with the regular training code (``run_training``) as an MLflow run
nested under one parent run per study. The study lives in Optuna storage, so the same
command resumes it after a crash and several workers can share it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from neqgen.commands.train import run_training
from neqgen.config import default_config_dir, to_container
from neqgen.tracking import ensure_experiment, tracking_uri
from neqgen.tuning.outputs import summarize, write_study_files
from neqgen.tuning.settings import (
    StudySettings,
    check_settings,
    storage_url,
    study_fingerprint,
    trial_config,
)
from neqgen.tuning.study import (
    FINISHED,
    UNFINISHED,
    build_pruner,
    build_sampler,
    build_storage,
    count_trials,
    study_directions,
)
from neqgen.tuning.tracking import (
    RUN_ID,
    STATE_TAGS,
    close_lost_run,
    close_stale_run,
    log_study_outputs,
    parent_run,
    record_trial_run,
)
from neqgen.tuning.workers import (
    WORKER_ATTRIBUTE,
    fail_dead_local_trials,
    folder_lock,
    worker_identity,
)

log = logging.getLogger(__name__)

# Trial user attributes: the training wall time in seconds, and a mark on trials that a
# worker started but did not need (see is_surplus).
TRAIN_SECONDS = "train_seconds"
SURPLUS = "surplus"


class TuningError(RuntimeError):
    """Raised when a worker stops because too many of its trials failed."""


class SurplusTrial(Exception):
    """Raised inside a trial that another worker's trials have made unnecessary."""


@dataclass
class WorkerState:
    """State of one worker process: its identity, its last trial and its failed-trial count."""

    identity: dict[str, Any] = field(default_factory=worker_identity)
    last_trial: optuna.trial.FrozenTrial | None = None
    failed: int = 0


class EpochReporter(Callback):
    """Record the tuned metric after every validation epoch, report it to Optuna and prune.

    Pruning sets ``trainer.should_stop`` instead of raising inside the Trainer, as
    optuna-integration's PyTorchLightningPruningCallback does, so the pruned run ends
    normally and the train command records it like any other. The objective raises
    ``optuna.TrialPruned`` after training.
    """

    def __init__(self, trial: optuna.trial.Trial, metric: str, prune: bool) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.prune = prune
        self.values: list[float] = []
        self.pruned_epoch: int | None = None
        self.run_id: str | None = None
        self.fit_seconds: float | None = None
        self._start = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        run_id = getattr(trainer.logger, "run_id", None)
        if run_id is not None:
            self.run_id = run_id
            self.trial.set_user_attr(RUN_ID, run_id)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise ValueError(
                f"the model logs no metric {self.metric!r}; it logs "
                f"{sorted(trainer.callback_metrics)}. Set tune.space.metric to one of them"
            )
        value = float(value)
        self.values.append(value)
        if not self.prune:
            return
        self.trial.report(value, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_epoch = trainer.current_epoch
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._start

    def best_value(self, direction: str) -> float:
        """Return the best finite value over the epochs, or NaN if there is none."""
        finite = [value for value in self.values if math.isfinite(value)]
        if not finite:
            return math.nan
        return min(finite) if direction == "minimize" else max(finite)


def run_tuning(
    cfg: DictConfig,
    config_dir: str | Path | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run or resume the Optuna study of cfg.model until tune.n_trials trials have finished.

    Finished means complete or pruned. A rerun of the same command continues the study
    in its storage and runs only the missing trials; several workers may run at once.
    Writes the best configuration to ``<config_dir>/model/tuned/<study>.yaml`` and the
    figures and trial table to the study's MLflow parent run. ``overrides`` (the command
    line) let it check that the written config composes back to the tuned values.

    Returns
    -------
    dict
        The study name, storage, trial counts, best value and parameters, the tuned config
        path and the parent run id.

    Raises
    ------
    ValueError
        For invalid settings, a study stored with other settings, or a model with nothing
        to train.
    FileNotFoundError
        If the training ensemble has not been simulated.
    TuningError
        If tune.max_failed_trials of this worker's trials failed.
    """
    start = time.perf_counter()
    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    settings = check_settings(cfg)
    sampler, pruner = build_search(cfg, settings)
    # One worker at a time creates or opens the stores and the parent run.
    with folder_lock(cfg.paths.mlruns):
        client = MlflowClient(tracking_uri(cfg))
        experiment_id = ensure_experiment(cfg)
        study = open_study(cfg, settings, client, sampler, pruner)
        parent_id = parent_run(client, experiment_id, cfg, settings)
        study.set_user_attr("mlflow_parent_run_id", parent_id)

    verbosity = optuna.logging.get_verbosity()
    # Optuna logs its own line per trial; the progress lines below replace it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        worker = WorkerState()
        objective = make_objective(cfg, settings, study, parent_id, worker)
        optimize(study, objective, settings, worker, client)
    finally:
        optuna.logging.set_verbosity(verbosity)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tuned_path = write_study_files(study, cfg, settings, folder, config_dir, overrides)
        log_study_outputs(client, parent_id, study, settings, folder)
    summary = summarize(study, settings, tuned_path, parent_id)
    summary["wall_seconds"] = time.perf_counter() - start
    log.info(
        "Study %s: %d of %d trials finished (%d pruned, %d failed) in %.1f s; best %s %s; "
        "MLflow parent run %s",
        settings.study_name,
        summary["n_finished"],
        settings.n_trials,
        summary["n_pruned"],
        summary["n_failed"],
        summary["wall_seconds"],
        settings.space.metric,
        summary["best_value"],
        parent_id,
    )
    return summary


def build_search(
    cfg: DictConfig, settings: StudySettings
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """Return the sampler and pruner of cfg.tune."""
    tune = cfg.tune
    sampler = build_sampler(
        tune.sampler, tune.seed, tune.n_startup_trials, settings.multi_objective, settings.space
    )
    pruner = build_pruner(to_container(tune.pruner), int(cfg.trainer.max_epochs))
    if settings.multi_objective and tune.pruner.kind != "none":
        log.info("Pruning is off: Optuna cannot prune trials with several objectives")
    return sampler, pruner


def open_study(
    cfg: DictConfig,
    settings: StudySettings,
    client: MlflowClient,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or load it if it exists and was run with the same settings."""
    tune = cfg.tune
    storage = build_storage(
        storage_url(cfg),
        tune.journal,
        tune.heartbeat_interval,
        on_stale_trial=close_stale_run(client),
    )
    directions = study_directions(settings.space, settings.multi_objective)
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=settings.study_name,
        directions=directions,
        load_if_exists=True,
    )
    if list(study.directions) != directions:
        raise ValueError(
            f"study {settings.study_name!r} in {settings.storage_label} optimises "
            f"{[d.name.lower() for d in study.directions]}, not "
            f"{[d.name.lower() for d in directions]}; use the settings it was created with "
            f"or another tune.study_name"
        )
    fingerprint = study_fingerprint(cfg, settings)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", fingerprint)
    elif stored != fingerprint:
        differences = [
            f"{key}={stored.get(key)!r} in the study, {fingerprint.get(key)!r} now"
            for key in sorted(set(stored) | set(fingerprint))
            if stored.get(key) != fingerprint.get(key)
        ]
        raise ValueError(
            f"study {settings.study_name!r} in {settings.storage_label} was run with other "
            f"settings: {'; '.join(differences)}. Pass the same overrides to resume it, or "
            f"choose another tune.study_name"
        )
    log.info(
        "Study %s in %s: %d of %d trials finished",
        settings.study_name,
        settings.storage_label,
        count_trials(study, *FINISHED),
        settings.n_trials,
    )
    return study


def make_objective(
    cfg: DictConfig,
    settings: StudySettings,
    study: optuna.Study,
    parent_id: str,
    worker: WorkerState,
):
    """Return the objective: train one trial's config and return its metric.

    The value is the best of the metric over the epochs, as the train command keeps the
    checkpoint of the best epoch. With tune.multi_objective, the objective returns the
    metric and the training wall time in seconds.
    """
    space = settings.space
    client = MlflowClient(tracking_uri(cfg))

    def objective(trial: optuna.trial.Trial) -> float | tuple[float, float]:
        trial.set_user_attr(WORKER_ATTRIBUTE, worker.identity)
        if is_surplus(study, trial.number, settings.n_trials):
            trial.set_user_attr(SURPLUS, True)
            raise SurplusTrial(
                f"trial {trial.number} is not needed: earlier trials already make "
                f"{settings.n_trials}"
            )
        values = space.suggest(trial)
        reporter = EpochReporter(trial, space.metric, prune=not settings.multi_objective)
        tags = {
            "mlflow.parentRunId": parent_id,
            "optuna.study": settings.study_name,
            "optuna.study_key": settings.study_key,
            "optuna.trial": str(trial.number),
        }
        try:
            with tempfile.TemporaryDirectory(prefix=f"neqgen-trial-{trial.number}-") as folder:
                run_training(
                    trial_config(cfg, values),
                    callbacks=[reporter],
                    tags=tags,
                    run_name=f"{settings.study_name}-trial-{trial.number}",
                    output=Path(folder),
                )
        except BaseException:
            if reporter.run_id is not None:
                record_trial_run(client, reporter.run_id, values, "failed")
            raise
        if reporter.fit_seconds is not None:
            trial.set_user_attr(TRAIN_SECONDS, reporter.fit_seconds)
        if reporter.pruned_epoch is not None:
            raise optuna.TrialPruned(
                f"{space.metric} {reporter.values[-1]:.6g} at epoch {reporter.pruned_epoch}"
            )
        value = reporter.best_value(space.direction)
        if settings.multi_objective:
            return value, reporter.fit_seconds
        return value

    return objective


def is_surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Return True if the trials numbered below `number` finish the study without it.

    Workers count the trials before they start one, but two of them can count at the same
    moment. Then the later-numbered trial is surplus, and this check catches it.
    """
    earlier = study.get_trials(deepcopy=False, states=(*FINISHED, *UNFINISHED))
    return sum(1 for trial in earlier if trial.number < number) >= n_trials


def optimize(
    study: optuna.Study,
    objective,
    settings: StudySettings,
    worker: WorkerState,
    client: MlflowClient,
) -> None:
    """Run trials one at a time until the study has tune.n_trials finished trials."""
    on_lost = close_lost_run(client)
    progress = make_progress(settings, worker, client)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        fail_dead_local_trials(study, on_lost)
        finished = count_trials(study, *FINISHED)
        running = count_trials(study, *UNFINISHED)
        if finished >= settings.n_trials:
            return
        if finished + running >= settings.n_trials:
            log.info(
                "%d finished trials and %d running in other workers reach tune.n_trials=%d; "
                "stopping",
                finished,
                running,
                settings.n_trials,
            )
            return
        study.optimize(
            objective, n_trials=1, catch=(RuntimeError, SurplusTrial), callbacks=[progress]
        )
        trial = worker.last_trial
        if trial.user_attrs.get(SURPLUS):
            return
        if trial.state == optuna.trial.TrialState.FAIL:
            worker.failed += 1
            if worker.failed >= settings.max_failed_trials:
                raise TuningError(
                    f"{worker.failed} trials of this worker failed (the last one, trial "
                    f"{trial.number}, with {trial.params}); see the warnings above, then fix "
                    f"the search space or raise tune.max_failed_trials"
                )


def make_progress(settings: StudySettings, worker: WorkerState, client: MlflowClient):
    """Return the study callback that records a finished trial and logs a progress line."""
    metric = settings.space.metric

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        worker.last_trial = trial
        state = STATE_TAGS.get(trial.state, trial.state.name.lower())
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id is not None:
            values = {}
            if trial.values is not None and trial.state == optuna.trial.TrialState.COMPLETE:
                values["tune/value"] = trial.values[0]
            if trial.user_attrs.get(TRAIN_SECONDS) is not None:
                values["tune/train_seconds"] = trial.user_attrs[TRAIN_SECONDS]
            record_trial_run(client, run_id, trial.params, state, values)

        finished = count_trials(study, *FINISHED)
        done = f"{finished} of {settings.n_trials} trials finished"
        if trial.state == optuna.trial.TrialState.COMPLETE:
            if settings.multi_objective:
                front = len(study.best_trials)
                log.info(
                    "Trial %d complete: %s %.6g, training %.1f s; %d on the Pareto front; %s",
                    trial.number,
                    metric,
                    trial.values[0],
                    trial.values[1],
                    front,
                    done,
                )
                return
            log.info(
                "Trial %d complete: %s %.6g (best %.6g, trial %d); %s",
                trial.number,
                metric,
                trial.value,
                study.best_value,
                study.best_trial.number,
                done,
            )
        elif trial.state == optuna.trial.TrialState.PRUNED:
            epoch = max(trial.intermediate_values, default=None)
            best = _best_text(study, settings)
            log.info(
                "Trial %d pruned after epoch %s: %s %.6g%s; %s",
                trial.number,
                epoch,
                metric,
                trial.intermediate_values.get(epoch, math.nan),
                best,
                done,
            )
        elif not trial.user_attrs.get(SURPLUS):
            log.info("Trial %d failed%s; %s", trial.number, _best_text(study, settings), done)

    return progress


def _best_text(study: optuna.Study, settings: StudySettings) -> str:
    if settings.multi_objective or count_trials(study, optuna.trial.TrialState.COMPLETE) == 0:
        return ""
    return f" (best {study.best_value:.6g}, trial {study.best_trial.number})"
