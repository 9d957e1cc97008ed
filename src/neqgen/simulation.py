"""Ensemble simulation of a system's Langevin dynamics with torchsde."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchsde
from tqdm.auto import tqdm

from neqgen.systems.base import System

log = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """Raised when an ensemble trajectory becomes non-finite or escapes to infinity."""


def initial_positions(
    system: System, start: Mapping[str, Any], n_particles: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw the starting positions of an ensemble, shape (n_particles, dim), float64.

    ``start.kind`` selects the protocol's initial density:

    - ``uniform``: uniform on the box [low, high]^dim.
    - ``well``: Gaussian with standard deviation ``spread`` around well ``well`` of
      ``system.minima(0)``, so every particle starts in the same well.
    """
    law = parse_start(system, start)
    if law.kind == "uniform":
        uniform = torch.rand(n_particles, system.dim, generator=generator, dtype=torch.float64)
        return law.low + (law.high - law.low) * uniform

    noise = torch.randn(n_particles, system.dim, generator=generator, dtype=torch.float64)
    return law.center + law.spread * noise


@dataclass(frozen=True)
class StartLaw:
    """A validated start density: a uniform box [low, high]^dim or a Gaussian in one well."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    center: torch.Tensor | None = None
    spread: float = 0.0


def parse_start(system: System, start: Mapping[str, Any]) -> StartLaw:
    """Validate a protocol's ``start`` settings and return the start law they describe.

    Raises
    ------
    ValueError
        For an unknown kind, an empty box, a well index the system lacks, or a negative
        spread; the message names the setting.
    """
    kind = start.get("kind")
    if kind == "uniform":
        low, high = float(start["low"]), float(start["high"])
        if not high > low:
            raise ValueError(f"protocol.start needs high > low, got low={low}, high={high}")
        return StartLaw("uniform", low=low, high=high)

    if kind == "well":
        minima = system.minima(0.0)
        well = int(start.get("well", 0))
        if not 0 <= well < len(minima):
            raise ValueError(
                f"protocol.start.well must be in [0, {len(minima) - 1}] for this system, "
                f"got {well}"
            )
        spread = float(start.get("spread", 0.0))
        if spread < 0:
            raise ValueError(f"protocol.start.spread must be non-negative, got {spread}")
        return StartLaw("well", center=minima[well], spread=spread)

    raise ValueError(f"protocol.start.kind must be 'uniform' or 'well', got {kind!r}")


def frame_times(horizon: float, n_frames: int) -> torch.Tensor:
    """Return the n_frames recorded times 0, dt_frame, ..., horizon, float64."""
    if not horizon > 0:
        raise ValueError(f"simulation.horizon must be positive, got {horizon}")
    if n_frames < 2:
        raise ValueError(f"simulation.n_frames must be at least 2, got {n_frames}")
    return torch.linspace(0.0, horizon, n_frames, dtype=torch.float64)


def simulate(
    system: System,
    x0: torch.Tensor,
    times: torch.Tensor,
    dt: float,
    seed: int,
    method: str = "euler",
    escape_radius: float | None = None,
    n_chunks: int = 20,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    record: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Integrate the whole ensemble as one batch and record it at ``times``.

    The internal step is the largest step not above ``dt`` that divides the frame spacing,
    so frames fall on integration steps. One Brownian motion (``torchsde.BrownianInterval``
    seeded with ``seed``) spans the horizon. The integration runs in ``n_chunks`` pieces
    for the progress bar, which changes the result only by float rounding.

    Parameters
    ----------
    x0:
        Starting positions, shape (n_particles, dim).
    times:
        Increasing recording times, shape (n_frames,); times[0] is the start time.

    escape_radius:
        Distance from the origin beyond which a particle counts as blown up; None means
        three times the largest coordinate bound of ``system.domain``.
    record:
        Called with each new block of frames, shape (k, n_particles, dim) on the CPU, in
        order: first the start frame, then every chunk's frames. A caller that writes the
        blocks to disk (see :class:`neqgen.data.dataset.EnsembleWriter`) never holds the
        whole ensemble in memory. None collects the frames into the returned tensor.

    Returns
    -------
    torch.Tensor or None
        Positions of shape (n_frames, n_particles, dim) on the CPU, or None when
        ``record`` is given.

    Raises
    ------
    SimulationError
        If any position becomes non-finite or leaves the ball of radius ``escape_radius``;
        the message names the step size to reduce.
    """
    if not dt > 0:
        raise ValueError(f"simulation.dt must be positive, got {dt}")
    if n_chunks < 1:
        raise ValueError(f"simulation.n_chunks must be at least 1, got {n_chunks}")
    if escape_radius is None:
        escape_radius = 3 * max(abs(bound) for bounds in system.domain for bound in bounds)
    spacing = float(times[1] - times[0])
    substeps = max(1, math.ceil(spacing / dt - 1e-9))
    step = spacing / substeps
    if step != dt:
        log.info(
            "Using an integration step of %.3g (%d per frame) for dt=%.3g", step, substeps, dt
        )

    device = torch.device(device)
    sde = system.sde()
    state = x0.to(device=device, dtype=dtype)
    ts = times.to(device=device, dtype=torch.float64)
    brownian = torchsde.BrownianInterval(
        t0=float(times[0]),
        t1=float(times[-1]),
        size=tuple(state.shape),
        dtype=dtype,
        device=device,
        entropy=int(seed),
        # Building the interval tree for this step up front keeps its depth logarithmic;
        # without the hint, horizons of ~1e4 steps exceed Python's recursion limit.
        dt=step,
    )

    n_frames = len(times)
    bounds = torch.linspace(0, n_frames - 1, min(n_chunks, n_frames - 1) + 1).round().long()
    positions = None
    if record is None:
        # Filled chunk by chunk: concatenating a list of chunks would need a second copy.
        positions = torch.empty((n_frames, *state.shape), dtype=dtype)
        filled = 0

        def record(frames: torch.Tensor) -> None:
            nonlocal filled
            positions[filled : filled + len(frames)] = frames
            filled += len(frames)

    record(state.cpu()[None])
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Each step is a few small element-wise kernels, for which torch's extra intra-op
        # threads only add synchronisation: with another process on the cores, the default
        # thread count ran 20 times slower than one thread.
        torch.set_num_threads(1)
    with (
        _restore_threads(threads),
        torch.no_grad(),
        tqdm(
            total=float(times[-1] - times[0]), desc="simulate", unit="time", disable=not progress
        ) as bar,
    ):
        for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            chunk_times = ts[first : last + 1]
            path = torchsde.sdeint(sde, state, chunk_times, bm=brownian, dt=step, method=method)
            _check_finite(path, chunk_times, escape_radius, step)
            record(path[1:].cpu())
            # A clone, so the chunk's path is freed before the next chunk allocates its own.
            state = path[-1].clone()
            del path
            bar.update(float(times[last] - times[first]))

    return positions


@contextlib.contextmanager
def _restore_threads(threads: int):
    """Set torch's intra-op thread count back to ``threads`` on exit."""
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_finite(path: torch.Tensor, times: torch.Tensor, escape_radius: float, step: float):
    radius = torch.linalg.vector_norm(path, dim=-1)
    bad = ~torch.isfinite(radius) | (radius > escape_radius)
    if bad.any():
        frame, particle = torch.nonzero(bad)[0].tolist()
        raise SimulationError(
            f"Particle {particle} left the ball of radius {escape_radius} or became non-finite "
            f"by time {float(times[frame]):.4g} with integration step {step:.3g}. "
            f"Reduce simulation.dt (for example to {step / 10:.2g}); no dataset was written."
        )
