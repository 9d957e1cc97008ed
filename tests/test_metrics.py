"""Sample-based distances between ensembles."""

from __future__ import annotations

import math

import numpy as np

from neqgen.evaluation.frames import evaluation_frames
from neqgen.evaluation.metrics import (
    histogram,
    jensen_shannon,
    jensen_shannon_samples,
    wasserstein1,
)

DOMAIN = [[-1.0, 1.0], [-1.0, 1.0]]


def test_jensen_shannon_of_identical_samples_is_zero():
    samples = np.random.default_rng(0).uniform(-1, 1, size=(500, 2))

    assert jensen_shannon_samples(samples, samples, DOMAIN, 10) == 0.0


def test_jensen_shannon_of_disjoint_supports_is_ln2():
    left = np.random.default_rng(0).uniform([-1, -1], [-0.5, 1], size=(500, 2))
    right = np.random.default_rng(1).uniform([0.5, -1], [1, 1], size=(500, 2))

    assert math.isclose(jensen_shannon_samples(left, right, DOMAIN, 10), math.log(2))


def test_jensen_shannon_matches_closed_form():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.0, 0.5, 0.5])
    # m = (1/4, 1/2, 1/4): KL(p || m) = KL(q || m) = 0.5 ln 2.
    assert math.isclose(jensen_shannon(p, q), 0.5 * math.log(2))


def test_histogram_keeps_mass_outside_domain():
    samples = np.array([[0.0, 0.0], [5.0, 0.0], [0.2, -0.3], [-9.0, 9.0]])

    counts = histogram(samples, DOMAIN, 4)

    assert math.isclose(counts.sum(), 1.0)
    assert math.isclose(counts[-1], 0.5)


def test_wasserstein1_of_translation_is_shift_length():
    # Translating every point by v moves mass exactly |v|, and no plan does better because
    # W1 >= |mean(a) - mean(b)|.
    points = np.random.default_rng(0).normal(size=(300, 2))
    shift = np.array([0.3, -0.4])

    distance = wasserstein1(points, points + shift, 1000, np.random.default_rng(0))

    assert math.isclose(distance, 0.5, rel_tol=1e-9)


def test_wasserstein1_subsamples_large_sets():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3000, 2)), rng.normal(size=(2500, 2))

    distance = wasserstein1(a, b, 200, np.random.default_rng(1))

    # Two samples of 200 points from one Gaussian are about 0.2 apart in W1, never 1.
    assert 0.0 < distance < 0.5


def test_evaluation_frames_dense_early_then_strided():
    times = np.linspace(0.0, 10.0, 101)

    frames = evaluation_frames(times, stride=10, dense_until=0.5)

    assert frames.tolist() == [0, 1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
