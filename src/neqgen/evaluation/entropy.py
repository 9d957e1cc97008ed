r"""Entropy production rate of an evolving ensemble, estimated from samples and paths.

For overdamped Langevin dynamics dX = -grad V dt + sqrt(2 / beta) dW the total entropy
production rate (in units of k_B per unit time) is

.. math::

    \sigma(t) = \frac{dS}{dt} + \beta(t) \frac{d\langle Q \rangle}{dt} \ge 0,

with S = -\int p \ln p the ensemble's Shannon entropy and Q the heat given to the bath.
Two estimators of the heat follow:

- from paths (stochastic thermodynamics): the heat of one step is the force times the
  displacement in the Stratonovich (midpoint) sense, Q = \int -\nabla V \circ dX; it needs
  the same particles at consecutive frames;
- from marginals (first law): heat = work - change of energy, with the work rate
  \langle \partial_t V \rangle, so d<Q>/dt = <\partial_t V> - d<V>/dt; it needs only one
  ensemble per frame, so it also applies to models that generate snapshots.

S is estimated per frame with the Kozachenko-Leonenko nearest-neighbour estimator. All
rates are averages over the interval between consecutive frames, reported at its midpoint.
Frames far apart blur fast transients and alias periodic driving. The path estimator's
midpoint rule is also biased when a particle crosses an anharmonic well in one interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from neqgen.systems.base import System

# Half-width of the central difference that gives the potential's time derivative.
_TIME_STEP = 1e-4


def knn_entropy(samples: np.ndarray, k: int = 4) -> float:
    """Return the Kozachenko-Leonenko estimate of the differential entropy, in nats.

    Parameters
    ----------
    samples:
        Points of shape (n, dim), n > k, from the density whose entropy is wanted.
    k:
        Neighbour order; larger k lowers the variance and raises the bias.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] <= k:
        raise ValueError(f"knn_entropy needs samples of shape (n > {k}, dim), got {samples.shape}")
    n, dim = samples.shape
    distances, _ = cKDTree(samples).query(samples, k=k + 1)
    radius = distances[:, k]
    # Coincident points (a sampler that repeats values) give zero radii; floor them at a
    # tiny length instead of taking the log of zero.
    radius = np.maximum(radius, 1e-12)
    log_unit_ball = (dim / 2) * math.log(math.pi) - gammaln(dim / 2 + 1)
    return float(digamma(n) - digamma(k) + log_unit_ball + dim * np.mean(np.log(radius)))


def _potential(system: System, x: np.ndarray, t: float) -> np.ndarray:
    with torch.no_grad():
        return system.potential(torch.as_tensor(x, dtype=torch.float64), float(t)).numpy()


def _potential_rate(system: System, x: np.ndarray, t: float) -> np.ndarray:
    """Return dV/dt at fixed positions (the protocol's work rate per particle)."""
    later = _potential(system, x, t + _TIME_STEP)
    earlier = _potential(system, x, t - _TIME_STEP)
    return (later - earlier) / (2 * _TIME_STEP)


def sample_thermodynamics(
    positions: np.ndarray, times: np.ndarray, system: System, k: int = 4
) -> dict[str, np.ndarray]:
    """Return per-frame entropy, mean energy <V> and work rate <dV/dt> of an ensemble.

    ``positions`` has shape (frames, n, dim) at the given ``times``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    _check_frames(positions.shape[0], times)
    return {
        "entropy": np.array([knn_entropy(frame, k) for frame in positions]),
        "mean_energy": np.array(
            [_potential(system, x, t).mean() for x, t in zip(positions, times, strict=True)]
        ),
        "work_rate": np.array(
            [_potential_rate(system, x, t).mean() for x, t in zip(positions, times, strict=True)]
        ),
    }


def grid_thermodynamics(
    masses: np.ndarray, edges: list[np.ndarray], times: np.ndarray, system: System
) -> dict[str, np.ndarray]:
    """Return the same per-frame quantities for an exact density given as cell masses.

    ``masses`` has shape (frames, *cells) on the grid with the given cell ``edges``. The
    entropy is that of the piecewise-constant density, so it converges to the continuous
    entropy as the cells shrink.
    """
    masses = np.asarray(masses, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    _check_frames(masses.shape[0], times)
    centres = [(edge[:-1] + edge[1:]) / 2 for edge in edges]
    widths = [np.diff(edge) for edge in edges]
    points = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, len(edges))
    volume = np.prod(np.meshgrid(*widths, indexing="ij"), axis=0).ravel()
    flat = masses.reshape(len(times), -1)
    positive = np.where(flat > 0, flat, 1.0)
    entropy = -np.sum(np.where(flat > 0, flat * np.log(positive / volume), 0.0), axis=1)
    mean_energy = np.array([flat[i] @ _potential(system, points, t) for i, t in enumerate(times)])
    work_rate = np.array(
        [flat[i] @ _potential_rate(system, points, t) for i, t in enumerate(times)]
    )
    return {"entropy": entropy, "mean_energy": mean_energy, "work_rate": work_rate}


def path_heat(positions: np.ndarray, times: np.ndarray, system: System) -> np.ndarray:
    """Return the mean heat given to the bath in each interval, from the particles' paths.

    Column j of every frame must be the same particle. The heat of one interval is the
    force at the midpoint times the displacement (the Stratonovich rule).
    """
    positions = np.asarray(positions, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    _check_frames(positions.shape[0], times)
    heat = np.empty(len(times) - 1)
    for index in range(len(times) - 1):
        start, end = positions[index], positions[index + 1]
        middle = (times[index] + times[index + 1]) / 2
        with torch.no_grad():
            force = system.drift(torch.as_tensor((start + end) / 2), float(middle)).numpy()
        heat[index] = np.mean(np.sum(force * (end - start), axis=-1))
    return heat


def entropy_production(
    thermodynamics: dict[str, np.ndarray],
    times: np.ndarray,
    system: System,
    heat: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return the entropy production rate averaged over each interval between frames.

    The heat of each interval is ``heat`` when given (the path estimator), else work minus
    the change of mean energy (the first law, from marginals).

    Returns
    -------
    dict
        ``time`` (interval midpoints), ``duration`` and ``epr`` (k_B per unit time).
    """
    times = np.asarray(times, dtype=np.float64)
    duration = np.diff(times)
    middle = times[:-1] + duration / 2
    if heat is None:
        work_rate = thermodynamics["work_rate"]
        work = (work_rate[:-1] + work_rate[1:]) / 2 * duration
        heat = work - np.diff(thermodynamics["mean_energy"])
    beta = np.array([system.beta_at(float(t)) for t in middle])
    rate = (np.diff(thermodynamics["entropy"]) + beta * heat) / duration
    return {"time": middle, "duration": duration, "epr": rate}


def window_summary(rates: dict[str, np.ndarray], split: float) -> dict[str, float]:
    """Return the entropy produced up to ``split`` and the mean rate after it.

    The early total stays accurate where the rate varies fast (a relaxing start). The late
    mean rate averages the frame-to-frame noise of the entropy estimate over a long window.
    """
    ends = rates["time"] + rates["duration"] / 2
    produced = rates["epr"] * rates["duration"]
    early = ends <= split + 1e-9
    summary = {"entropy_early": float(produced[early].sum())}
    if (~early).any():
        summary["epr_late"] = float(produced[~early].sum() / rates["duration"][~early].sum())
    return summary


def _check_frames(n_frames: int, times: np.ndarray) -> None:
    if times.ndim != 1 or len(times) != n_frames or n_frames < 2:
        raise ValueError(
            f"need at least two frames with one time each, got {n_frames} frames and "
            f"times of shape {times.shape}"
        )
    if not np.all(np.diff(times) > 0):
        raise ValueError("times must increase strictly")
