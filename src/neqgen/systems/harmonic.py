"""An isotropic harmonic well, whose Ornstein-Uhlenbeck marginals are known exactly."""

from __future__ import annotations

import torch

from neqgen.systems.base import System


class Harmonic(System):
    r"""V(x) = k |x - c|^2 / 2 in ``dim`` dimensions, static in time.

    From a point start x0 every coordinate stays Gaussian with mean
    c + (x0 - c) exp(-k t) and variance (1 - exp(-2 k t)) / (beta k).

    Parameters
    ----------
    k:
        Stiffness; must be positive.
    center:
        Position c of the minimum, a list of ``dim`` numbers.
    """

    def __init__(
        self,
        k: float = 1.0,
        center: list[float] | None = None,
        dim: int = 1,
        beta: float = 1.0,
        domain: list[list[float]] | None = None,
    ):
        self.dim = int(dim)
        super().__init__(beta, domain if domain is not None else [[-3.0, 3.0]] * self.dim)
        if not k > 0:
            raise ValueError(f"system.k must be positive, got {k}")
        self.k = float(k)
        self.center = torch.tensor(center if center is not None else [0.0] * self.dim)
        if self.center.shape != (self.dim,):
            raise ValueError(f"system.center must have {self.dim} entries, got {center}")

    def potential(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * ((x - self.center.to(x)) ** 2).sum(-1)

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return -self.k * (x - self.center.to(x))

    def minima(self, t: float) -> torch.Tensor:
        return self.center.to(torch.float64)[None, :]
