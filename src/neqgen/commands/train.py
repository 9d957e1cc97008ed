"""Train one model on one protocol's ensemble as a tracked MLflow run."""

from __future__ import annotations

import inspect
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from neqgen.config import (
    build_system,
    dataset_path,
    model_dir,
    model_kwargs,
    replica,
    to_container,
)
from neqgen.data.datamodule import EnsembleDataModule
from neqgen.lineage import dataset_lineage, describe, log_dataset_input
from neqgen.models.base import GenerativeModel
from neqgen.tracking import ensure_experiment, flatten_params, log_params, tracking_uri

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig, horizon: float, data_std: float) -> GenerativeModel:
    """Instantiate cfg.model for the configured system and a dataset's horizon and spread."""
    system = build_system(cfg.system)
    kwargs = model_kwargs(cfg.model)
    if "data_scale" in kwargs and kwargs["data_scale"] is None:
        kwargs["data_scale"] = data_std
    model_class = hydra.utils.get_class(cfg.model._target_)
    parameters = inspect.signature(model_class).parameters
    # Size presets (experiment=tiny, experiment=paper) set keys such as model.hidden for
    # every model; a model without that setting (the Boltzmann oracle) ignores them.
    unused = sorted(key for key in kwargs if key not in parameters)
    if unused:
        log.info("%s takes no %s; ignoring them", cfg.model.name, ", ".join(unused))
        kwargs = {key: value for key, value in kwargs.items() if key in parameters}
    if "system_config" in parameters:
        # Models that use the true potential (the Boltzmann oracle) rebuild the system
        # from its config, which their checkpoint keeps as a hyperparameter.
        kwargs["system_config"] = to_container(cfg.system)
    return model_class(dim=system.dim, horizon=horizon, domain=system.domain, **kwargs)


def training_seed(cfg: DictConfig) -> int:
    """Return the seed of training and sampling: cfg.seed plus the replica index."""
    return int(cfg.seed) + replica(cfg)


def check_dataset_config(cfg: DictConfig, dataset_config: dict) -> None:
    """Raise if the dataset was simulated with other system or protocol settings than cfg.

    Otherwise the run's params would describe a system that the data did not come from.
    """
    differences = []
    for section in ("system", "protocol"):
        current = to_container(cfg[section])
        stored = dataset_config.get(section, {})
        for key in sorted(set(current) | set(stored)):
            if current.get(key) != stored.get(key):
                differences.append(
                    f"{section}.{key}={stored.get(key)!r} in the data, {current.get(key)!r} now"
                )
    if differences:
        raise ValueError(
            f"{dataset_path(cfg, 'train')} was simulated with other settings: "
            + "; ".join(differences)
            + ". Pass the same overrides to `neqgen train` or rerun `neqgen simulate`."
        )


def run_training(
    cfg: DictConfig,
    *,
    callbacks: Sequence[Callback] = (),
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    output: Path | None = None,
) -> dict:
    """Fit cfg.model on the training ensemble and record the run in MLflow.

    Writes ``<model_dir>/model.ckpt`` (the checkpoint with the lowest ``val/loss``) and
    ``<model_dir>/run.json`` with the MLflow run id, so that evaluation can log into the
    same run. Returns the contents of run.json.

    The keyword arguments serve callers that train many variants, such as the tune command:
    extra Lightning ``callbacks``, extra MLflow ``tags`` (``mlflow.parentRunId`` nests the
    run), a ``run_name`` in place of the default one, and an ``output`` folder in place of
    the model's folder.
    """
    max_epochs = cfg.trainer.get("max_epochs")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"trainer.max_epochs must be a positive integer, got {max_epochs}")
    seed = training_seed(cfg)
    pl.seed_everything(seed, workers=True, verbose=False)
    model_class = hydra.utils.get_class(cfg.model._target_)
    data_kwargs = to_container(cfg.data)
    if getattr(model_class, "data_kind", "frames") == "paths":
        # Trajectory models train on windows of `window` consecutive frame-to-frame steps.
        data_kwargs["window"] = int(cfg.model.get("window", 1))
    datamodule = datamodule_class(model_class)(
        dataset_path(cfg, "train"), seed=seed, **data_kwargs
    )
    ensemble = datamodule.prepare()
    check_dataset_config(cfg, ensemble.metadata.get("config", {}))
    data_std = float(ensemble.positions.std())
    model = build_model(cfg, horizon=float(ensemble.times[-1]), data_std=data_std)

    experiment_id = ensure_experiment(cfg)
    dataset_hash = ensemble.content_hash
    lineage = dataset_lineage(dataset_path(cfg, "train"))
    log.info("Training data lineage: %s", describe(lineage))
    run_name = run_name or (
        f"{cfg.model.name}-{cfg.system.name}-{cfg.protocol.name}-r{replica(cfg)}-"
        f"{dataset_hash[:8]}"
    )
    tags = {
        "replica": str(replica(cfg)),
        "model": cfg.model.name,
        "family": model.family,
        "system": cfg.system.name,
        "protocol": cfg.protocol.name,
        "dataset_hash": dataset_hash,
        "dataset_path": str(dataset_path(cfg, "train")),
        **lineage.tags(),
        **(tags or {}),
    }
    logger = MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=run_name,
        tracking_uri=tracking_uri(cfg),
        tags=tags,
    )
    output = Path(output) if output is not None else model_dir(cfg)
    output.mkdir(parents=True, exist_ok=True)
    final_path = output / "model.ckpt"
    if getattr(model_class, "trainable", True):
        trainer, best_val = _fit(
            cfg, model, datamodule, logger, output, final_path, list(callbacks)
        )
        epochs = trainer.current_epoch
    else:
        # Nothing to fit (the Boltzmann oracle): the built model is the checkpoint.
        _save_untrained(model, final_path)
        best_val, epochs = None, 0

    client = MlflowClient(tracking_uri(cfg))
    run_id = logger.run_id
    log_params(client, run_id, flatten_params(to_container(cfg), prefix="config."))
    log_dataset_input(client, run_id, lineage)
    if best_val is not None:
        client.log_metric(run_id, "best/val_loss", best_val)
    else:
        client.set_terminated(run_id)
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.yaml"
        config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        client.log_artifact(run_id, str(config_file))
    client.log_artifact(run_id, str(final_path), artifact_path="checkpoint")

    record = {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "run_name": run_name,
        "checkpoint": str(final_path),
        "model_target": cfg.model._target_,
        "dataset_hash": dataset_hash,
        "best_val_loss": best_val,
        "epochs": epochs,
    }
    (output / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("Trained %s: best val/loss %s, MLflow run %s", run_name, best_val, run_id)
    return record


def datamodule_class(model_class: type) -> type:
    """Return the datamodule a model class trains on: whole paths or single frames."""
    if getattr(model_class, "data_kind", "frames") == "paths":
        from neqgen.data.paths import PathDataModule

        return PathDataModule
    return EnsembleDataModule


def _fit(cfg, model, datamodule, logger, output: Path, final_path: Path, callbacks: list):
    """Run the Lightning Trainer and move the checkpoint with the lowest val/loss to final_path."""
    with tempfile.TemporaryDirectory(dir=output, prefix=".checkpoints.") as checkpoints:
        checkpoint = ModelCheckpoint(
            dirpath=checkpoints, filename="best", monitor="val/loss", mode="min"
        )
        trainer = pl.Trainer(
            **to_container(cfg.trainer),
            logger=logger,
            callbacks=[checkpoint, *callbacks],
            default_root_dir=str(output),
        )
        trainer.fit(model, datamodule=datamodule)
        best_path = Path(checkpoint.best_model_path)
        score = checkpoint.best_model_score
        if score is None or not math.isfinite(float(score)):
            # Keep the checkpoint of an earlier good run rather than replace it.
            raise RuntimeError(
                f"training of {cfg.model.name} diverged (best val/loss {score}); "
                f"{final_path} was left unchanged. Lower model.learning_rate "
                f"(now {cfg.model.get('learning_rate')}) or check the data settings"
            )
        if not best_path.is_file():
            raise RuntimeError(
                f"training produced no checkpoint in {checkpoints}; check that "
                f"trainer.max_epochs ({cfg.trainer.max_epochs}) is at least 1"
            )
        best_path.replace(final_path)
    return trainer, float(checkpoint.best_model_score)


def _save_untrained(model: GenerativeModel, path: Path) -> None:
    """Write a model without training in the checkpoint format that load_from_checkpoint reads."""
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, temporary)
    temporary.replace(path)
