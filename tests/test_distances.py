"""Distances between sample sets, divergences between grid densities, and well statistics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import wasserstein_distance

from neqgen.evaluation.distances import (
    angular_lag,
    energy_distance,
    histogram_density,
    jensen_shannon_density,
    kl_divergence,
    mmd,
    sliced_wasserstein,
    wasserstein,
    well_populations,
)


def permutation_spread(statistic, a, b, rng, n_splits=50):
    """Return the standard deviation of statistic over random re-splits of the pooled sets.

    The re-splits follow the distribution of the statistic when both sets come from one
    distribution, so this estimates its standard error under that null hypothesis.
    """
    pooled = np.concatenate((a, b))
    values = []
    for _ in range(n_splits):
        order = rng.permutation(len(pooled))
        values.append(statistic(pooled[order[: len(a)]], pooled[order[len(a) :]]))
    return float(np.std(values))


def mean_over_all_splits(statistic, pooled, size):
    """Return the mean of statistic over every split of pooled into sets of size and the rest."""
    values = []
    for chosen in itertools.combinations(range(len(pooled)), size):
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(chosen)] = True
        values.append(statistic(pooled[mask], pooled[~mask]))
    return float(np.mean(values))


def rotate(points, angle):
    """Rotate 2D points counter-clockwise about the origin by angle (radians)."""
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


# Wasserstein


@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_translation_is_shift_length(p):
    # Moving every point by v costs |v|^p per unit mass, and no plan does better because
    # W_p >= W_1 >= |mean(a) - mean(b)| = |v|.
    points = np.random.default_rng(0).normal(size=(300, 2))
    shift = np.array([0.3, -0.4])

    distance = wasserstein(points, points + shift, p=p)

    assert math.isclose(distance, 0.5, rel_tol=1e-9)


def test_wasserstein_1d_gaussians_closed_form():
    # W2(N(m1, s1^2), N(m2, s2^2))^2 = (m1 - m2)^2 + (s1 - s2)^2 in 1D. The estimate's error is
    # dominated by the sampling error of the means and standard deviations, of order
    # sqrt(s1^2 / n + s2^2 / m), and the tolerance is 5 times that.
    rng = np.random.default_rng(0)
    n, m = 20000, 15000
    a = rng.normal(0.0, 1.0, size=n)
    b = rng.normal(3.0, 2.0, size=m)
    expected = math.sqrt(3.0**2 + 1.0**2)
    tolerance = 5 * math.sqrt(1.0**2 / n + 2.0**2 / m)

    distance = wasserstein(a, b, p=2)

    assert abs(distance - expected) < tolerance


def test_wasserstein_1d_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=37)
    b = rng.exponential(size=53)

    distance = wasserstein(a[:, None], b[:, None], p=1)

    assert math.isclose(distance, wasserstein_distance(a, b), rel_tol=1e-12)


def test_wasserstein_1d_unequal_sizes_by_hand():
    # The quantile functions of {0, 1} and {0, 1, 2} differ by 1 on (1/3, 1/2] and (2/3, 1],
    # a total length of 1/2, and agree elsewhere.
    a = np.array([0.0, 1.0])
    b = np.array([0.0, 1.0, 2.0])

    assert math.isclose(wasserstein(a, b, p=1), 0.5, rel_tol=1e-12)
    assert math.isclose(wasserstein(a, b, p=2), math.sqrt(0.5), rel_tol=1e-12)


def test_wasserstein_unequal_sizes_subsamples():
    # All points of a coincide, so every subsample of a gives the same exact value.
    a = np.tile([0.5, -1.0], (300, 1))
    b = np.random.default_rng(2).normal(size=(200, 2))
    expected = math.sqrt(np.mean(np.sum((b - a[0]) ** 2, axis=1)))

    assert math.isclose(wasserstein(a, b, p=2, rng=0), expected, rel_tol=1e-9)
    assert math.isclose(wasserstein(b, a, p=2, rng=0), expected, rel_tol=1e-9)


def test_wasserstein_large_sets_use_sliced():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(250, 2))

    distance = wasserstein(a, b, p=2, max_exact_points=100, n_projections=50, rng=7)

    assert distance == sliced_wasserstein(a, b, p=2, n_projections=50, rng=7)


def test_sliced_translation_in_2d():
    # Each projection moves by v.u, so SW_2^2 is the mean of |v|^2 cos^2(theta) over the
    # directions: |v|^2 / 2 in expectation, with standard deviation |v|^2 sqrt(1/8) per
    # direction (Var cos^2 = 3/8 - 1/4). The tolerance is 4 standard errors.
    points = np.random.default_rng(4).normal(size=(1000, 2))
    shift = np.array([0.3, -0.4])
    n_projections = 2000
    tolerance = 4 * 0.25 * math.sqrt(1 / 8 / n_projections)

    distance = sliced_wasserstein(points, points + shift, p=2, n_projections=n_projections, rng=5)

    assert abs(distance**2 - 0.25 / 2) < tolerance


def test_sliced_not_above_exact():
    # Projection onto a unit vector is 1-Lipschitz, so every projected W_p is <= W_p.
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(200, 2)), rng.uniform(-1, 2, size=(200, 2))

    for p in (1, 2):
        assert sliced_wasserstein(a, b, p=p, rng=8) <= wasserstein(a, b, p=p)


def test_wasserstein_rejects_invalid_input():
    points = np.zeros((5, 2))

    with pytest.raises(ValueError, match="same dimension"):
        wasserstein(points, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="p must be"):
        wasserstein(points, points, p=0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        wasserstein(points, np.full((5, 2), np.nan))


# MMD and energy distance


def test_mmd_same_distribution_near_zero():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    spread = permutation_spread(mmd, a, b, rng)

    assert abs(mmd(a, b)) < 4 * spread


def test_mmd_shifted_clearly_positive():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + [1.0, 0.0]
    spread = permutation_spread(mmd, a, b, rng)

    assert mmd(a, b) > 10 * spread


def test_mmd_unbiased_over_all_splits():
    # Every pair of distinct pooled points is equally likely to be within a set or across the
    # sets, so an unbiased estimate averages to exactly 0 over all splits. The biased
    # estimate with i = j terms would average to a positive value.
    pooled = np.random.default_rng(12).normal(size=(8, 2))

    assert abs(mean_over_all_splits(mmd, pooled, 4)) < 1e-12


def test_mmd_by_hand():
    # Within a: k(0, 1) = e^(-1/2). Within b: k(0, 2) = e^(-2). Across: (1 + e^(-2) + 2
    # e^(-1/2)) / 4. MMD_u^2 = e^(-1/2) + e^(-2) - (1 + e^(-2) + 2 e^(-1/2)) / 2.
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.0], [2.0]])

    assert math.isclose(mmd(a, b, bandwidth=1.0), (math.exp(-2) - 1) / 2, rel_tol=1e-12)


def test_mmd_median_heuristic_bandwidth():
    rng = np.random.default_rng(13)
    a, b = rng.normal(size=(40, 2)), rng.normal(size=(30, 2))
    median = float(np.median(pdist(np.concatenate((a, b)))))

    assert math.isclose(mmd(a, b), mmd(a, b, bandwidth=median), rel_tol=1e-12)


def test_mmd_rejects_degenerate_median():
    points = np.zeros((10, 2))

    with pytest.raises(ValueError, match="pass a positive bandwidth"):
        mmd(points, points)


def test_energy_same_distribution_near_zero():
    rng = np.random.default_rng(20)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    spread = permutation_spread(energy_distance, a, b, rng)

    assert abs(energy_distance(a, b)) < 4 * spread


def test_energy_shifted_clearly_positive():
    rng = np.random.default_rng(21)
    a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + [1.0, 0.0]
    spread = permutation_spread(energy_distance, a, b, rng)

    assert energy_distance(a, b) > 10 * spread


def test_energy_identical_sets():
    # With S the sum of |x_i - x_j| over i != j, the cross term is 2 S / n^2 and the two
    # within terms are S / (n (n - 1)) each, which leaves -2 S / (n^2 (n - 1)).
    points = np.random.default_rng(22).normal(size=(50, 2))
    n = len(points)
    expected = -2 / n * float(np.mean(pdist(points)))

    assert math.isclose(energy_distance(points, points), expected, rel_tol=1e-12)


def test_energy_unbiased_over_all_splits():
    pooled = np.random.default_rng(23).normal(size=(8, 2))

    assert abs(mean_over_all_splits(energy_distance, pooled, 4)) < 1e-12


def test_energy_by_hand():
    # Across: (3 + 5 + 2 + 4) / 4 = 3.5. Within a: 1. Within b: 2. So 2 * 3.5 - 1 - 2 = 4.
    a = np.array([[0.0], [1.0]])
    b = np.array([[3.0], [5.0]])

    assert math.isclose(energy_distance(a, b), 4.0, rel_tol=1e-12)


def test_energy_subsamples_to_max_points():
    rng = np.random.default_rng(24)
    a, b = rng.normal(size=(500, 2)), rng.normal(size=(400, 2))

    capped = energy_distance(a, b, max_points=100, rng=3)

    assert capped == energy_distance(a, b, max_points=100, rng=3)
    assert capped != energy_distance(a, b)


# Grid densities


def test_kl_of_equal_densities_is_zero():
    density = np.random.default_rng(30).uniform(size=(4, 5))

    assert kl_divergence(density, density, cell_volume=0.1) == 0.0


def test_kl_discrete_by_hand():
    p = np.array([0.5, 0.5])
    q = np.array([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)

    assert math.isclose(kl_divergence(p, q, cell_volume=1.0), expected, rel_tol=1e-12)


def test_kl_density_matches_discrete():
    # Densities P / V on cells of volume V give the same divergence as the masses P.
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.2, 0.6])
    volume = 0.25

    density_kl = kl_divergence(p / volume, q / volume, cell_volume=volume)

    assert math.isclose(density_kl, kl_divergence(p, q, cell_volume=1.0), rel_tol=1e-12)


def test_kl_floor_keeps_result_finite():
    # q = 0 where p = 1, so the floor replaces q there: 1 * ln(1 / 1e-12).
    p = np.array([1.0, 0.0])
    q = np.array([0.0, 1.0])

    assert math.isclose(kl_divergence(p, q, 1.0, eps=1e-12), 12 * math.log(10), rel_tol=1e-12)


def test_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same grid"):
        kl_divergence(np.ones(3), np.ones(4), cell_volume=1.0)


def test_js_symmetric():
    rng = np.random.default_rng(31)
    p, q = rng.uniform(size=(6, 6)), rng.uniform(size=(6, 6))
    volume = 0.5
    p /= p.sum() * volume
    q /= q.sum() * volume

    assert jensen_shannon_density(p, q, volume) == jensen_shannon_density(q, p, volume)


def test_js_bounded_by_ln2():
    rng = np.random.default_rng(32)
    volume = 0.5
    for _ in range(20):
        # Sparse densities reach far into the range up to ln 2.
        p = rng.uniform(size=16) * (rng.uniform(size=16) < 0.3)
        q = rng.uniform(size=16) * (rng.uniform(size=16) < 0.3)
        p[0], q[-1] = 1.0, 1.0
        p /= p.sum() * volume
        q /= q.sum() * volume

        divergence = jensen_shannon_density(p, q, volume)

        assert 0.0 <= divergence <= math.log(2) + 1e-12


def test_js_disjoint_supports_is_ln2():
    p = np.array([[2.0, 0.0], [0.0, 0.0]])
    q = np.array([[0.0, 0.0], [0.0, 2.0]])

    assert math.isclose(jensen_shannon_density(p, q, 0.5), math.log(2), rel_tol=1e-12)


def test_histogram_density_integrates_to_one():
    samples = np.random.default_rng(40).uniform(0, 1, size=(1000, 2))
    edges = [np.array([0.0, 0.1, 0.5, 1.0]), np.array([0.0, 0.3, 0.35, 0.9, 1.0])]

    density, cell_volume = histogram_density(samples, edges)

    assert density.shape == (3, 4)
    assert math.isclose(np.sum(density * cell_volume), 1.0, rel_tol=1e-12)


def test_histogram_density_fraction_inside():
    samples = np.array([[0.2], [0.7], [0.9], [1.5]])

    density, cell_volume = histogram_density(samples, [np.array([0.0, 0.5, 1.0])])

    assert math.isclose(np.sum(density * cell_volume), 0.75, rel_tol=1e-12)


def test_histogram_density_divides_by_cell_volume():
    # One sample in each of the three cells, of widths 0.5, 1 and 2.
    samples = np.array([[0.25], [1.0], [3.0]])

    density, cell_volume = histogram_density(samples, [np.array([0.0, 0.5, 1.5, 3.5])])

    np.testing.assert_allclose(cell_volume, [0.5, 1.0, 2.0])
    np.testing.assert_allclose(density, [1 / 1.5, 1 / 3, 1 / 6])


def test_histogram_density_close_to_exact():
    # For n samples in K cells, 2 n KL(histogram || exact) is the G statistic, which is close
    # to chi-squared with K - 1 degrees of freedom. The bound is its mean plus 5 standard
    # deviations, sqrt(2 (K - 1)).
    n, bins = 20000, 10
    samples = np.random.default_rng(41).uniform(0, 1, size=(n, 2))
    edges = [np.linspace(0, 1, bins + 1)] * 2
    density, cell_volume = histogram_density(samples, edges)
    exact = np.ones_like(density)
    dof = bins**2 - 1

    divergence = kl_divergence(density, exact, cell_volume)

    assert 0.0 <= divergence < (dof + 5 * math.sqrt(2 * dof)) / (2 * n)


def test_histogram_density_rejects_unsorted_edges():
    with pytest.raises(ValueError, match="strictly increasing"):
        histogram_density(np.zeros((3, 1)), [np.array([0.0, 1.0, 0.5])])


# Wells


def test_well_populations_of_points_at_centres():
    centers = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    samples = centers[[0, 0, 1, 0]]

    np.testing.assert_array_equal(well_populations(samples, centers), [0.75, 0.25, 0.0])


FIVE_WELL_ANGLES = (math.pi + 2 * math.pi * np.arange(5)) / 5
FIVE_WELL_CENTERS = 0.5 * np.column_stack((np.cos(FIVE_WELL_ANGLES), np.sin(FIVE_WELL_ANGLES)))


def symmetric_clusters(centers, rng, size=50, scale=0.05):
    """Return Gaussian clusters around each centre whose means are the centres exactly."""
    offsets = rng.normal(scale=scale, size=(size, 2))
    offsets = np.concatenate((offsets, -offsets))
    return np.concatenate([center + offsets for center in centers])


@pytest.mark.parametrize("rotation", [-0.2, 0.2])
def test_angular_lag_of_rotated_clusters(rotation):
    # Rotating clockwise (negative angle) puts the ensemble behind a counter-clockwise
    # minimum, which is a positive lag.
    samples = rotate(symmetric_clusters(FIVE_WELL_CENTERS, np.random.default_rng(50)), rotation)

    lag = angular_lag(samples, FIVE_WELL_CENTERS, FIVE_WELL_ANGLES)

    np.testing.assert_allclose(lag, np.full(5, -rotation), atol=1e-12)


def test_angular_lag_wraps_across_pi():
    # Angles 3 and -3 are 2 pi - 6 (about 0.28) apart across the negative x axis.
    gap = 2 * math.pi - 6.0
    center = np.array([[math.cos(3.0), math.sin(3.0)]])
    ahead = np.array([[math.cos(-3.0), math.sin(-3.0)]])

    assert math.isclose(angular_lag(ahead, center, np.array([3.0]))[0], -gap, rel_tol=1e-9)
    assert math.isclose(angular_lag(center, ahead, np.array([-3.0]))[0], gap, rel_tol=1e-9)


def test_angular_lag_half_turn_is_pi():
    # A half turn is +pi whichever way it is measured, because the range is (-pi, pi].
    samples = np.array([[-1.0, 0.0]])

    assert angular_lag(samples, samples, np.array([0.0]))[0] == math.pi


def test_angular_lag_of_empty_well_is_nan():
    samples = symmetric_clusters(FIVE_WELL_CENTERS[:1], np.random.default_rng(51))

    lag = angular_lag(samples, FIVE_WELL_CENTERS, FIVE_WELL_ANGLES)

    assert abs(lag[0]) < 1e-12
    assert np.all(np.isnan(lag[1:]))
