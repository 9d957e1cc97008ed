"""Distances and divergences between sample sets and grid densities, with numpy and scipy only.

Sample sets are float arrays of shape (n, dim), one row per sample. A 1D array of shape (n,)
is read as n samples in one dimension. Functions with random steps (subsets, projection
directions) take ``rng``, which is passed to ``numpy.random.default_rng``. Pass a seed or a
Generator for reproducible results.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist, squareform

from neqgen.evaluation.metrics import jensen_shannon

# Upper bound on the entries of one block of projected samples in sliced_wasserstein
# (2**22 float64 values, 32 MiB per sample set), so memory does not grow with n_projections.
_MAX_PROJECTED_ENTRIES = 2**22

RandomSource = np.random.Generator | int | None


# ---------------------------------------------------------------------------------------------
# Optimal transport


def wasserstein(
    a: np.ndarray,
    b: np.ndarray,
    p: float = 1,
    max_exact_points: int = 2000,
    n_projections: int = 200,
    rng: RandomSource = None,
) -> float:
    r"""Compute the Wasserstein distance W_p between the empirical measures of two sample sets.

    Each set is a uniform measure on its points, and the cost of moving unit mass from x to y
    is |x - y|^p (Euclidean norm). The method depends on the dimension and the set sizes:

    - dim = 1: exact for any sizes, from the quantile functions F^{-1} and G^{-1},
      W_p^p = \int_0^1 |F^{-1}(u) - G^{-1}(u)|^p du. The monotone (sorted) coupling is
      optimal on the real line for every convex cost, so no assignment problem is solved.
    - dim >= 2 and both sets have at most ``max_exact_points`` points: exact for equal sizes.
      With n points on each side and uniform weights, an optimal plan is a permutation, found
      by ``scipy.optimize.linear_sum_assignment`` on the n x n cost matrix, and
      W_p^p is the mean cost of that assignment. For unequal sizes, the larger set is first
      replaced by a random subset (without replacement, drawn with ``rng``) of the smaller
      set's size, so the result is a random estimate, not the exact W_p of the full sets.
    - dim >= 2 and either set has more than ``max_exact_points`` points: the sliced
      Wasserstein distance SW_p of :func:`sliced_wasserstein`.

    NOTE: SW_p is a different distance with SW_p <= W_p, so values from the exact and the
    sliced branch are not comparable. For a translation by v in 2D, W_p = |v| but
    SW_2 = |v| / sqrt(2). Compare sample sets of equal sizes on the same side of
    ``max_exact_points``.

    Parameters
    ----------
    a, b:
        Sample sets of shapes (n, dim) and (m, dim), in the units of the coordinates.
    p:
        Order of the distance, a real number >= 1.
    max_exact_points:
        Largest set size for the exact assignment in dim >= 2. The assignment takes
        O(n^3) time and an n x n float64 cost matrix (32 MB at n = 2000).
    n_projections:
        Number of random directions for the sliced branch.
    rng:
        Seed or Generator for the subsample and the sliced directions.

    Returns
    -------
    float
        W_p (the p-th root of the optimal mean cost), in the units of the coordinates.

    Raises
    ------
    ValueError
        If a set is not of shape (n, dim) with n >= 1, contains NaN or infinity, the
        dimensions differ, p < 1, or ``max_exact_points`` or ``n_projections`` is below 1.
    """
    a, b = _validate_sample_pair(a, b, min_points=1)
    _validate_order(p)
    _validate_count(max_exact_points, "max_exact_points", minimum=1)
    _validate_count(n_projections, "n_projections", minimum=1)
    generator = np.random.default_rng(rng)

    if a.shape[1] == 1:
        return float(_wasserstein_1d_power(a, b, p)[0] ** (1 / p))

    if max(len(a), len(b)) > max_exact_points:
        return sliced_wasserstein(a, b, p, n_projections, generator)

    size = min(len(a), len(b))
    a = _subsample(a, size, generator)
    b = _subsample(b, size, generator)
    cost = cdist(a, b, "sqeuclidean") if p == 2 else cdist(a, b) ** p
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean() ** (1 / p))


def sliced_wasserstein(
    a: np.ndarray,
    b: np.ndarray,
    p: float = 1,
    n_projections: int = 200,
    rng: RandomSource = None,
) -> float:
    r"""Estimate the sliced Wasserstein distance SW_p between two sample sets.

    SW_p^p = E_u[W_p^p(u . a, u . b)], the mean over directions u drawn uniformly from the
    unit sphere of the 1D W_p^p between the projected sets (Bonneel, Rabin, Peyre and
    Pfister, "Sliced and Radon Wasserstein barycenters of measures", J. Math. Imaging Vis.
    51, 22-45, 2015). The expectation is a Monte Carlo mean over ``n_projections`` random
    directions, and each 1D W_p^p is exact (see :func:`wasserstein`), also for unequal set
    sizes. Projection is 1-Lipschitz, so SW_p <= W_p. In 2D a translation by v gives
    SW_p^p = |v|^p E|cos(theta)|^p, which is |v|^2 / 2 for p = 2.

    Parameters
    ----------
    a, b:
        Sample sets of shapes (n, dim) and (m, dim).
    p:
        Order of the distance, a real number >= 1.
    n_projections:
        Number of random unit directions. The Monte Carlo standard error of SW_p^p falls
        as n_projections^(-1/2).
    rng:
        Seed or Generator for the directions.

    Returns
    -------
    float
        SW_p (the p-th root of the mean), in the units of the coordinates.

    Raises
    ------
    ValueError
        On the invalid inputs listed in :func:`wasserstein`.
    """
    a, b = _validate_sample_pair(a, b, min_points=1)
    _validate_order(p)
    _validate_count(n_projections, "n_projections", minimum=1)
    generator = np.random.default_rng(rng)

    # Normalised standard normal vectors are uniform on the unit sphere.
    directions = generator.standard_normal((n_projections, a.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    batch_size = max(1, _MAX_PROJECTED_ENTRIES // max(len(a), len(b)))
    total = 0.0
    for start in range(0, n_projections, batch_size):
        batch = directions[start : start + batch_size]
        total += float(_wasserstein_1d_power(a @ batch.T, b @ batch.T, p).sum())
    return (total / n_projections) ** (1 / p)


def _wasserstein_1d_power(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    """Return W_p^p between the columns of x (n, k) and y (m, k), as an array of shape (k,).

    The quantile functions are step functions with steps at multiples of 1/n and 1/m. On each
    interval between consecutive steps of either, both are constant, so the integral is a
    finite sum. Steps are kept as integers in units of 1/(n m) so that coinciding steps merge
    exactly.
    """
    x = np.sort(x, axis=0)
    y = np.sort(y, axis=0)
    n, m = len(x), len(y)
    if n == m:
        return np.mean(np.abs(x - y) ** p, axis=0)

    steps = np.union1d(np.arange(1, n + 1) * m, np.arange(1, m + 1) * n)
    lower = np.concatenate(([0], steps[:-1]))
    weights = (steps - lower) / (n * m)
    # At the interval midpoint u = (lower + steps) / (2 n m), the index of F^{-1}(u) among the
    # sorted x is floor(u n) and that of G^{-1}(u) among the sorted y is floor(u m).
    x_index = (lower + steps) // (2 * m)
    y_index = (lower + steps) // (2 * n)
    return weights @ (np.abs(x[x_index] - y[y_index]) ** p)


# ---------------------------------------------------------------------------------------------
# Kernel and distance statistics


def mmd(
    a: np.ndarray,
    b: np.ndarray,
    bandwidth: float | None = None,
    max_points: int = 2000,
    rng: RandomSource = None,
) -> float:
    r"""Compute the unbiased estimate of the squared maximum mean discrepancy, MMD_u^2.

    With the Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)) and sets x of size m and
    y of size n (Gretton, Borgwardt, Rasch, Schoelkopf and Smola, "A Kernel Two-Sample
    Test", JMLR 13, 723-773, 2012, Lemma 6),

    .. math::

        MMD_u^2 = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
                + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j)
                - \frac{2}{m n} \sum_{i, j} k(x_i, y_j).

    The estimate is unbiased, so it scatters around 0 when both sets come from one
    distribution and can be negative. Under that null hypothesis its spread shrinks as
    1/n, not 1/sqrt(n).

    Parameters
    ----------
    a, b:
        Sample sets of shapes (m, dim) and (n, dim).
    bandwidth:
        Kernel width sigma, in the units of the coordinates. None uses the median
        heuristic: sigma is the median Euclidean distance between distinct points of the
        pooled (subsampled) sets, so the result does not change when both sets are scaled.
    max_points:
        Each set larger than this is replaced by a random subset of this size (without
        replacement, drawn with ``rng``). Time and memory grow as (m + n)^2. With 2000
        points per set the measured peak was about 260 MB (tracemalloc, numpy 2.4).
    rng:
        Seed or Generator for the subsets.

    Returns
    -------
    float
        MMD_u^2, dimensionless (the kernel is bounded by 1).

    Raises
    ------
    ValueError
        If a set is not of shape (n, dim) with n >= 2, contains NaN or infinity, the
        dimensions differ, ``max_points`` < 2, ``bandwidth`` is not a positive finite
        number, or the median heuristic gives 0 (more than half of the pooled pairs
        coincide).
    """
    a, b = _validate_sample_pair(a, b, min_points=2)
    _validate_count(max_points, "max_points", minimum=2)
    generator = np.random.default_rng(rng)
    a = _subsample(a, max_points, generator)
    b = _subsample(b, max_points, generator)

    squared_distances = pdist(np.concatenate((a, b)), "sqeuclidean")
    if bandwidth is None:
        bandwidth = float(np.median(np.sqrt(squared_distances)))
        if bandwidth == 0:
            raise ValueError(
                "median heuristic bandwidth is 0 because more than half of the pooled sample "
                "pairs coincide; pass a positive bandwidth explicitly"
            )
    elif not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive finite number or None, got {bandwidth}")

    # squareform leaves zeros on the diagonal, so the block sums skip the i = j terms.
    kernel = squareform(np.exp(-squared_distances / (2 * bandwidth**2)))
    within_a, within_b, cross = _pooled_block_means(kernel, len(a))
    return within_a + within_b - 2 * cross


def energy_distance(
    a: np.ndarray,
    b: np.ndarray,
    max_points: int = 2000,
    rng: RandomSource = None,
) -> float:
    r"""Estimate the energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between two sample sets.

    X, X' are independent draws from the distribution of ``a`` and Y, Y' from that of ``b``,
    with Euclidean norms (Szekely and Rizzo, "Energy statistics: A class of statistics based
    on distances", J. Stat. Plan. Inference 143, 1249-1272, 2013). For distributions with
    finite means, the population value is >= 0 and is 0 only for equal distributions. With
    sets x of size m and y of size n, the estimate is

    .. math::

        \frac{2}{m n} \sum_{i, j} |x_i - y_j|
        - \frac{1}{m(m-1)} \sum_{i \ne j} |x_i - x_j|
        - \frac{1}{n(n-1)} \sum_{i \ne j} |y_i - y_j|,

    whose within-set terms are unbiased U-statistics. It can be negative. For two copies
    of one set of n points it equals -2/n times the mean distance between distinct points,
    not 0. This is the squared form. ``scipy.stats.energy_distance`` (1D only, checked with
    scipy 1.17) returns the square root of the version that includes the i = j terms.

    Parameters
    ----------
    a, b:
        Sample sets of shapes (m, dim) and (n, dim).
    max_points:
        Each set larger than this is replaced by a random subset of this size (without
        replacement, drawn with ``rng``). Time and memory grow as (m + n)^2. With 2000
        points per set the measured peak was about 190 MB (tracemalloc, numpy 2.4).
    rng:
        Seed or Generator for the subsets.

    Returns
    -------
    float
        The energy distance, in the units of the coordinates.

    Raises
    ------
    ValueError
        If a set is not of shape (n, dim) with n >= 2, contains NaN or infinity, the
        dimensions differ, or ``max_points`` < 2.
    """
    a, b = _validate_sample_pair(a, b, min_points=2)
    _validate_count(max_points, "max_points", minimum=2)
    generator = np.random.default_rng(rng)
    a = _subsample(a, max_points, generator)
    b = _subsample(b, max_points, generator)

    distances = squareform(pdist(np.concatenate((a, b))))
    within_a, within_b, cross = _pooled_block_means(distances, len(a))
    return 2 * cross - within_a - within_b


def _pooled_block_means(matrix: np.ndarray, split: int) -> tuple[float, float, float]:
    """Return the off-diagonal means of the two diagonal blocks and the mean of the cross block.

    ``matrix`` is symmetric over the pooled set with zeros on its diagonal, and its first
    ``split`` rows belong to the first set.
    """
    m = split
    n = len(matrix) - split
    within_first = float(matrix[:m, :m].sum()) / (m * (m - 1))
    within_second = float(matrix[m:, m:].sum()) / (n * (n - 1))
    cross = float(matrix[:m, m:].mean())
    return within_first, within_second, cross


# ---------------------------------------------------------------------------------------------
# Grid densities


def kl_divergence(
    p: np.ndarray, q: np.ndarray, cell_volume: float | np.ndarray, eps: float = 1e-12
) -> float:
    r"""Compute the Kullback-Leibler divergence KL(p || q) of two densities on one grid, in nats.

    .. math::

        KL(p || q) = \sum_{cells, p > 0} V p \ln(p / \max(q, \epsilon)),

    with V the cell volume. Cells with p = 0 contribute 0. The exact divergence is infinite
    when q = 0 < p somewhere, so q is floored at ``eps``, which keeps the result finite:
    each such cell contributes V p ln(p / eps) instead. Neither density is renormalised.
    The result is >= 0 when both integrate to 1, but it can be negative when p integrates
    to less than q does (for example a histogram of samples with some outside the grid).

    Parameters
    ----------
    p, q:
        Densities of one shape (any number of dimensions), >= 0, in inverse units of
        ``cell_volume``. With ``cell_volume=1`` they are probability vectors.
    cell_volume:
        Volume of each cell, a positive number or an array that broadcasts to the shape of
        ``p`` (such as the one returned by :func:`histogram_density`).
    eps:
        Density floor for q, in the units of q. The result depends on it wherever
        q < eps and p > 0.

    Returns
    -------
    float
        KL(p || q) in nats.

    Raises
    ------
    ValueError
        If p and q differ in shape, contain negative values, NaN or infinity,
        ``cell_volume`` is not positive or does not broadcast to their shape, or ``eps`` is
        not a positive finite number.
    """
    p, q, volume = _validate_densities(p, q, cell_volume)
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive finite number, got {eps}")

    support = p > 0
    ratio = p[support] / np.maximum(q[support], eps)
    return float(np.sum(volume[support] * p[support] * np.log(ratio)))


def jensen_shannon_density(p: np.ndarray, q: np.ndarray, cell_volume: float | np.ndarray) -> float:
    """Compute the Jensen-Shannon divergence of two densities on one grid, in nats.

    JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2, summed over cells with
    weights ``cell_volume`` as in :func:`kl_divergence`. m > 0 wherever p > 0 or q > 0, so
    no floor is needed and the result is always finite. It is symmetric, and it lies in
    [0, ln 2] when p and q each integrate to 1, with ln 2 for disjoint supports. It equals
    :func:`neqgen.evaluation.metrics.jensen_shannon` of the cell masses p V and q V.

    Parameters
    ----------
    p, q:
        Densities of one shape (any number of dimensions), >= 0.
    cell_volume:
        Volume of each cell, a positive number or an array that broadcasts to the shape of
        ``p``.

    Returns
    -------
    float
        JS(p, q) in nats.

    Raises
    ------
    ValueError
        On the invalid inputs listed in :func:`kl_divergence`.
    """
    p, q, volume = _validate_densities(p, q, cell_volume)
    return jensen_shannon((p * volume).ravel(), (q * volume).ravel())


def histogram_density(
    samples: np.ndarray, edges: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the density of a sample set on a grid of bins, for comparison with a grid density.

    density = counts / (n V) for each cell of volume V, so sum(density * cell_volume) is the
    fraction of the n samples inside the grid (1 when all are inside). Bins are half-open,
    [e_i, e_{i+1}), except that the last bin of each dimension also contains its right edge,
    as in ``numpy.histogramdd``.

    Parameters
    ----------
    samples:
        Sample set of shape (n, dim).
    edges:
        One strictly increasing 1D array of bin edges per dimension (dim arrays, each of
        length >= 2). Edges need not be evenly spaced.

    Returns
    -------
    density : np.ndarray
        Shape (len(edges[0]) - 1, ..., len(edges[-1]) - 1), in inverse units of volume.
    cell_volume : np.ndarray
        Volume of each cell, same shape as ``density``, for :func:`kl_divergence` and
        :func:`jensen_shannon_density`.

    Raises
    ------
    ValueError
        If ``samples`` is not of shape (n, dim) with n >= 1 or contains NaN or infinity,
        ``edges`` does not have one entry per dimension, or an edge array is not 1D,
        has fewer than 2 entries, is not finite or is not strictly increasing.
    """
    samples = _as_samples(samples, "samples", min_points=1)
    dim = samples.shape[1]
    if len(edges) != dim:
        raise ValueError(
            f"edges must contain one array of bin edges per dimension: samples have {dim} "
            f"dimensions but {len(edges)} edge arrays were given"
        )
    edge_arrays = [_validate_edges(edge, axis) for axis, edge in enumerate(edges)]

    counts, _ = np.histogramdd(samples, bins=edge_arrays)
    cell_volume = functools.reduce(np.multiply.outer, [np.diff(edge) for edge in edge_arrays])
    return counts / (len(samples) * cell_volume), cell_volume


# ---------------------------------------------------------------------------------------------
# Wells


def well_populations(samples: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Compute the fraction of samples whose nearest well centre (Euclidean) is each centre.

    A sample at equal distance from several centres counts for the first of them.

    Parameters
    ----------
    samples:
        Sample set of shape (n, dim).
    centers:
        Well centres of shape (n_wells, dim).

    Returns
    -------
    np.ndarray
        Shape (n_wells,), non-negative fractions that sum to 1.

    Raises
    ------
    ValueError
        If either array is not of shape (rows, dim) with at least one row, contains NaN or
        infinity, or the dimensions differ.
    """
    samples, centers = _validate_samples_and_centers(samples, centers)
    labels = _nearest_center(samples, centers)
    return np.bincount(labels, minlength=len(centers)) / len(samples)


def angular_lag(
    samples: np.ndarray, centers: np.ndarray, potential_minimum_angles: np.ndarray
) -> np.ndarray:
    """Compute, per well, the angle by which the well's samples trail the potential minimum.

    Each sample is assigned to its nearest centre as in :func:`well_populations`. A well's
    centre-of-mass angle is phi_com = atan2(mean y, mean x) of its samples, so samples far
    from the origin weigh more than with a circular mean of their angles. The result is
    phi_min - phi_com, wrapped to (-pi, pi].

    Sign convention: angles are measured counter-clockwise from the +x axis, as in atan2.
    A positive value means the centre of mass is clockwise of the minimum, which is behind
    it when the minima rotate counter-clockwise (omega > 0 in
    :class:`neqgen.systems.RotatingWells`). A negative value means it is ahead. For
    clockwise rotation, flip the sign to read the result as a lag.

    Parameters
    ----------
    samples:
        Sample set of shape (n, 2), positions relative to the rotation centre at the origin.
    centers:
        Well centres of shape (n_wells, 2) that define the assignment, for example
        ``RotatingWells.minima(t)``.
    potential_minimum_angles:
        Shape (n_wells,), the angle of each well's potential minimum in radians, in the same
        order as ``centers``.

    Returns
    -------
    np.ndarray
        Shape (n_wells,), in radians in (-pi, pi]. NaN for a well with no samples.

    Raises
    ------
    ValueError
        If ``samples`` or ``centers`` is not of shape (rows, 2) with at least one row or
        contains NaN or infinity, or ``potential_minimum_angles`` is not finite or does not
        have shape (n_wells,).
    """
    samples, centers = _validate_samples_and_centers(samples, centers)
    if samples.shape[1] != 2:
        raise ValueError(
            f"angular_lag needs 2D positions, but samples have {samples.shape[1]} dimensions"
        )
    minimum_angles = np.asarray(potential_minimum_angles, dtype=float)
    if minimum_angles.shape != (len(centers),):
        raise ValueError(
            f"potential_minimum_angles must have shape ({len(centers)},), one angle per "
            f"centre, got shape {minimum_angles.shape}"
        )
    if not np.all(np.isfinite(minimum_angles)):
        raise ValueError("potential_minimum_angles contains NaN or infinity")

    labels = _nearest_center(samples, centers)
    n_wells = len(centers)
    counts = np.bincount(labels, minlength=n_wells)
    # atan2 ignores the positive factor 1 / count, so sums give the angle of the mean.
    sum_x = np.bincount(labels, weights=samples[:, 0], minlength=n_wells)
    sum_y = np.bincount(labels, weights=samples[:, 1], minlength=n_wells)
    lag = _wrap_angle(minimum_angles - np.arctan2(sum_y, sum_x))
    lag[counts == 0] = np.nan
    return lag


def _nearest_center(samples: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Return the index of the nearest centre for each sample, shape (n,)."""
    return np.argmin(cdist(samples, centers, "sqeuclidean"), axis=1)


def _wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Map angles in radians to (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)


# ---------------------------------------------------------------------------------------------
# Input checks and subsampling


def _as_samples(values: np.ndarray, name: str, min_points: int) -> np.ndarray:
    """Return values as a float array of shape (n, dim), or raise ValueError."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (n, dim) with one row per sample, got shape {array.shape}"
        )
    if len(array) < min_points:
        raise ValueError(
            f"{name} must have at least {min_points} rows (samples), got {len(array)}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} contains {np.count_nonzero(~np.isfinite(array))} NaN or infinite "
            "values; drop or fix those rows first"
        )
    return array


def _validate_sample_pair(
    a: np.ndarray, b: np.ndarray, min_points: int
) -> tuple[np.ndarray, np.ndarray]:
    a = _as_samples(a, "a", min_points)
    b = _as_samples(b, "b", min_points)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same dimension, got a of shape {a.shape} and b of "
            f"shape {b.shape}"
        )
    return a, b


def _validate_samples_and_centers(
    samples: np.ndarray, centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    samples = _as_samples(samples, "samples", min_points=1)
    centers = _as_samples(centers, "centers", min_points=1)
    if samples.shape[1] != centers.shape[1]:
        raise ValueError(
            f"samples and centers must have the same dimension, got samples of shape "
            f"{samples.shape} and centers of shape {centers.shape}"
        )
    return samples, centers


def _validate_order(p: float) -> None:
    if not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1 (1 for W1, 2 for W2), got {p}")


def _validate_count(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _validate_densities(
    p: np.ndarray, q: np.ndarray, cell_volume: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return p, q and cell_volume broadcast to their shape as float arrays, or raise."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    if p.shape != q.shape:
        raise ValueError(
            f"p and q must be densities on the same grid, got shapes {p.shape} and {q.shape}"
        )
    for name, density in (("p", p), ("q", q)):
        if not np.all(np.isfinite(density)):
            raise ValueError(f"{name} contains NaN or infinity")
        if np.any(density < 0):
            raise ValueError(f"{name} must be >= 0, but its minimum is {density.min()}")
    volume = np.asarray(cell_volume, dtype=float)
    try:
        volume = np.broadcast_to(volume, p.shape)
    except ValueError:
        raise ValueError(
            f"cell_volume of shape {volume.shape} does not broadcast to the density shape "
            f"{p.shape}; pass a number or an array of per-cell volumes"
        ) from None
    if not np.all(np.isfinite(volume) & (volume > 0)):
        raise ValueError(
            f"cell_volume must be positive and finite in every cell, but its minimum is "
            f"{volume.min()} and its maximum {volume.max()}"
        )
    return p, q, volume


def _validate_edges(edge: np.ndarray, axis: int) -> np.ndarray:
    array = np.asarray(edge, dtype=float)
    if array.ndim != 1 or len(array) < 2:
        raise ValueError(
            f"edges[{axis}] must be a 1D array of at least 2 bin edges, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"edges[{axis}] contains NaN or infinity")
    if not np.all(np.diff(array) > 0):
        raise ValueError(f"edges[{axis}] must be strictly increasing, got {array}")
    return array


def _subsample(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a random subset of ``size`` rows (without replacement), or all rows if fewer."""
    if len(points) <= size:
        return points
    return points[rng.choice(len(points), size, replace=False)]
