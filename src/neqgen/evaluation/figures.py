"""Figures: metrics against time and snapshot grids of densities."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRIC_LABELS = {
    "jsd": "Jensen-Shannon divergence (nats)",
    "w1": "Wasserstein-1 distance (length units)",
}


def plot_metrics_over_time(
    curves: Mapping[str, Mapping[str, np.ndarray]], title: str
) -> plt.Figure:
    """Plot each metric against time, one panel a metric and one line a model.

    ``curves`` maps a label (model name or ``noise floor``) to a dict with ``time`` and one
    array per metric. The noise floor is drawn dashed in grey.
    """
    figure, axes = plt.subplots(1, len(METRIC_LABELS), figsize=(11, 4), constrained_layout=True)
    for axis, (metric, label) in zip(axes, METRIC_LABELS.items(), strict=True):
        for name, curve in curves.items():
            style = {"color": "0.5", "linestyle": "--"} if name == "noise floor" else {}
            axis.plot(curve["time"], curve[metric], label=name, **style)
        axis.set_xlabel("time t")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(title)
    return figure


def plot_snapshots(
    rows: Mapping[str, np.ndarray],
    times: np.ndarray,
    domain: list[list[float]],
    bins: int = 60,
    title: str = "",
) -> plt.Figure:
    """Draw histograms of several sample sets (rows) at several times (columns).

    Each row's array has shape (n_times, n_samples, dim). In 2D every column shares one
    colour scale, so densities at the same time can be compared. In 1D each time gets one
    panel with a density curve per sample set.
    """
    names = list(rows)
    if len(domain) == 1:
        return _plot_snapshots_1d(rows, times, domain, bins, title)
    figure, axes = plt.subplots(
        len(names),
        len(times),
        figsize=(2.2 * len(times), 2.2 * len(names)),
        squeeze=False,
        constrained_layout=True,
    )
    for column, time in enumerate(times):
        cell_area = (domain[0][1] - domain[0][0]) * (domain[1][1] - domain[1][0]) / bins**2
        densities = [
            np.histogram2d(*rows[name][column].T, bins=bins, range=domain)[0]
            / (len(rows[name][column]) * cell_area)
            for name in names
        ]
        vmax = max(float(density.max()) for density in densities) or 1.0
        for row, (name, density) in enumerate(zip(names, densities, strict=True)):
            axis = axes[row, column]
            axis.imshow(
                density.T,
                origin="lower",
                extent=[*domain[0], *domain[1]],
                vmin=0,
                vmax=vmax,
                cmap="viridis",
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"t = {time:.3g}")
            if column == 0:
                axis.set_ylabel(name)
    if title:
        figure.suptitle(title)
    return figure


def _plot_snapshots_1d(rows, times, domain, bins, title) -> plt.Figure:
    figure, axes = plt.subplots(
        1,
        len(times),
        figsize=(2.6 * len(times), 2.6),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    edges = np.linspace(*domain[0], bins + 1)
    for column, time in enumerate(times):
        axis = axes[0, column]
        for name, samples in rows.items():
            density, _ = np.histogram(samples[column][:, 0], bins=edges)
            density = density / (len(samples[column]) * (edges[1] - edges[0]))
            axis.stairs(density, edges, label=name)
        axis.set_title(f"t = {time:.3g}")
        axis.set_xlabel("x")
    axes[0, 0].set_ylabel("density")
    axes[0, -1].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure
