"""The one-dimensional Prinz potential, static or driven by a tilt or a temperature quench."""

from __future__ import annotations

import math

import torch

from neqgen.systems.base import System


class Prinz(System):
    r"""Four wells on [-1, 1] with barriers of different heights, optionally driven.

    .. math::

        V(x, t) = 4 \big(x^8 + 0.8 e^{-80 x^2} + 0.2 e^{-80 (x - 0.5)^2}
                  + 0.5 e^{-40 (x + 0.5)^2}\big) + F \sin(2 \pi \nu t) \, x

    The static part is the potential of Prinz et al., J. Chem. Phys. 134, 174105 (2011).
    The tilt F sin(2 pi nu t) x rocks the wells; with nu above the barrier-crossing rate
    the populations cannot follow it. A temperature quench switches beta to
    ``quench_beta`` at ``quench_time``.

    Parameters
    ----------
    tilt_amplitude, tilt_frequency:
        F (energy per unit length) and nu (cycles per unit time) of the tilt; F = 0 is static.
    quench_time, quench_beta:
        Time of the temperature step and the inverse temperature after it; None for none.
    """

    dim = 1

    def __init__(
        self,
        beta: float = 1.0,
        tilt_amplitude: float = 0.0,
        tilt_frequency: float = 0.0,
        quench_time: float | None = None,
        quench_beta: float | None = None,
        domain: list[list[float]] | None = None,
    ):
        super().__init__(beta, domain if domain is not None else [[-1.2, 1.2]])
        if (quench_time is None) != (quench_beta is None):
            raise ValueError(
                f"system.quench_time and system.quench_beta must be set together, got "
                f"{quench_time} and {quench_beta}"
            )
        if quench_beta is not None and not quench_beta > 0:
            raise ValueError(f"system.quench_beta must be positive, got {quench_beta}")
        self.tilt_amplitude = float(tilt_amplitude)
        self.tilt_frequency = float(tilt_frequency)
        self.quench_time = None if quench_time is None else float(quench_time)
        self.quench_beta = None if quench_beta is None else float(quench_beta)

    def beta_at(self, t: float) -> float:
        if self.quench_time is not None and t >= self.quench_time:
            return self.quench_beta
        return self.beta

    def tilt(self, t: float | torch.Tensor) -> float | torch.Tensor:
        """Return the tilt force F sin(2 pi nu t) at time t."""
        if isinstance(t, torch.Tensor):
            return self.tilt_amplitude * torch.sin(2 * math.pi * self.tilt_frequency * t)
        return self.tilt_amplitude * math.sin(2 * math.pi * self.tilt_frequency * t)

    def potential(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        x = x[..., 0]
        static = 4 * (
            x**8
            + 0.8 * torch.exp(-80 * x**2)
            + 0.2 * torch.exp(-80 * (x - 0.5) ** 2)
            + 0.5 * torch.exp(-40 * (x + 0.5) ** 2)
        )
        return static + self.tilt(_time_like(t, x)) * x

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        y = x[..., 0]
        gradient = 4 * (
            8 * y**7
            - 160 * 0.8 * y * torch.exp(-80 * y**2)
            - 160 * 0.2 * (y - 0.5) * torch.exp(-80 * (y - 0.5) ** 2)
            - 80 * 0.5 * (y + 0.5) * torch.exp(-40 * (y + 0.5) ** 2)
        )
        return -(gradient + self.tilt(_time_like(t, y)))[..., None]

    def minima(self, t: float) -> torch.Tensor:
        """Return the local minima of V(., t) inside the domain, found on a fine grid."""
        low, high = self.domain[0]
        x = torch.linspace(low, high, 20001, dtype=torch.float64)[:, None]
        v = self.potential(x, t)
        interior = (v[1:-1] < v[:-2]) & (v[1:-1] < v[2:])
        return x[1:-1][interior]


def _time_like(t: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)).to(x)
    return t
