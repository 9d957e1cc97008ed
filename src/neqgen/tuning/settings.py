"""The tune.* settings of a study, checked against the model, the data and the stored study."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig

from neqgen.config import dataset_path, to_container
from neqgen.tracking import flatten_params
from neqgen.tuning.space import SearchSpace, parse_search_space
from neqgen.tuning.study import default_storage_url, describe_storage

STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# Settings that do not change a trial's result, so a resumed study may differ in them.
IGNORED_SETTINGS = ("trainer.enable_progress_bar", "trainer.log_every_n_steps", "data.num_workers")


@dataclass
class StudySettings:
    """The checked tune.* settings of one run of the command."""

    study_name: str
    n_trials: int
    space: SearchSpace
    multi_objective: bool
    max_failed_trials: int
    storage_label: str

    @property
    def study_key(self) -> str:
        """Return a short id of (storage, study name): one study, one MLflow parent run."""
        text = f"{self.storage_label}\n{self.study_name}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_settings(cfg: DictConfig) -> StudySettings:
    """Check cfg.tune, the model and the data before any trial starts."""
    tune = cfg.get("tune")
    if tune is None:
        raise ValueError("the config has no `tune` section; add `- tune: default` to its defaults")
    space = parse_search_space(
        to_container(tune.space) if tune.get("space") is not None else None,
        to_container(cfg.model),
    )

    model_class = hydra.utils.get_class(cfg.model._target_)
    if not getattr(model_class, "trainable", True):
        raise ValueError(f"model {cfg.model.name!r} has nothing to train, so nothing to tune")
    max_epochs = cfg.trainer.get("max_epochs")
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"trainer.max_epochs must be a positive integer, got {max_epochs}")

    n_trials = tune.n_trials
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"tune.n_trials must be a positive integer, got {n_trials!r}")
    max_failed = tune.max_failed_trials
    if not isinstance(max_failed, int) or max_failed < 1:
        raise ValueError(f"tune.max_failed_trials must be a positive integer, got {max_failed!r}")
    study_name = tune.study_name or f"{cfg.model.name}-{cfg.system.name}-{cfg.protocol.name}"
    if not STUDY_NAME_PATTERN.fullmatch(str(study_name)):
        raise ValueError(
            f"tune.study_name may contain only letters, digits, '_', '.' and '-' (it names "
            f"the tuned config file), got {study_name!r}"
        )

    train_path = dataset_path(cfg, "train")
    if not train_path.is_file():
        raise FileNotFoundError(
            f"no training ensemble at {train_path}; run `neqgen simulate` with the same "
            f"system, protocol and size overrides first"
        )
    return StudySettings(
        study_name=str(study_name),
        n_trials=n_trials,
        space=space,
        multi_objective=bool(tune.multi_objective),
        max_failed_trials=max_failed,
        storage_label=describe_storage(storage_url(cfg), tune.journal),
    )


def storage_url(cfg: DictConfig) -> str | None:
    """Return tune.storage; without it, None for a journal file, else the default SQLite URL."""
    if cfg.tune.storage:
        return str(cfg.tune.storage)
    if cfg.tune.journal is not None:
        return None
    return default_storage_url(cfg.paths.mlruns)


def study_fingerprint(cfg: DictConfig, settings: StudySettings) -> dict[str, str]:
    """Return the settings that every trial of a study must share, as flat strings.

    The searched model keys and the tune settings that only steer the search (sampler,
    pruner, n_trials, storage) are left out.
    """
    sections = ("system", "protocol", "simulation", "data", "trainer", "model")
    flat = flatten_params({name: to_container(cfg[name]) for name in sections})
    for name in [*(f"model.{key}" for key in settings.space.names), *IGNORED_SETTINGS]:
        flat.pop(name, None)
    flat["seed"] = str(cfg.seed)
    flat["replica"] = str(cfg.get("replica", 0))
    flat["tune.metric"] = settings.space.metric
    flat["tune.direction"] = settings.space.direction
    flat["tune.multi_objective"] = str(settings.multi_objective)
    for parameter in settings.space.parameters:
        flat[f"tune.space.{parameter.name}"] = parameter.describe()
    return flat


def trial_config(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    """Return a copy of cfg with the trial's values set in cfg.model."""
    trial_cfg = copy.deepcopy(cfg)
    for name, value in values.items():
        trial_cfg.model[name] = value
    return trial_cfg
