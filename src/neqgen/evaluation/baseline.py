"""The trivial baseline that every model must beat: a Gaussian fitted to each frame."""

from __future__ import annotations

import numpy as np


def gaussian_per_frame(
    positions: np.ndarray, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Fit a Gaussian (mean and full covariance) to each frame and draw from it.

    Parameters
    ----------
    positions:
        Ensemble of shape (frames, particles, dim).
    n_samples:
        Samples drawn per frame.

    Returns
    -------
    np.ndarray
        Samples of shape (frames, n_samples, dim).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[1] < 2:
        raise ValueError(
            f"positions must have shape (frames, particles >= 2, dim), got {positions.shape}"
        )
    frames, _, dim = positions.shape
    samples = np.empty((frames, n_samples, dim))
    for frame in range(frames):
        mean = positions[frame].mean(0)
        covariance = np.atleast_2d(np.cov(positions[frame], rowvar=False))
        samples[frame] = rng.multivariate_normal(mean, covariance, size=n_samples)
    return samples
