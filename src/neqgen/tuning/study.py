"""Optuna studies: samplers, pruners, storage and trial counts."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from neqgen.tuning.space import SearchSpace

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "threshold", "none")
# Trials that count towards tune.n_trials, and trials that may still join them.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)

# Seeds of numpy's legacy RandomState, which Optuna's samplers use, must lie in [0, 2**32).
SEED_MODULUS = 2**32


class TrialSeededSampler(BaseSampler):
    """Delegate every trial to a fresh sampler seeded with ``seed + trial number``.

    Trial numbers are unique within a study, across runs and parallel workers, so workers
    that resume a study or share it never repeat each other's draws, while one worker with
    a given seed and history draws the same values. This suits samplers whose only state
    outside the study is their random generator: TPE, random, and Optuna's CMA-ES, which
    stores its optimizer in the trials' system attributes.
    """

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = int(seed)
        self._sampler = build(self._seed % SEED_MODULUS)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._sampler = self._build((self._seed + trial.number) % SEED_MODULUS)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def build_sampler(
    kind: str,
    seed: int,
    n_startup_trials: int,
    multi_objective: bool,
    space: SearchSpace,
) -> BaseSampler:
    """Return the configured sampler, seeded per trial (see TrialSeededSampler).

    Raises
    ------
    ValueError
        For an unknown sampler, or CMA-ES with more than one objective.
    """
    if kind not in SAMPLERS:
        raise ValueError(f"tune.sampler must be one of {SAMPLERS}, got {kind!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"tune.seed must be an integer, got {seed!r}")
    if not isinstance(n_startup_trials, int) or n_startup_trials < 0:
        raise ValueError(
            f"tune.n_startup_trials must be a non-negative integer, got {n_startup_trials!r}"
        )
    if kind == "tpe":
        # constant_liar counts running trials as bad results, so parallel workers spread out.
        return TrialSeededSampler(
            lambda trial_seed: optuna.samplers.TPESampler(
                seed=trial_seed, n_startup_trials=n_startup_trials, constant_liar=True
            ),
            seed,
        )
    if kind == "random":
        return TrialSeededSampler(
            lambda trial_seed: optuna.samplers.RandomSampler(seed=trial_seed), seed
        )
    if multi_objective:
        raise ValueError(
            "tune.sampler=cmaes cannot optimise several objectives; with "
            "tune.multi_objective=true use tune.sampler=tpe or random"
        )
    categorical = [p.name for p in space.parameters if p.type == "categorical"]
    if categorical:
        log.warning("CMA-ES draws the categorical parameters %s at random", categorical)

    def build_cmaes(trial_seed: int) -> BaseSampler:
        with warnings.catch_warnings():
            # consider_pruned_trials is experimental in Optuna 5.1; it lets CMA-ES learn from
            # pruned trials (by their last reported value) instead of ignoring them.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.CmaEsSampler(
                seed=trial_seed,
                n_startup_trials=n_startup_trials,
                independent_sampler=optuna.samplers.RandomSampler(seed=trial_seed),
                warn_independent_sampling=False,
                consider_pruned_trials=True,
            )

    return TrialSeededSampler(build_cmaes, seed)


def build_pruner(settings: Mapping[str, Any], max_epochs: int) -> optuna.pruners.BasePruner:
    """Return the pruner of tune.pruner; epochs are the pruners' steps."""
    kind = settings.get("kind")
    if kind not in PRUNERS:
        raise ValueError(f"tune.pruner.kind must be one of {PRUNERS}, got {kind!r}")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    warmup = settings.get("n_warmup_steps", 0)
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(
            f"tune.pruner.n_warmup_steps must be a non-negative integer, got {warmup!r}"
        )
    if kind == "median":
        startup = settings.get("n_startup_trials", 0)
        if not isinstance(startup, int) or startup < 0:
            raise ValueError(
                f"tune.pruner.n_startup_trials must be a non-negative integer, got {startup!r}"
            )
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    lower, upper = settings.get("lower"), settings.get("upper")
    if lower is None and upper is None:
        raise ValueError("tune.pruner.kind=threshold needs tune.pruner.lower or upper")
    return optuna.pruners.ThresholdPruner(lower=lower, upper=upper, n_warmup_steps=warmup)


def default_storage_url(mlruns: str | os.PathLike) -> str:
    """Return the SQLite URL of <mlruns>/optuna.db, creating the folder."""
    folder = Path(mlruns).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def build_storage(
    url: str | None,
    journal: str | os.PathLike | None,
    heartbeat_interval: int | None,
    on_stale_trial: Callable[[Study, FrozenTrial], None] | None = None,
) -> BaseStorage:
    """Open an RDB storage at url, or a journal file when journal is set.

    Only RDB storage supports Optuna's heartbeat: a running trial whose heartbeat stopped
    for 2 * heartbeat_interval seconds is marked failed, and on_stale_trial is called with
    it, the next time a worker starts a trial.
    """
    if journal is not None:
        if url is not None:
            raise ValueError(
                f"set either tune.storage ({url}) or tune.journal ({journal}), not both"
            )
        path = Path(journal).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if heartbeat_interval is not None and (
        not isinstance(heartbeat_interval, int) or heartbeat_interval < 1
    ):
        raise ValueError(
            f"tune.heartbeat_interval must be a positive integer (seconds) or null, got "
            f"{heartbeat_interval!r}"
        )
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # Wait for another worker's write lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():
        # The heartbeat arguments are experimental in Optuna 5.1.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            heartbeat_stale_trial_callback=on_stale_trial if heartbeat_interval else None,
        )


def describe_storage(url: str | None, journal: str | os.PathLike | None) -> str:
    """Return the storage location for logs and tags, without any password in the URL."""
    if journal is not None:
        return f"journal:{Path(journal).resolve()}"
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def count_trials(study: Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def study_directions(space: SearchSpace, multi_objective: bool) -> list[StudyDirection]:
    """Return the metric's direction, and minimise the training time after it if asked."""
    directions = [
        StudyDirection.MINIMIZE if space.direction == "minimize" else StudyDirection.MAXIMIZE
    ]
    if multi_objective:
        directions.append(StudyDirection.MINIMIZE)
    return directions
