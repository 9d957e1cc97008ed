"""Potentials and drifts of the systems."""

from __future__ import annotations

import math

import pytest
import torch

from neqgen.systems import Harmonic, Prinz, RotatingWells

PUBLISHED = dict(s=5, omega=math.pi / 2, k=10.0, r0=0.5, a=0.0, beta=5.0)
QUINTUPLE = dict(s=5, omega=math.pi / 2, k=10.0, r0=1.5, a=0.5, nu=1.0, beta=5.0)


def autograd_drift(system, x, t):
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(system.potential(x, t).sum(), x)
    return -gradient


@pytest.mark.parametrize("params", [PUBLISHED, QUINTUPLE], ids=["published", "quintuple"])
@pytest.mark.parametrize("t", [0.0, 0.37, 3.2])
def test_rotating_wells_drift_matches_autograd(params, t):
    # Softening 1e-8 changes the drift by a relative (1e-8 / r)^2, far below float64 noise.
    system = RotatingWells(**params, softening=1e-8)
    generator = torch.Generator().manual_seed(0)
    x = 4 * torch.rand(500, 2, generator=generator, dtype=torch.float64) - 2
    x = x[torch.linalg.vector_norm(x, dim=-1) > 0.05]

    torch.testing.assert_close(system.drift(x, t), autograd_drift(system, x, t))


def test_rotating_wells_drift_accepts_time_per_particle():
    system = RotatingWells(**PUBLISHED)
    x = torch.tensor([[0.3, 0.2], [-0.4, 0.1]], dtype=torch.float64)
    t = torch.tensor([0.5, 1.5], dtype=torch.float64)

    per_particle = system.drift(x, t)

    torch.testing.assert_close(per_particle[0], system.drift(x[:1], 0.5)[0])
    torch.testing.assert_close(per_particle[1], system.drift(x[1:], 1.5)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotating_wells_drift_finite_at_origin(dtype):
    system = RotatingWells(**PUBLISHED)
    x = torch.tensor([[0.0, 0.0], [1e-30, 0.0], [0.0, -1e-12]], dtype=dtype)

    assert torch.isfinite(system.drift(x, 0.0)).all()


@pytest.mark.parametrize("t", [0.0, 1.3])
def test_rotating_wells_minima_are_stationary(t):
    system = RotatingWells(**QUINTUPLE, softening=1e-12)
    minima = system.minima(t)

    assert minima.shape == (5, 2)
    torch.testing.assert_close(
        system.drift(minima, t), torch.zeros_like(minima), atol=1e-9, rtol=0
    )
    # Each minimum is lower than points displaced from it in any direction.
    for angle in torch.linspace(0, 2 * math.pi, 9)[:-1]:
        offset = 0.02 * torch.stack((torch.cos(angle), torch.sin(angle))).to(minima)
        assert (system.potential(minima + offset, t) > system.potential(minima, t)).all()


def test_rotating_wells_rejects_bad_parameters():
    with pytest.raises(ValueError, match="system.beta must be positive, got -1"):
        RotatingWells(beta=-1.0)
    with pytest.raises(ValueError, match="system.softening must be positive"):
        RotatingWells(softening=0.0)
    with pytest.raises(ValueError, match="system.s must be a positive integer"):
        RotatingWells(s=2.5)


def test_harmonic_drift_matches_autograd():
    system = Harmonic(k=2.0, center=[0.5, -1.0], dim=2)
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    torch.testing.assert_close(system.drift(x, 0.0), autograd_drift(system, x, 0.0))


@pytest.mark.parametrize("tilt_amplitude", [0.0, 2.0])
@pytest.mark.parametrize("t", [0.0, 0.3])
def test_prinz_drift_matches_autograd(tilt_amplitude, t):
    system = Prinz(tilt_amplitude=tilt_amplitude, tilt_frequency=1.0)
    x = torch.linspace(-1.1, 1.1, 101, dtype=torch.float64)[:, None]

    torch.testing.assert_close(system.drift(x, t), autograd_drift(system, x, t))


def test_prinz_has_four_wells():
    minima = Prinz().minima(0.0)[:, 0]

    assert len(minima) == 4
    # The published potential's wells sit near -0.74, -0.22, 0.27 and 0.67.
    torch.testing.assert_close(
        minima,
        torch.tensor([-0.7394, -0.2237, 0.2692, 0.6733], dtype=torch.float64),
        atol=1e-3,
        rtol=0,
    )


def test_prinz_quench_switches_temperature():
    system = Prinz(beta=1.0, quench_time=2.0, quench_beta=4.0)

    assert system.beta_at(1.999) == 1.0
    assert system.beta_at(2.0) == 4.0
    assert system.noise_scale(3.0) == pytest.approx(math.sqrt(0.5))


def test_prinz_rejects_half_configured_quench():
    with pytest.raises(
        ValueError, match="quench_time and system.quench_beta must be set together"
    ):
        Prinz(quench_time=1.0)
