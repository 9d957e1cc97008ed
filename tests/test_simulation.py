"""The torchsde ensemble simulator."""

from __future__ import annotations

import math

import pytest
import torch

from neqgen.simulation import SimulationError, frame_times, initial_positions, simulate
from neqgen.systems import Harmonic, RotatingWells


def test_ornstein_uhlenbeck_mean_and_variance():
    # dX = -k (X - c) dt + sqrt(2 / beta) dW from X0 = x0: every coordinate is Gaussian with
    # mean c + (x0 - c) e^{-kt} and variance (1 - e^{-2kt}) / (beta k).
    k, beta, center, x0 = 2.0, 4.0, 0.5, -1.0
    n = 20_000
    system = Harmonic(k=k, center=[center, center], dim=2, beta=beta)
    times = frame_times(1.0, 5)
    start = torch.full((n, 2), x0, dtype=torch.float64)

    path = simulate(system, start, times, dt=1e-3, seed=3, dtype=torch.float64, progress=False)

    for frame in range(1, len(times)):
        t = float(times[frame])
        mean = center + (x0 - center) * math.exp(-k * t)
        variance = (1 - math.exp(-2 * k * t)) / (beta * k)
        samples = path[frame].reshape(-1)
        # 5 standard errors of the 2n samples, plus the O(k dt) Euler-Maruyama bias.
        mean_tolerance = 5 * math.sqrt(variance / samples.numel()) + 2e-3
        variance_tolerance = 5 * variance * math.sqrt(2 / samples.numel()) + 2e-3 * variance
        assert abs(float(samples.mean()) - mean) < mean_tolerance, f"mean at t={t}"
        assert abs(float(samples.var()) - variance) < variance_tolerance, f"variance at t={t}"


def test_simulation_is_bitwise_reproducible_and_chunk_independent():
    system = RotatingWells()
    times = frame_times(0.5, 6)
    start = initial_positions(
        system, {"kind": "uniform", "low": -1, "high": 1}, 300, torch.Generator().manual_seed(0)
    )

    first = simulate(system, start, times, dt=1e-3, seed=7, n_chunks=5, progress=False)
    second = simulate(system, start, times, dt=1e-3, seed=7, n_chunks=5, progress=False)
    one_chunk = simulate(system, start, times, dt=1e-3, seed=7, n_chunks=1, progress=False)
    other_seed = simulate(system, start, times, dt=1e-3, seed=8, n_chunks=5, progress=False)

    assert torch.equal(first, second)
    # Restarting the solver at chunk boundaries only changes float32 rounding.
    torch.testing.assert_close(first, one_chunk, atol=1e-5, rtol=0)
    assert not torch.equal(first, other_seed)


def test_simulation_keeps_particles_at_origin_finite():
    system = RotatingWells()
    start = torch.zeros(100, 2, dtype=torch.float64)

    path = simulate(system, start, frame_times(0.2, 3), dt=1e-3, seed=0, progress=False)

    assert torch.isfinite(path).all()


def test_simulation_blow_up_names_step_size():
    system = RotatingWells()
    start = initial_positions(
        system, {"kind": "uniform", "low": -1, "high": 1}, 200, torch.Generator().manual_seed(0)
    )

    # A step of 0.5 is far past the Euler stability limit 1 / k of the radial well.
    with pytest.raises(SimulationError, match=r"Reduce simulation\.dt"):
        simulate(system, start, frame_times(5.0, 11), dt=0.5, seed=0, progress=False)


def test_one_well_start_is_in_well_zero():
    system = RotatingWells()
    start = initial_positions(
        system, {"kind": "well", "well": 0, "spread": 0.05}, 2000, torch.Generator().manual_seed(0)
    )
    distances = torch.cdist(start, system.minima(0.0))

    assert (distances.argmin(dim=1) == 0).all()


def test_initial_positions_reject_unknown_kind():
    with pytest.raises(ValueError, match="protocol.start.kind must be 'uniform' or 'well'"):
        initial_positions(RotatingWells(), {"kind": "gaussian"}, 10, torch.Generator())
