"""MLflow setup: where the store lives, experiment per system, and what a run records."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Limits of MLflow 3's SQL store: a param key of at most 250 characters, a value of at most
# 6000, and at most 100 params in one log_batch call.
MAX_PARAM_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(cfg: DictConfig) -> str:
    """Return cfg.tracking.uri, or SQLite at <paths.mlruns>/mlflow.db by default."""
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    store = Path(cfg.paths.mlruns).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root(cfg: DictConfig) -> Path:
    """Return the artifact folder of the default store."""
    return Path(cfg.paths.mlruns).resolve() / "artifacts"


def ensure_experiment(cfg: DictConfig) -> str:
    """Point MLflow at the project's store and return the id of the system's experiment.

    A new experiment keeps its artifacts under <paths.mlruns>/artifacts/<name>, beside the
    database, rather than MLflow's default ./mlartifacts.
    """
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = str(cfg.tracking.experiment)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (artifact_root(cfg) / name).as_uri()
    log.info("Creating MLflow experiment %r with artifacts in %s", name, location)
    return client.create_experiment(name, artifact_location=location)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config to dotted keys with string values within MLflow's limits.

    Lists stay whole (as their string form); a value longer than MLflow accepts is cut and
    marked with a trailing '...'.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_VALUE:
            text = text[: MAX_PARAM_VALUE - 3] + "..."
        flat[name[:MAX_PARAM_KEY]] = text
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log params in batches of at most MAX_PARAMS_PER_BATCH."""
    items = [mlflow.entities.Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])
