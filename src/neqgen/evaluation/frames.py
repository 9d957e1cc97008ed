"""Per-frame scores of a sample set against the held-out reference ensemble."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from neqgen.evaluation.metrics import jensen_shannon_samples, wasserstein1

METRICS = ("jsd", "w1")


def evaluation_frames(n_frames: int, stride: int) -> np.ndarray:
    """Return every stride-th frame index, always including the last frame."""
    if stride < 1:
        raise ValueError(f"evaluation.frame_stride must be at least 1, got {stride}")
    frames = np.arange(0, n_frames, stride)
    if frames[-1] != n_frames - 1:
        frames = np.append(frames, n_frames - 1)
    return frames


def score_frames(
    samples: np.ndarray,
    reference: np.ndarray,
    domain: list[list[float]],
    jsd_bins: int,
    w1_max_points: int,
    seed: int,
    desc: str = "score",
) -> dict[str, np.ndarray]:
    """Score samples (n_frames, n, dim) against reference (n_frames, m, dim) frame by frame.

    Returns arrays of shape (n_frames,): ``jsd`` (Jensen-Shannon divergence of histograms,
    nats) and ``w1`` (exact Wasserstein-1 on subsets, in units of length).
    """
    rng = np.random.default_rng(seed)
    scores = {name: np.empty(len(samples)) for name in METRICS}
    for frame in tqdm(range(len(samples)), desc=desc, leave=False):
        scores["jsd"][frame] = jensen_shannon_samples(
            samples[frame], reference[frame], domain, jsd_bins
        )
        scores["w1"][frame] = wasserstein1(samples[frame], reference[frame], w1_max_points, rng)
    return scores


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
    """Write per-frame metrics as CSV with columns time, jsd, w1 (a DVC plot)."""
    lines = ["time," + ",".join(METRICS)]
    for index, time in enumerate(times):
        values = ",".join(f"{scores[name][index]:.6g}" for name in METRICS)
        lines.append(f"{time:.6g},{values}")
    path.write_text("\n".join(lines) + "\n")
