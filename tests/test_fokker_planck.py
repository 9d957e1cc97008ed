"""The finite-volume Fokker-Planck reference against exact results and the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neqgen.evaluation.metrics import histogram, jensen_shannon
from neqgen.reference import (
    Grid,
    bernoulli,
    boltzmann_density,
    distance_from_equilibrium,
    entropy_production_rate,
    initial_density,
    solve_fokker_planck,
)
from neqgen.simulation import initial_positions, simulate
from neqgen.systems import Harmonic, Prinz, RotatingWells


@pytest.fixture(autouse=True)
def single_torch_thread():
    # The tensors here are small. On a busy 2-core machine, torch's intra-op thread pool made
    # the 20000-particle simulations about 20 times slower than one thread did.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


STATIC = [(Prinz(), 120), (RotatingWells(omega=0.0), 24)]
STATIC_IDS = ["prinz", "wells"]


def test_bernoulli_limits_and_symmetry():
    z = np.array([-800.0, -30.0, -1.0, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 1.0, 30.0, 800.0])
    b = bernoulli(z)

    assert b[5] == 1.0
    assert np.all(np.isfinite(b))
    # B(-z) = e^z B(z) is the detailed balance of the scheme; it must hold to round-off.
    moderate = np.abs(z) <= 30
    np.testing.assert_allclose(
        bernoulli(-z[moderate]), np.exp(z[moderate]) * b[moderate], rtol=1e-14
    )
    # For large |z|, B(z) -> -z for z < 0 and underflows to 0 for z > 0.
    assert b[0] == 800.0
    assert b[-1] == 0.0


def test_grid_geometry_and_coarsen():
    grid = Grid([[-1.0, 2.0], [0.0, 1.0]], [6, 4])
    values = np.arange(24.0).reshape(6, 4)

    np.testing.assert_allclose(grid.widths, [0.5, 0.25])
    assert grid.cell_volume == 0.125
    assert grid.points().shape == (24, 2)
    # Flat index 5 is cell (1, 1) in C order.
    np.testing.assert_allclose(grid.points()[5].numpy(), [-0.25, 0.375])
    # Each coarse bin of numpy.histogramdd with 3 x 2 bins contains 2 x 2 cells.
    coarse_counts, _ = np.histogramdd(
        grid.points().numpy(), bins=[3, 2], range=grid.domain, weights=values.ravel()
    )
    np.testing.assert_allclose(grid.coarsen(values, 2), coarse_counts)


def test_grid_rejects_single_cell():
    with pytest.raises(ValueError, match="n_cells must be at least 2, got 1"):
        Grid([[0.0, 1.0]], 1)


def test_solver_rejects_wrong_p0_shape():
    system = Prinz()
    grid = Grid(system.domain, 10)

    with pytest.raises(ValueError, match=r"p0 must have the grid shape \(10,\)"):
        solve_fokker_planck(system, grid, np.ones(11), [0.0, 0.1], 0.01, progress=False)


def test_uniform_start_weights_partial_cells():
    system = Harmonic(domain=[[0.0, 1.0]])
    grid = Grid(system.domain, 4)

    density = initial_density(system, grid, {"kind": "uniform", "low": 0.1, "high": 0.6})

    # The box [0.1, 0.6] covers 0.15, 0.25 and 0.1 of the cells of width 0.25.
    np.testing.assert_allclose(density * grid.cell_volume, [0.3, 0.5, 0.2, 0.0], atol=1e-15)


def test_well_start_std_floored_at_cell():
    system = Harmonic(center=[0.25])
    grid = Grid(system.domain, 60)
    x = grid.centers[0]

    masses = initial_density(system, grid, {"kind": "well", "spread": 0.0}) * grid.cell_volume
    mean = masses @ x
    variance = masses @ x**2 - mean**2

    assert abs(mean - 0.25) < 1e-12
    # Cell probabilities of N(0.25, h^2) placed at the centres have variance h^2 + h^2 / 12.
    assert abs(variance - grid.widths[0] ** 2 * 13 / 12) < 1e-3 * grid.widths[0] ** 2


def test_start_outside_grid_rejected():
    system = Prinz()
    grid = Grid(system.domain, 24)

    with pytest.raises(ValueError, match="widen the grid domain"):
        initial_density(system, grid, {"kind": "uniform", "low": -2.0, "high": 2.0})


@pytest.mark.parametrize(("system", "n_cells"), STATIC, ids=STATIC_IDS)
def test_boltzmann_is_stationary(system, n_cells):
    grid = Grid(system.domain, n_cells)
    equilibrium = boltzmann_density(system, grid, 0.0)

    solution = solve_fokker_planck(system, grid, equilibrium, [0.0, 0.01], 0.01, progress=False)

    # Detailed balance is exact on every face, so L p_eq is round-off, about 1e-16 times the
    # largest rate (6e3 here) times p. One step of 0.01 moves p by about 1e-14 of its size.
    change = np.abs(solution.density[1] - equilibrium).max()
    assert change < 1e-12 * equilibrium.max()
    assert solution.n_factorizations == 1


@pytest.mark.parametrize(
    ("system", "n_cells", "dt"),
    [(Prinz(), 120, 2.0), (RotatingWells(omega=0.0), 24, 2e3)],
    ids=STATIC_IDS,
)
def test_static_relaxes_to_boltzmann(system, n_cells, dt):
    grid = Grid(system.domain, n_cells)
    start = initial_density(system, grid, {"kind": "uniform", "low": -0.9, "high": 0.9})

    solution = solve_fokker_planck(system, grid, start, [0.0, 100 * dt], dt, progress=False)

    # The slowest relaxation rate lambda of these grids is 1.2 (Prinz) and 1.8e-3 (the wells,
    # whose barriers are 10 kT). Each backward Euler step divides that mode by
    # 1 + lambda dt > 3, so 100 steps leave only round-off. Each solve adds about float64
    # epsilon times dt times the largest rate (1e4 for Prinz, 4e5 for the wells) along the
    # stationary mode.
    equilibrium = boltzmann_density(system, grid, 0.0)
    assert np.abs(solution.density[-1] - equilibrium).max() < 1e-9 * equilibrium.max()


@pytest.mark.parametrize(
    ("system", "n_cells", "n_factorizations"),
    [
        (RotatingWells(), 32, 50),
        (Prinz(quench_time=0.25, quench_beta=3.0), 120, 2),
    ],
    ids=["rotating", "quench"],
)
def test_mass_conserved_when_driven(system, n_cells, n_factorizations):
    grid = Grid(system.domain, n_cells)
    start = initial_density(system, grid, {"kind": "uniform", "low": -0.9, "high": 0.9})

    solution = solve_fokker_planck(
        system, grid, start, np.linspace(0, 0.5, 6), 0.01, progress=False
    )

    mass = solution.density.reshape(6, -1).sum(axis=1) * grid.cell_volume
    # Every column of I - dt L sums to one, so each of the 50 solves changes the total only
    # by round-off. The bound 1e-12 is about 5000 float64 epsilons.
    assert np.abs(mass - 1).max() < 1e-12
    # Backward Euler of an M-matrix keeps p non-negative up to round-off.
    assert solution.density.min() > -1e-14 * solution.density.max()
    # The rotating potential changes every step, and the quench changes beta once.
    assert solution.n_factorizations == n_factorizations


def test_harmonic_matches_ornstein_uhlenbeck():
    k, beta, x0 = 2.0, 4.0, -1.0
    system = Harmonic(k=k, beta=beta)
    grid = Grid(system.domain, 600)
    dt = 1e-3
    h = grid.widths[0]
    x = grid.centers[0]
    times = np.linspace(0.0, 1.0, 5)
    # The start is the well start of a copy of the system centred at x0.
    start = initial_density(
        Harmonic(k=k, beta=beta, center=[x0]), grid, {"kind": "well", "spread": 0.05}
    )

    solution = solve_fokker_planck(system, grid, start, times, dt, progress=False)

    masses = solution.masses()
    mean = masses @ x
    variance = masses @ x**2 - mean**2
    mean0, variance0 = mean[0], variance[0]
    stationary = 1 / (beta * k)
    for frame in range(1, len(times)):
        t = times[frame]
        decay = math.exp(-k * t)
        exact_mean = mean0 * decay
        exact_variance = stationary + (variance0 - stationary) * decay**2
        # Leading errors: backward Euler decays a mode of rate r as (1 + r dt)^(-t / dt),
        # relative error r^2 t dt / 2. To leading order the scheme's drift on this grid is
        # -k x (1 - beta k h^2 / 6). Backward Euler of the second moment also adds k^2 dt m^2
        # per unit time. A factor 1.5 covers the O(dt^2) and O(h^2 dt) remainders.
        mean_error = abs(mean0) * decay * k * t * (k * dt / 2 + beta * k * h**2 / 6)
        variance_error = (
            decay**2
            * t
            * (
                abs(variance0 - stationary) * 2 * k * (k * dt + beta * k * h**2 / 6)
                + k**2 * dt * mean0**2
            )
        )
        assert abs(mean[frame] - exact_mean) < 1.5 * mean_error, f"mean at t={t}"
        assert abs(variance[frame] - exact_variance) < 1.5 * variance_error, f"variance at t={t}"


def histogram_divergences(system, grid, solution, path, factor):
    """Return per-frame JS between the path's histograms and the solution, and the tolerance.

    The bins are ``factor`` cells wide per axis, plus one bin for particles outside the grid.
    For nearby laws JS is the chi-square divergence divided by 8. So if the solver were
    exact, the histogram of N samples on K bins of non-negligible probability would have
    8 N JS close to a chi-square variable with K - 1 degrees of freedom. Its mean is
    (K - 1) / (8 N), and for K - 1 near 20, P(chi2 > 3 (K - 1)) is below 1e-5 per frame.
    """
    coarse = grid.coarsen(solution.masses(), factor)
    n_particles = path.shape[1]
    divergences = []
    sampling_bounds = []
    for frame in range(len(solution.times)):
        observed = histogram(path[frame], grid.domain, grid.shape[0] // factor)
        expected = np.append(coarse[frame].ravel(), 0.0)
        occupied = int(np.sum(expected * n_particles >= 1))
        divergences.append(jensen_shannon(observed, expected))
        sampling_bounds.append(3 * (occupied - 1) / (8 * n_particles))
    return np.array(divergences), np.array(sampling_bounds)


def combined_tolerance(sampling, *biases):
    # sqrt(JS) is a metric, so the distance from the histogram to the solver's law is at most
    # the sum of the sampling distance and the distances that each bias adds.
    return (np.sqrt(sampling) + sum(math.sqrt(bias) for bias in biases)) ** 2


def euler_maruyama_bias(curvature, dt):
    # Euler-Maruyama in a well of curvature kappa has stationary variance inflated by
    # epsilon = kappa dt / 2 to first order. Between Gaussians with variance ratio 1 + epsilon,
    # JS = epsilon^2 / 16, and coarse bins can only shrink it.
    epsilon = curvature * dt / 2
    return epsilon**2 / 16


def test_simulator_matches_tilted_prinz():
    system = Prinz(tilt_amplitude=2.0, tilt_frequency=1.0)
    grid = Grid(system.domain, 240)
    start = {"kind": "uniform", "low": -1.0, "high": 1.0}
    times = torch.linspace(0.0, 0.5, 11, dtype=torch.float64)
    n_particles, sim_dt = 20_000, 2.5e-4
    x0 = initial_positions(system, start, n_particles, torch.Generator().manual_seed(0))

    path = simulate(system, x0, times, dt=sim_dt, seed=0, progress=False).numpy()
    solution = solve_fokker_planck(
        system, grid, initial_density(system, grid, start), times.numpy(), 1e-3, progress=False
    )
    divergences, sampling = histogram_divergences(system, grid, solution, path, factor=10)

    # Solving on 960 cells with dt = 2.5e-4 moves this solution by JS < 1e-6 on these bins.
    # The stiffest well of V has curvature 104 (at x = -0.22).
    tolerance = combined_tolerance(sampling, 1e-6, euler_maruyama_bias(104.0, sim_dt))
    assert np.all(divergences < tolerance), f"JS {divergences} above {tolerance}"


def test_simulator_matches_rotating_wells():
    system = RotatingWells()
    # Cells of 0.05, the start's spread, so the well start needs no smoothing.
    grid = Grid(system.domain, 60)
    start = {"kind": "well", "well": 0, "spread": 0.05}
    times = torch.linspace(0.0, 0.5, 6, dtype=torch.float64)
    n_particles, sim_dt = 20_000, 5e-4
    x0 = initial_positions(system, start, n_particles, torch.Generator().manual_seed(0))

    path = simulate(system, x0, times, dt=sim_dt, seed=0, progress=False).numpy()
    solution = solve_fokker_planck(
        system, grid, initial_density(system, grid, start), times.numpy(), 2e-3, progress=False
    )
    divergences, sampling = histogram_divergences(system, grid, solution, path, factor=5)

    # A 120 x 120 solution with dt = 1e-3 differs from this one by JS <= 1.05e-4 on these
    # 12 x 12 bins. The wells have curvature s^2 / r0^2 = 100 along the ring.
    tolerance = combined_tolerance(sampling, 1.1e-4, euler_maruyama_bias(100.0, sim_dt))
    assert np.all(divergences < tolerance), f"JS {divergences} above {tolerance}"


def test_entropy_production_zero_at_boltzmann():
    system = Prinz()
    grid = Grid(system.domain, 120)
    equilibrium = boltzmann_density(system, grid, 0.0)

    solution = solve_fokker_planck(
        system, grid, equilibrium, [0.0, 0.5, 1.0], 0.01, progress=False
    )

    # Flux and force are both round-off (flux below 1e-12), so their product is far below
    # the O(1) to O(100) rates of a relaxing density.
    assert np.abs(entropy_production_rate(solution, system)).max() < 1e-20


def test_entropy_production_is_kl_decay():
    system = Prinz()
    grid = Grid(system.domain, 240)
    start = initial_density(system, grid, {"kind": "well", "well": 0, "spread": 0.05})
    times = np.linspace(0.0, 0.5, 51)

    solution = solve_fokker_planck(system, grid, start, times, 1e-3, progress=False)

    sigma = entropy_production_rate(solution, system)
    kl = distance_from_equilibrium(solution, system)["kl"]
    decay = -(kl[2:] - kl[:-2]) / (times[2:] - times[:-2])
    late = times[1:-1] >= 0.2
    # For a static potential sigma = -dKL/dt is exact for the time-continuous scheme.
    # The O(dt) step and the O(spacing^2) central difference leave a relative gap of 4e-4
    # after t = 0.2, and the bound 1e-2 still catches any wrong factor in sigma.
    assert np.all(np.abs(sigma[1:-1][late] - decay[late]) < 1e-2 * sigma[1:-1][late])


def test_entropy_production_positive_when_driven():
    system = RotatingWells()
    grid = Grid(system.domain, 32)

    solution = solve_fokker_planck(
        system,
        grid,
        boltzmann_density(system, grid, 0.0),
        np.linspace(0, 1, 6),
        0.01,
        progress=False,
    )

    sigma = entropy_production_rate(solution, system)
    distance = distance_from_equilibrium(solution, system)
    # The start is in equilibrium with V(., 0), so sigma(0) is round-off.
    assert abs(sigma[0]) < 1e-20
    # The rotating wells drag the density behind them, so it never settles into equilibrium.
    assert np.all(sigma[1:] > 0.1)
    assert np.all(distance["js"][1:] > 1e-4)
