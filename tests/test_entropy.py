"""Entropy production estimators against exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neqgen.evaluation.entropy import (
    entropy_production,
    grid_thermodynamics,
    knn_entropy,
    path_heat,
    sample_thermodynamics,
    window_summary,
)
from neqgen.reference import Grid, entropy_production_rate, initial_density, solve_fokker_planck
from neqgen.simulation import frame_times, simulate
from neqgen.systems.harmonic import Harmonic

# A trap dragged at velocity v: in the steady state the ensemble lags v / k behind the
# centre and produces entropy at exactly beta v^2.
VELOCITY, STIFFNESS, BETA = 1.0, 4.0, 2.0
EXACT_RATE = BETA * VELOCITY**2


@pytest.fixture(scope="module")
def dragged_trap():
    system = Harmonic(k=STIFFNESS, velocity=[VELOCITY], beta=BETA, domain=[[-2.0, 5.0]])
    times = frame_times(3.0, 31)
    x0 = torch.zeros(4000, 1)
    positions = simulate(system, x0, times, dt=1e-3, seed=0, n_chunks=1).numpy()
    return system, times.numpy(), positions


def test_knn_entropy_of_a_gaussian():
    # Kozachenko-Leonenko is unbiased to O(1/n) here; its standard error is close to the
    # spread of log p, sqrt(dim / 2 / n).
    rng = np.random.default_rng(0)
    n, dim, std = 4000, 2, 0.3
    exact = dim / 2 * math.log(2 * math.pi * math.e * std**2)
    estimate = knn_entropy(rng.normal(0.0, std, size=(n, dim)))
    assert abs(estimate - exact) < 5 * math.sqrt(dim / 2 / n)


def test_knn_entropy_rejects_too_few_points():
    with pytest.raises(ValueError, match="n > 4"):
        knn_entropy(np.zeros((3, 2)))


def test_exact_first_law_matches_flux_rate():
    # Two exact routes from the same Fokker-Planck solution: dS/dt + beta d<Q>/dt from
    # the cell masses, and the integral of J^2 / (D p) from the fluxes.
    system = Harmonic(k=STIFFNESS, velocity=[VELOCITY], beta=BETA, domain=[[-2.0, 5.0]])
    grid = Grid(system.domain, 700)
    times = frame_times(3.0, 31).numpy()
    start = initial_density(system, grid, {"kind": "well", "well": 0, "spread": 0.3})
    solution = solve_fokker_planck(system, grid, start, times, dt=2e-3, progress=False)
    rates = entropy_production(
        grid_thermodynamics(solution.masses(), grid.edges, times, system), times, system
    )
    flux = entropy_production_rate(solution, system)
    late = times >= 2.0
    flux_late = np.trapezoid(flux[late], times[late]) / (times[-1] - 2.0)
    assert window_summary(rates, 2.0)["epr_late"] == pytest.approx(flux_late, rel=0.01)
    assert flux_late == pytest.approx(EXACT_RATE, rel=0.02)


def test_marginal_estimator_recovers_the_dragged_trap_rate(dragged_trap):
    # Over the last time unit the estimate's noise is that of two entropy estimates
    # (about 0.015 each) plus the mean-energy change, so 10% of the rate is 5 sigma.
    system, times, positions = dragged_trap
    rates = entropy_production(sample_thermodynamics(positions, times, system), times, system)
    assert window_summary(rates, 2.0)["epr_late"] == pytest.approx(EXACT_RATE, rel=0.1)


def test_path_estimator_recovers_the_dragged_trap_rate(dragged_trap):
    # For a potential quadratic in x and linear in t the midpoint heat equals work minus
    # the energy change exactly, so this case checks the path code, not its frame-spacing
    # bias, which shows only for anharmonic wells. The tolerance is the marginal one.
    system, times, positions = dragged_trap
    thermodynamics = sample_thermodynamics(positions, times, system)
    heat = path_heat(positions, times, system)
    rates = entropy_production(thermodynamics, times, system, heat=heat)
    assert window_summary(rates, 2.0)["epr_late"] == pytest.approx(EXACT_RATE, rel=0.1)


def test_entropy_production_rejects_unordered_times():
    system = Harmonic()
    with pytest.raises(ValueError, match="increase"):
        sample_thermodynamics(np.zeros((2, 10, 1)), np.array([1.0, 0.0]), system)
