"""MLflow records of a study: one parent run, and a nested run per trial."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from neqgen.config import to_container
from neqgen.tracking import flatten_params, log_params
from neqgen.tuning.outputs import best_trial
from neqgen.tuning.settings import StudySettings
from neqgen.tuning.study import FINISHED, UNFINISHED, count_trials

log = logging.getLogger(__name__)

# MLflow tag value of each final trial state.
STATE_TAGS = {
    optuna.trial.TrialState.COMPLETE: "complete",
    optuna.trial.TrialState.PRUNED: "pruned",
    optuna.trial.TrialState.FAIL: "failed",
}
# Trial user attribute with the id of the trial's MLflow run.
RUN_ID = "mlflow_run_id"


def parent_run(
    client: MlflowClient, experiment_id: str, cfg: DictConfig, settings: StudySettings
) -> str:
    """Return the id of the study's MLflow parent run, creating it for a new study.

    Workers that start together may each create one; all of them then keep the earliest
    and delete their own.
    """
    found = _parent_runs(client, experiment_id, settings)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        created = client.create_run(
            experiment_id,
            run_name=f"tune-{settings.study_name}",
            tags={
                "optuna.study": settings.study_name,
                "optuna.study_key": settings.study_key,
                "optuna.storage": settings.storage_label,
                "optuna.role": "study",
                "model": cfg.model.name,
                "system": cfg.system.name,
                "protocol": cfg.protocol.name,
            },
        ).info.run_id
        run_id = _parent_runs(client, experiment_id, settings)[0].info.run_id
        if run_id != created:
            client.delete_run(created)
        else:
            base = {key: value for key, value in to_container(cfg).items() if key != "tune"}
            params = flatten_params(base, prefix="config.")
            for name in settings.space.names:
                params.pop(f"config.model.{name}", None)
            for parameter in settings.space.parameters:
                params[f"space.{parameter.name}"] = parameter.describe()
            log_params(client, run_id, params)
    tune = cfg.tune
    tags = {
        "optuna.n_trials": str(settings.n_trials),
        "optuna.sampler": str(tune.sampler),
        "optuna.pruner": str(tune.pruner.kind),
        "optuna.metric": settings.space.metric,
        "optuna.direction": settings.space.direction,
        "optuna.multi_objective": str(settings.multi_objective),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    return run_id


def _parent_runs(client: MlflowClient, experiment_id: str, settings: StudySettings) -> list:
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`optuna.study_key` = '{settings.study_key}' and tags.`optuna.role` = 'study'"
        ),
    )
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def record_trial_run(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, Any],
    state: str,
    values: Mapping[str, float] | None = None,
) -> None:
    """Log a trial's params, final values and state tag to its MLflow run."""
    timestamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        params=[Param(f"trial.{name}", str(value)) for name, value in params.items()],
        metrics=[Metric(key, value, timestamp, 0) for key, value in (values or {}).items()],
        tags=[],
    )
    client.set_tag(run_id, "optuna.state", state)
    if state == "failed":
        client.set_terminated(run_id, status="FAILED")


def close_lost_run(client: MlflowClient):
    """Return a callback that tags and ends the MLflow run of a trial whose worker died."""

    def close(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID)
        if run_id is not None:
            client.set_tag(run_id, "optuna.state", "failed")
            client.set_terminated(run_id, status="KILLED")

    return close


def close_stale_run(client: MlflowClient):
    """Return the heartbeat callback: log a trial that stopped beating, then close its run."""
    close = close_lost_run(client)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.warning(
            "Trial %d sent no heartbeat within the grace period; marked it failed", trial.number
        )
        close(study, trial)

    return on_stale


def log_study_outputs(
    client: MlflowClient,
    parent_id: str,
    study: optuna.Study,
    settings: StudySettings,
    folder: Path,
) -> None:
    """Log the files of write_study_files and the trial counts to the parent run.

    The parent run ends (FINISHED) once the study has all its trials and none is running.
    """
    for path in sorted((folder / "figures").glob("*.png")):
        client.log_artifact(parent_id, str(path), artifact_path="figures")
    for name in ("tuned_model.yaml", "best_trial_config.yaml", "trials.csv"):
        if (folder / name).is_file():
            client.log_artifact(parent_id, str(folder / name))

    timestamp = int(time.time() * 1000)
    step = len(study.get_trials(deepcopy=False))
    counts = {
        "tune/n_complete": count_trials(study, optuna.trial.TrialState.COMPLETE),
        "tune/n_pruned": count_trials(study, optuna.trial.TrialState.PRUNED),
        "tune/n_failed": count_trials(study, optuna.trial.TrialState.FAIL),
    }
    metrics = [Metric(key, value, timestamp, step) for key, value in counts.items()]
    best = best_trial(study, settings)
    if best is not None:
        metrics.append(Metric("tune/best_value", best.values[0], timestamp, step))
        client.set_tag(parent_id, "optuna.best_trial", str(best.number))
    client.log_batch(parent_id, metrics=metrics)
    finished = count_trials(study, *FINISHED)
    if finished >= settings.n_trials and count_trials(study, *UNFINISHED) == 0:
        client.set_terminated(parent_id, status="FINISHED")
