"""Per-frame scores of a sample set against the held-out reference ensemble."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from neqgen.evaluation.distances import (
    angular_lag,
    energy_distance,
    kl_divergence,
    mmd,
    wasserstein,
    well_populations,
)
from neqgen.evaluation.metrics import (
    histogram,
    jensen_shannon,
    jensen_shannon_samples,
    wasserstein1,
)
from neqgen.systems.base import System
from neqgen.systems.rotating_wells import RotatingWells

# Per-frame scores of a sample set against the reference ensemble; see score_frames.
METRICS = ("jsd", "w1", "w2", "mmd", "energy", "population_error")
ROTATING_METRICS = ("lag", "lag_error")


def evaluation_frames(times: np.ndarray, stride: int, dense_until: float = 0.0) -> np.ndarray:
    """Return the indices of the frames to score.

    Every frame with t <= dense_until is scored (the early transient, where the ensemble
    changes fastest), then every stride-th frame, always including the last one.
    """
    if stride < 1:
        raise ValueError(f"evaluation.frame_stride must be at least 1, got {stride}")
    n_frames = len(times)
    frames = set(np.arange(0, n_frames, stride).tolist())
    frames.update(np.nonzero(times <= dense_until)[0].tolist())
    frames.add(n_frames - 1)
    return np.array(sorted(frames))


def score_frames(
    samples: np.ndarray,
    reference: np.ndarray,
    times: np.ndarray,
    system: System,
    jsd_bins: int,
    w1_max_points: int,
    seed: int,
    desc: str = "score",
    exact_masses: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Score samples (n_frames, n, dim) against reference (n_frames, m, dim) frame by frame.

    Returns arrays of shape (n_frames,):

    - ``jsd``: Jensen-Shannon divergence of histograms on system.domain (nats).
    - ``w1``, ``w2``: exact Wasserstein-1 and -2 between random subsets of
      ``w1_max_points`` points of each set (length units).
    - ``mmd``: unbiased squared maximum mean discrepancy (Gaussian kernel, median
      bandwidth) and ``energy``: energy distance, both on the same subsets.
    - ``population_error``: total variation 0.5 sum |P_model - P_ref| between the well
      populations, each particle counted in the well of the nearest minimum at that time.
    - for rotating systems, ``lag``: the population-weighted mean angle (radians) by which
      the samples' well centres of mass trail the potential's minima, and ``lag_error``:
      its absolute difference from the reference's lag.
    - with ``exact_masses`` (one array per frame: the exact probability of every histogram
      cell, in the layout of :func:`neqgen.evaluation.metrics.histogram`), ``jsd_exact``:
      the Jensen-Shannon divergence of the samples' histogram from the exact density, and
      ``kl_exact``: KL(samples || exact) of the histogram's cells inside the domain (the
      histogram renormalised to its inside mass; exact densities are positive there).
    """
    rng = np.random.default_rng(seed)
    rotating = isinstance(system, RotatingWells)
    names = METRICS + (ROTATING_METRICS if rotating else ())
    if exact_masses is not None:
        names += ("jsd_exact", "kl_exact")
    scores = {name: np.empty(len(samples)) for name in names}
    for frame in tqdm(range(len(samples)), desc=desc, leave=False):
        a, b = samples[frame], reference[frame]
        scores["jsd"][frame] = jensen_shannon_samples(a, b, system.domain, jsd_bins)
        if exact_masses is not None:
            counts = histogram(a, system.domain, jsd_bins)
            scores["jsd_exact"][frame] = jensen_shannon(counts, exact_masses[frame])
            inside_mass = counts[:-1].sum()
            inside = counts[:-1] / inside_mass if inside_mass > 0 else counts[:-1]
            scores["kl_exact"][frame] = kl_divergence(inside, exact_masses[frame][:-1], 1.0)
        scores["w1"][frame] = wasserstein1(a, b, w1_max_points, rng)

        small_a = _subset(a, w1_max_points, rng)
        small_b = _subset(b, w1_max_points, rng)
        scores["w2"][frame] = wasserstein(small_a, small_b, p=2, max_exact_points=w1_max_points)
        scores["mmd"][frame] = mmd(small_a, small_b)
        scores["energy"][frame] = energy_distance(small_a, small_b)

        minima = system.minima(float(times[frame])).numpy()
        populations_a = well_populations(a, minima)
        populations_b = well_populations(b, minima)
        scores["population_error"][frame] = 0.5 * np.abs(populations_a - populations_b).sum()
        if rotating:
            angles = np.arctan2(minima[:, 1], minima[:, 0])
            lag_a = _mean_lag(angular_lag(a, minima, angles), populations_a)
            lag_b = _mean_lag(angular_lag(b, minima, angles), populations_b)
            scores["lag"][frame] = lag_a
            scores["lag_error"][frame] = abs(lag_a - lag_b)
    return scores


def _subset(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(points) <= size:
        return points
    return points[rng.choice(len(points), size, replace=False)]


def _mean_lag(lags: np.ndarray, populations: np.ndarray) -> float:
    """Average the per-well lags weighted by population, skipping empty wells."""
    occupied = ~np.isnan(lags)
    if not occupied.any():
        return float("nan")
    return float(np.average(lags[occupied], weights=populations[occupied]))


def summarize(
    scores: dict[str, np.ndarray], times: np.ndarray, early_until: float
) -> dict[str, float]:
    """Return the time average, the maximum and the early-time average of every metric.

    ``<metric>_early_mean`` averages the frames with t <= early_until, the transient in
    which a relaxing ensemble is furthest from equilibrium.
    """
    early = times <= early_until
    summary = {}
    for name, values in scores.items():
        summary[f"{name}_mean"] = float(np.mean(values))
        summary[f"{name}_max"] = float(np.max(values))
        summary[f"{name}_early_mean"] = float(np.mean(values[early]))
    return summary


def write_frame_table(path, times: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Write per-frame metrics as CSV with a time column and one column a metric (a DVC plot)."""
    names = list(scores)
    lines = ["time," + ",".join(names)]
    for index, time in enumerate(times):
        values = ",".join(f"{scores[name][index]:.6g}" for name in names)
        lines.append(f"{time:.6g},{values}")
    path.write_text("\n".join(lines) + "\n")
