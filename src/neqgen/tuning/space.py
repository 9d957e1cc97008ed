"""Search spaces: which model settings a study searches, over which ranges."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import Trial

PARAMETER_TYPES = ("float", "int", "categorical")
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Parameter:
    """One searched setting of the model config and the distribution it is drawn from."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial: Trial) -> Any:
        """Draw this parameter's value for a trial."""
        if self.type == "float":
            return trial.suggest_float(
                self.name, self.low, self.high, log=self.log, step=self.step
            )
        if self.type == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, log=self.log, step=self.step or 1
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        """Return the range in words, such as 'float in [0.0003, 0.01], log scale'."""
        if self.type == "categorical":
            return f"one of {list(self.choices)}"
        text = f"{self.type} in [{self.low}, {self.high}]"
        if self.step is not None:
            text += f", step {self.step}"
        return text + (", log scale" if self.log else "")


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a study, the metric it optimises and in which direction."""

    parameters: tuple[Parameter, ...]
    metric: str
    direction: str

    @property
    def names(self) -> list[str]:
        return [parameter.name for parameter in self.parameters]

    def suggest(self, trial: Trial) -> dict[str, Any]:
        """Draw every parameter for a trial and return {name: value}."""
        return {parameter.name: parameter.suggest(trial) for parameter in self.parameters}


def parse_search_space(space: Mapping[str, Any] | None, model: Mapping[str, Any]) -> SearchSpace:
    """Check a search space (tune.space) against the model config it applies to.

    Parameter names are keys of the model config: each trial sets ``model.<name>``.

    Raises
    ------
    ValueError
        If the space is missing, names a key that the model config lacks, or gives an
        unknown type, an empty or inverted range, a log scale over non-positive values, or
        no choices.
    """
    model_name = model.get("name")
    if not space:
        raise ValueError(
            f"no search space for model {model_name!r}: add conf/tune/{model_name}.yaml with "
            f"`parameters`, or choose one with tune@tune.space=<model>"
        )
    metric = space.get("metric") or "val/loss"
    direction = space.get("direction") or "minimize"
    if direction not in DIRECTIONS:
        raise ValueError(f"tune.space.direction must be one of {DIRECTIONS}, got {direction!r}")
    entries = space.get("parameters") or {}
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError(
            "tune.space.parameters must map model keys to distributions, for example "
            "learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}"
        )
    parameters = tuple(
        _parse_parameter(str(name), entry, model) for name, entry in entries.items()
    )
    return SearchSpace(parameters=parameters, metric=str(metric), direction=direction)


def _parse_parameter(name: str, entry: Any, model: Mapping[str, Any]) -> Parameter:
    where = f"tune.space.parameters.{name}"
    if name in ("name", "_target_") or name not in model:
        settable = sorted(key for key in model if key not in ("name", "_target_"))
        raise ValueError(
            f"{where}: model {model.get('name')!r} has no setting {name!r}; "
            f"searchable settings are {settable}"
        )
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a mapping with a `type`, got {entry!r}")
    known = {"type", "low", "high", "log", "step", "choices"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys are {sorted(known)}")
    kind = entry.get("type")
    if kind not in PARAMETER_TYPES:
        raise ValueError(f"{where}.type must be one of {PARAMETER_TYPES}, got {kind!r}")

    if kind == "categorical":
        choices = entry.get("choices")
        if not choices or isinstance(choices, str | bytes) or not isinstance(choices, Sequence):
            raise ValueError(f"{where}.choices must be a non-empty list, got {choices!r}")
        for choice in choices:
            if choice is not None and not isinstance(choice, bool | int | float | str):
                raise ValueError(
                    f"{where}.choices may hold only numbers, strings, booleans or null, "
                    f"got {choice!r}"
                )
        return Parameter(name=name, type=kind, choices=tuple(choices))

    low, high = entry.get("low"), entry.get("high")
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            raise ValueError(f"{where}.{key} must be a {kind}, got {value!r}")
    if not math.isfinite(low) or not math.isfinite(high) or low > high:
        raise ValueError(f"{where} needs finite low <= high, got low={low}, high={high}")
    log_scale = bool(entry.get("log", False))
    if log_scale and low <= 0:
        raise ValueError(f"{where} has log: true, so low must be positive, got {low}")
    step = entry.get("step")
    if step is not None and (not isinstance(step, number) or step <= 0 or log_scale):
        raise ValueError(
            f"{where}.step must be a positive {kind} and cannot go with log: true, got {step!r}"
        )
    if kind == "float":
        low, high = float(low), float(high)
    return Parameter(name=name, type=kind, low=low, high=high, log=log_scale, step=step)
