"""The rotating (and optionally breathing) multi-well potential in two dimensions."""

from __future__ import annotations

import math

import torch

from neqgen.systems.base import System


class RotatingWells(System):
    r"""Wells on a ring that rotate at angular speed omega / s and breathe radially.

    With r = |x| and phi = atan2(y, x),

    .. math::

        V(x, y, t) = \cos(s \phi - \omega t) + k (r - r_0 - a \sin(2 \pi \nu t))^2 .

    The rotating five-well case study uses s = 5, omega = pi / 2, k = 10, r0 = 0.5, a = 0,
    beta = 5; the time-dependent quintuple well of the deeptime library is the same family
    with r0 = 1.5, a = 0.5, nu = 1, beta = 5.

    The angular force s sin(s phi - omega t) (-y, x) / r^2 is singular at the origin. The
    drift replaces r^2 with r^2 + softening^2, also in the radial unit vector x / r. The
    drift is then finite everywhere and equals -grad V to a relative error of order
    (softening / r)^2.

    Parameters
    ----------
    s:
        Number of wells (a positive integer).
    omega:
        Angular driving frequency of the cosine term, in radians per unit time.
    k:
        Stiffness of the radial confinement.
    r0:
        Mean radius of the ring of wells.
    a, nu:
        Amplitude and frequency (cycles per unit time) of the radial breathing.
    beta, domain:
        See :class:`neqgen.systems.base.System`.
    softening:
        Length scale that regularises the force at the origin; must be positive.
    """

    dim = 2

    def __init__(
        self,
        s: int = 5,
        omega: float = math.pi / 2,
        k: float = 10.0,
        r0: float = 0.5,
        a: float = 0.0,
        nu: float = 1.0,
        beta: float = 5.0,
        domain: list[list[float]] | None = None,
        softening: float = 1e-3,
    ):
        super().__init__(beta, domain if domain is not None else [[-1.5, 1.5], [-1.5, 1.5]])
        if int(s) != s or s < 1:
            raise ValueError(f"system.s must be a positive integer, got {s}")
        if not k > 0:
            raise ValueError(f"system.k must be positive, got {k}")
        if not r0 > 0:
            raise ValueError(f"system.r0 must be positive, got {r0}")
        if not softening > 0:
            raise ValueError(
                f"system.softening must be positive to keep the force at the origin finite, "
                f"got {softening}"
            )
        self.s = int(s)
        self.omega = float(omega)
        self.k = float(k)
        self.r0 = float(r0)
        self.a = float(a)
        self.nu = float(nu)
        self.softening = float(softening)

    def ring_radius(self, t: float | torch.Tensor) -> float | torch.Tensor:
        """Return R(t) = r0 + a sin(2 pi nu t), the radius of the wells at time t."""
        if isinstance(t, torch.Tensor):
            return self.r0 + self.a * torch.sin(2 * math.pi * self.nu * t)
        return self.r0 + self.a * math.sin(2 * math.pi * self.nu * t)

    def potential(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t = _broadcast_time(t, x)
        r = torch.linalg.vector_norm(x, dim=-1)
        phi = torch.atan2(x[..., 1], x[..., 0])
        angular = torch.cos(self.s * phi - self.omega * t)
        radial = self.k * (r - self.ring_radius(t)) ** 2
        return angular + radial

    def drift(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t = _broadcast_time(t, x)
        px, py = x[..., 0], x[..., 1]
        r2 = px**2 + py**2 + self.softening**2
        r = torch.sqrt(r2)
        phi = torch.atan2(py, px)

        # -d/dx of cos(s phi - omega t) is s sin(s phi - omega t) grad(phi),
        # with grad(phi) = (-y, x) / r^2.
        angular = self.s * torch.sin(self.s * phi - self.omega * t) / r2

        # -d/dx of k (r - R)^2 is -2 k (r - R) x / r.
        radial = -2.0 * self.k * (r - self.ring_radius(t)) / r

        return torch.stack((-angular * py + radial * px, angular * px + radial * py), dim=-1)

    def minima(self, t: float) -> torch.Tensor:
        """Return the s well centres at time t, where s phi - omega t = pi (mod 2 pi)."""
        j = torch.arange(self.s, dtype=torch.float64)
        phi = (math.pi + self.omega * t + 2 * math.pi * j) / self.s
        radius = self.ring_radius(t)
        return torch.stack((radius * torch.cos(phi), radius * torch.sin(phi)), dim=-1)


def _broadcast_time(t: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """Let t be a float, a scalar tensor, or one time per leading index of x."""
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        return t.reshape(t.shape + (1,) * (x.ndim - 1 - t.ndim)).to(x)
    return t
