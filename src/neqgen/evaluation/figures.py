"""Figures: metrics against time and snapshot grids of densities."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRIC_LABELS = {
    "jsd": "Jensen-Shannon divergence to held-out (nats)",
    "jsd_exact": "Jensen-Shannon divergence to exact density (nats)",
    "w1": "Wasserstein-1 distance (length units)",
}

# Marker per protocol and colour cycle per model in the cross-protocol figure.
_MARKERS = "osD^v<>pPX*"


def _band(axis, time, values, label, **style):
    """Plot the mean over replicas (rows of values) with a min-max band around it."""
    values = np.atleast_2d(values)
    (line,) = axis.plot(time, values.mean(0), label=label, **style)
    if len(values) > 1:
        axis.fill_between(time, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    return line


def plot_metrics_over_time(
    curves: Mapping[str, Mapping[str, np.ndarray]], title: str
) -> plt.Figure:
    """Plot each metric against time, one panel a metric and one line a model.

    ``curves`` maps a label (model name or ``noise floor``) to a dict with ``time`` and one
    array per metric, of shape (frames,) or (replicas, frames); with replicas the line is
    their mean and the shaded band spans their minimum to maximum. The noise floor is
    drawn dashed in grey. Metrics that no curve has are left out.
    """
    metrics = {
        metric: label
        for metric, label in METRIC_LABELS.items()
        if any(metric in curve for curve in curves.values())
    }
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(5.5 * len(metrics), 4), constrained_layout=True, squeeze=False
    )
    for axis, (metric, label) in zip(axes[0], metrics.items(), strict=True):
        for name, curve in curves.items():
            if metric not in curve:
                continue
            style = {"color": "0.5", "linestyle": "--"} if name == "noise floor" else {}
            _band(axis, curve["time"], curve[metric], name, **style)
        axis.set_xlabel("time t")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(title)
    return figure


def plot_entropy_production(
    curves: Mapping[str, Mapping[str, np.ndarray]], title: str
) -> plt.Figure:
    """Plot the entropy production rate against time, estimated per model and exact.

    ``curves`` maps a label to ``time`` (interval midpoints), ``epr`` (shape (intervals,)
    or (replicas, intervals)) and optionally ``epr_exact``, drawn once in black.
    """
    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    exact_drawn = False
    for name, curve in curves.items():
        style = {"color": "0.5", "linestyle": "--"} if name == "noise floor" else {}
        _band(axis, curve["time"], curve["epr"], name, **style)
        if "epr_exact" in curve and not exact_drawn:
            exact = np.atleast_2d(curve["epr_exact"])[0]
            axis.plot(
                curve["time"], exact, color="black", linewidth=2, label="exact (Fokker-Planck)"
            )
            exact_drawn = True
    axis.set_xlabel("time t")
    axis.set_ylabel("entropy production rate (k_B per unit time)")
    axis.set_yscale("symlog", linthresh=0.01)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title(title)
    return figure


def plot_error_against_equilibrium(
    points: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], title: str
) -> plt.Figure:
    """Scatter each model's per-frame error against the system's distance from equilibrium.

    ``points`` maps a model label to protocol -> (distance, error) arrays over frames; the
    distance is the exact density's Jensen-Shannon divergence from the instantaneous
    Boltzmann density and the error the model's divergence from the exact density. One
    colour a model, one marker a protocol.
    """
    figure, axis = plt.subplots(figsize=(7, 5), constrained_layout=True)
    protocols = sorted({protocol for entries in points.values() for protocol in entries})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, entries) in enumerate(points.items()):
        colour = "0.5" if name == "noise floor" else colours[index % len(colours)]
        for protocol, (distance, error) in entries.items():
            marker = _MARKERS[protocols.index(protocol) % len(_MARKERS)]
            axis.scatter(
                np.maximum(distance, 1e-6),
                np.maximum(error, 1e-6),
                s=14,
                color=colour,
                marker=marker,
                alpha=0.7,
                label=f"{name} / {protocol}",
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("distance from equilibrium: JS(exact, Boltzmann) (nats)")
    axis.set_ylabel("model error: JS(model, exact) (nats)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", ncol=2)
    axis.set_title(title)
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
