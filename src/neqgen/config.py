"""Compose the Hydra config and build the objects it describes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from neqgen.systems.base import System


class ConfigError(ValueError):
    """Raised for a config directory that is missing or overrides that do not compose."""


def default_config_dir() -> Path:
    """Return $NEQGEN_CONFIG_DIR if set, else ./conf."""
    return Path(os.environ.get("NEQGEN_CONFIG_DIR", "conf")).resolve()


def load_config(overrides: list[str] | None = None, config_dir: str | os.PathLike | None = None):
    """Compose conf/config.yaml with Hydra command-line overrides and return the DictConfig."""
    config_dir = Path(config_dir).resolve() if config_dir else default_config_dir()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError(
            f"no config.yaml in {config_dir}; run neqgen from the repository root or pass "
            f"--config-dir (or set NEQGEN_CONFIG_DIR)"
        )
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name="config", overrides=list(overrides or []))
    except HydraException as error:
        raise ConfigError(f"invalid config overrides {list(overrides or [])}: {error}") from error


def to_container(node: DictConfig) -> dict[str, Any]:
    """Return a resolved plain-dict copy of a config node."""
    return OmegaConf.to_container(node, resolve=True)


def build_system(system_cfg: DictConfig) -> System:
    """Instantiate the system from its config, ignoring the ``name`` label."""
    kwargs = {key: value for key, value in to_container(system_cfg).items() if key != "name"}
    return hydra.utils.instantiate(kwargs, _convert_="all")


def model_kwargs(model_cfg: DictConfig) -> dict[str, Any]:
    """Return the model's constructor arguments from its config, without ``name``/``_target_``."""
    return {
        key: value
        for key, value in to_container(model_cfg).items()
        if key not in ("name", "_target_")
    }


def replica(cfg: DictConfig) -> int:
    """Return cfg.replica, the index of an independent repetition of the whole experiment."""
    value = cfg.get("replica", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"replica must be a non-negative integer, got {value!r}")
    return value


def protocol_dir(root: str | os.PathLike, cfg: DictConfig) -> Path:
    """Return <root>/<system>/<protocol>: outputs shared by every replica."""
    return Path(root) / cfg.system.name / cfg.protocol.name


def replica_dir(root: str | os.PathLike, cfg: DictConfig) -> Path:
    """Return <root>/<system>/<protocol>/r<replica>: the outputs of one replica."""
    return protocol_dir(root, cfg) / f"r{replica(cfg)}"


def dataset_path(cfg: DictConfig, split: str) -> Path:
    """Return the ensemble file of a split ('train' or 'heldout') of the configured replica."""
    return replica_dir(cfg.paths.data, cfg) / f"{split}.npz"


def model_dir(cfg: DictConfig) -> Path:
    return replica_dir(cfg.paths.models, cfg) / cfg.model.name


def metrics_path(cfg: DictConfig, name: str) -> Path:
    """Return the time-averaged metrics file of a model (or of ``noise_floor``)."""
    return replica_dir(cfg.paths.metrics, cfg) / f"{name}.json"


def plots_dir(cfg: DictConfig) -> Path:
    """Return the folder of one replica's per-frame tables and snapshot samples."""
    return replica_dir(cfg.paths.plots, cfg)
