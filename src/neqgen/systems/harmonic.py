"""An isotropic harmonic well, whose Ornstein-Uhlenbeck marginals are known exactly."""

from __future__ import annotations

import torch

from neqgen.systems.base import System


class Harmonic(System):
    r"""V(x, t) = k |x - c - v t|^2 / 2 in ``dim`` dimensions: a trap dragged at velocity v.

    With v = 0 (static), from a point start x0 every coordinate stays Gaussian with mean
    c + (x0 - c) exp(-k t) and variance (1 - exp(-2 k t)) / (beta k). With v != 0 the
    ensemble settles to the same width, lagging v / k behind the centre, and produces
    entropy at the exact steady rate beta |v|^2.

    Parameters
    ----------
    k:
        Stiffness; must be positive.
    center:
        Position c of the minimum at t = 0, a list of ``dim`` numbers.
    velocity:
        Drag velocity v of the minimum, a list of ``dim`` numbers; null for a static trap.
    """

    def __init__(
        self,
        k: float = 1.0,
        center: list[float] | None = None,
        dim: int = 1,
        beta: float = 1.0,
        velocity: list[float] | None = None,
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
        self.velocity = torch.tensor(velocity if velocity is not None else [0.0] * self.dim)
        if self.velocity.shape != (self.dim,):
            raise ValueError(f"system.velocity must have {self.dim} entries, got {velocity}")

    def _center(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() > 0:
            t = t.reshape(*t.shape, *([1] * (x.dim() - t.dim())))
        return self.center.to(x) + self.velocity.to(x) * t

    def potential(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return 0.5 * self.k * ((x - self._center(x, t)) ** 2).sum(-1)

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return -self.k * (x - self._center(x, t))

    def minima(self, t: float) -> torch.Tensor:
        return (self.center + self.velocity * float(t)).to(torch.float64)[None, :]
