"""Distances between two sample sets of one frame."""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def histogram(samples: np.ndarray, domain: list[list[float]], bins: int) -> np.ndarray:
    """Return normalised counts on a grid of bins^dim cells over domain, plus one outside cell.

    The last entry is the fraction of samples outside the domain, so no mass is dropped.
    """
    counts, _ = np.histogramdd(samples, bins=bins, range=domain)
    counts = counts.ravel()
    outside = len(samples) - counts.sum()
    return np.append(counts, outside) / len(samples)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    r"""Return JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2, in nats.

    It lies in [0, ln 2] for probability vectors p and q; the result is clipped to that
    range, because for disjoint p and q rounding can put the sum one ulp above ln 2.
    """
    m = 0.5 * (p + q)

    def kl_to_m(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    return min(max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0), math.log(2))


def jensen_shannon_samples(
    a: np.ndarray, b: np.ndarray, domain: list[list[float]], bins: int
) -> float:
    """Return the Jensen-Shannon divergence (nats) between histograms of two sample sets."""
    return jensen_shannon(histogram(a, domain, bins), histogram(b, domain, bins))


def wasserstein1(a: np.ndarray, b: np.ndarray, max_points: int, rng: np.random.Generator) -> float:
    """Return the exact Wasserstein-1 distance between equal-size random subsets of a and b.

    With n points on each side and uniform weights, the optimal transport plan is a
    permutation, so W1 is the mean Euclidean cost of the optimal assignment
    (``scipy.optimize.linear_sum_assignment``). The subsets have
    n = min(len(a), len(b), max_points) points, which adds a bias of order n^(-1/dim).
    """
    n = min(len(a), len(b), max_points)
    a = a[rng.choice(len(a), n, replace=False)] if len(a) > n else a
    b = b[rng.choice(len(b), n, replace=False)] if len(b) > n else b
    cost = cdist(a, b)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())
