"""The instantaneous Boltzmann density on a grid and a solution's distance from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import logsumexp, rel_entr

from neqgen.reference.grid import Grid
from neqgen.systems.base import System

if TYPE_CHECKING:
    from neqgen.reference.fokker_planck import FokkerPlanckSolution


def reduced_potential(system: System, grid: Grid, t: float) -> np.ndarray:
    """Return beta(t) V(x, t) at the cell centres, flat in C order, shape (grid.size,).

    Raises
    ------
    ValueError
        If the grid and system dimensions differ, or V is not finite at some centre.
    """
    if grid.dim != system.dim:
        raise ValueError(
            f"reference grid has {grid.dim} dimensions but {type(system).__name__} has "
            f"{system.dim}; build the grid from system.domain"
        )
    potential = system.potential(grid.points(), float(t)).detach().cpu().numpy()
    reduced = system.beta_at(float(t)) * potential.astype(np.float64).reshape(grid.size)
    if not np.all(np.isfinite(reduced)):
        bad = int(np.flatnonzero(~np.isfinite(reduced))[0])
        raise ValueError(
            f"{type(system).__name__}.potential is not finite at cell centre "
            f"{grid.points()[bad].tolist()} at t={t}; move the grid so no centre sits on a "
            f"singularity"
        )
    return reduced


def log_boltzmann_masses(system: System, grid: Grid, t: float) -> np.ndarray:
    """Return log pi_i, the log probability of each cell at equilibrium, shape (grid.size,).

    pi_i = exp(-u_i) / sum_j exp(-u_j) with u = beta(t) V(centres, t), computed with a
    log-sum-exp so that no weight underflows. This is the exact stationary state of the
    Scharfetter-Gummel scheme in ``fokker_planck`` for a potential frozen at time t.
    """
    reduced = reduced_potential(system, grid, t)
    return -reduced - logsumexp(-reduced)


def boltzmann_density(system: System, grid: Grid, t: float) -> np.ndarray:
    """Return exp(-beta(t) V(x, t)) / Z(t) at the cell centres, shape grid.shape.

    Z(t) is the sum of the weights times ``grid.cell_volume``, so
    ``density.sum() * grid.cell_volume == 1``. Units: probability per unit volume.
    """
    masses = np.exp(log_boltzmann_masses(system, grid, t))
    return (masses / grid.cell_volume).reshape(grid.shape)


def distance_from_equilibrium(
    solution: FokkerPlanckSolution, system: System
) -> dict[str, np.ndarray]:
    """Measure each frame's divergence from the Boltzmann density of that frame's time.

    Both divergences compare the cell probabilities m_i = p_i * cell_volume with the
    equilibrium probabilities pi_i(t) of :func:`log_boltzmann_masses`:
    KL(m || pi) = sum_i m_i ln(m_i / pi_i), and Jensen-Shannon
    JS(m, pi) = KL(m || a) / 2 + KL(pi || a) / 2 with a = (m + pi) / 2. On a fine grid
    they approach the continuum divergences of the densities. Round-off negatives in m
    count as zero.

    Returns
    -------
    dict[str, np.ndarray]
        ``"kl"`` and ``"js"``, each of shape (n_frames,), in nats.
    """
    grid = solution.grid
    kl = np.empty(len(solution.times))
    js = np.empty(len(solution.times))
    for frame, t in enumerate(solution.times):
        masses = np.clip(solution.density[frame].reshape(grid.size) * grid.cell_volume, 0, None)
        log_equilibrium = log_boltzmann_masses(system, grid, float(t))
        occupied = masses > 0
        # ln(m / pi) from ln pi directly, so an underflowed pi cannot make the ratio infinite.
        kl[frame] = np.sum(
            masses[occupied] * (np.log(masses[occupied]) - log_equilibrium[occupied])
        )
        equilibrium = np.exp(log_equilibrium)
        middle = 0.5 * (masses + equilibrium)
        js[frame] = (
            0.5 * rel_entr(masses, middle).sum() + 0.5 * rel_entr(equilibrium, middle).sum()
        )
    return {"kl": kl, "js": js}
