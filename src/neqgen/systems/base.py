"""The interface every driven system implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


class System(ABC):
    """An overdamped Langevin system dX = -grad V(X, t) dt + sqrt(2 / beta) dW.

    Subclasses provide the potential and its exact gradient. Simulation, references and
    evaluation take a system, so adding one is a module here plus a config file.

    Parameters
    ----------
    beta:
        Inverse temperature 1 / kT, in units of the potential's energy scale.
    domain:
        Per-dimension (low, high) bounds of the region that grids, histograms and figures
        cover. Particles may leave it; the dynamics are defined everywhere.
    """

    dim: int

    def __init__(self, beta: float, domain: list[list[float]]):
        if not beta > 0:
            raise ValueError(f"system.beta must be positive, got {beta}")
        if len(domain) != self.dim or any(len(bounds) != 2 for bounds in domain):
            raise ValueError(f"system.domain must list {self.dim} [low, high] pairs, got {domain}")
        for low, high in domain:
            if not high > low:
                raise ValueError(f"system.domain bounds must have high > low, got {domain}")
        self.beta = float(beta)
        self.domain = [[float(low), float(high)] for low, high in domain]

    @abstractmethod
    def potential(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Return V(x, t) for positions x of shape (..., dim); the result has shape (...)."""

    @abstractmethod
    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """Return -grad V(x, t) with the shape of x."""

    def minima(self, t: float) -> torch.Tensor:
        """Return the local minima of V(., t), shape (n_wells, dim)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its minima")

    def beta_at(self, t: float) -> float:
        """Return the inverse temperature at time t; constant unless a protocol changes it."""
        return self.beta

    def noise_scale(self, t: float) -> float:
        """Return the noise amplitude sqrt(2 / beta(t)) of every coordinate."""
        return math.sqrt(2.0 / self.beta_at(t))

    def sde(self) -> LangevinSDE:
        """Wrap the system as a torchsde SDE with diagonal, state-independent noise."""
        return LangevinSDE(self)


class LangevinSDE(torch.nn.Module):
    """The torchsde view of a system: drift f = -grad V and constant diagonal noise g."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, system: System):
        super().__init__()
        self.system = system

    def f(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.system.drift(x, t)

    def g(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.system.noise_scale(float(t)))
