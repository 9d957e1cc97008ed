"""Figures and the summary page that one training run carries in MLflow.

Every function takes plain arrays and a system, so it runs without MLflow, DVC or a
trained model. Positions and times are in the system's reduced units. Energies are in
units of k_B T: the true potential is drawn as beta(t) V(x, t) and a learned energy E as
the exponent of its density p = exp(-E) / Z, each shifted to a minimum of 0 on the domain.
Wherever a true and a generated density are compared, both panels use one colour scale
(2D) or one y axis (1D).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.animation import PillowWriter  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from neqgen.systems.base import System  # noqa: E402

TIME_LABEL = "t (reduced units)"
POSITION_LABELS = ("x", "y")
ENERGY_LABEL = r"energy ($k_B T$)"
POTENTIAL_LABEL = r"$\beta V$ ($k_B T$)"
DENSITY_LABELS = ("p(x, t) (1 / length)", "p(x, y, t) (1 / area)")
METRIC_LABELS = {
    "jsd_exact": "JS divergence to exact density (nats)",
    "jsd": "JS divergence to held-out ensemble (nats)",
    "w1": "Wasserstein-1 to held-out (length)",
}
# Metrics of the summary page: time averages written by the evaluate command.
HEADLINE_METRICS = ("jsd_exact_mean", "jsd_mean", "w1_mean")
# Colour scales of energies stop here, so the steep walls at the domain's edge (beta V
# above 100 k_B T in the five-well corners) do not flatten the wells.
MAX_ENERGY = 12.0
# Contour levels of beta V (k_B T above the minimum) drawn over density panels.
CONTOUR_LEVELS = (0.5, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class DensityGrid:
    """Probability densities on a rectilinear grid at a sequence of frames.

    Attributes
    ----------
    edges:
        Cell edges per dimension, each of shape (cells + 1,).
    density:
        Probability per unit length (1D) or area (2D), shape (frames, *cells).
    """

    edges: list[np.ndarray]
    density: np.ndarray

    def __post_init__(self):
        shape = tuple(len(edges) - 1 for edges in self.edges)
        if self.density.ndim != len(shape) + 1 or self.density.shape[1:] != shape:
            raise ValueError(
                f"density must have shape (frames, {', '.join(map(str, shape))}) to match "
                f"the edges, got {self.density.shape}"
            )

    @classmethod
    def from_masses(cls, masses: np.ndarray, edges: Sequence[np.ndarray]) -> DensityGrid:
        """Divide cell probabilities (frames, *cells) by the cell volumes."""
        edges = [np.asarray(axis_edges, dtype=float) for axis_edges in edges]
        volumes = np.ones(())
        for axis_edges in edges:
            volumes = np.multiply.outer(volumes, np.diff(axis_edges))
        return cls(edges, np.asarray(masses, dtype=float) / volumes)

    @classmethod
    def from_samples(cls, samples: np.ndarray, edges: Sequence[np.ndarray]) -> DensityGrid:
        """Histogram samples of shape (frames, n, dim) on the edges, one density a frame.

        Samples outside the edges count in the normalisation but in no cell, so mass that
        left the domain is missing here as it is from the exact density.
        """
        edges = [np.asarray(axis_edges, dtype=float) for axis_edges in edges]
        counts = np.stack([np.histogramdd(frame, bins=edges)[0] for frame in samples])
        return cls.from_masses(counts / samples.shape[1], edges)

    @property
    def centres(self) -> list[np.ndarray]:
        return [(edges[1:] + edges[:-1]) / 2 for edges in self.edges]

    def frames(self, index: Sequence[int] | np.ndarray) -> DensityGrid:
        """Return the densities at the given frame positions."""
        return DensityGrid(self.edges, self.density[np.asarray(index)])


def domain_edges(domain: Sequence[Sequence[float]], bins: int) -> list[np.ndarray]:
    """Return ``bins`` equal cells per dimension of the domain, as edges."""
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    return [np.linspace(low, high, bins + 1) for low, high in domain]


def potential_in_kt(system: System, centres: Sequence[np.ndarray], time: float) -> np.ndarray:
    """Return beta(t) V(x, t) on the grid of ``centres``, shifted to a minimum of 0.

    The result has shape (len(centres[0]),) in 1D and (len(centres[0]), len(centres[1]))
    in 2D, indexed like ``np.meshgrid(..., indexing="ij")``.
    """
    mesh = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1)
    positions = torch.as_tensor(mesh, dtype=torch.float64)
    with torch.no_grad():
        energy = system.potential(positions, float(time)).numpy()
    energy = system.beta_at(float(time)) * energy
    return energy - np.nanmin(energy)


def _label_plane(axis) -> None:
    axis.set_xlabel(POSITION_LABELS[0])
    axis.set_ylabel(POSITION_LABELS[1])
    axis.set_aspect("equal")


def _plane_image(axis, values: np.ndarray, edges: Sequence[np.ndarray], **style):
    """Draw a 2D array indexed (x, y) as an image over the cells of ``edges``."""
    extent = [edges[0][0], edges[0][-1], edges[1][0], edges[1][-1]]
    return axis.imshow(values.T, origin="lower", extent=extent, interpolation="nearest", **style)


def _potential_contours(axis, system: System, time: float, grid_points: int = 80):
    centres = [np.linspace(low, high, grid_points) for low, high in system.domain]
    energy = potential_in_kt(system, centres, time)
    return axis.contour(
        *centres, energy.T, levels=CONTOUR_LEVELS, colors="white", linewidths=0.6, alpha=0.7
    )


def plot_density_snapshots(
    system: System,
    times: np.ndarray,
    generated: np.ndarray,
    true: DensityGrid,
    generated_label: str = "generated",
    true_label: str = "exact",
    bins: int = 40,
    title: str = "",
) -> plt.Figure:
    """Draw the potential, the true and the generated density side by side at several times.

    Parameters
    ----------
    times:
        Physical times of the columns, shape (n_times,).
    generated:
        Samples of shape (n_times, n_samples, dim), histogrammed on ``bins`` cells a
        dimension of ``system.domain``.
    true:
        The true density at the same times (an exact solution or a held-out histogram).

    In 2D the rows are beta V, the true and the generated density, with the potential's
    contours over the densities and one colour scale per column for both densities. In
    1D each time gets a panel with both density curves on one axis and beta V on a twin
    axis.
    """
    if len(true.density) != len(times) or len(generated) != len(times):
        raise ValueError(
            f"need one true density and one sample set per time: {len(times)} times, "
            f"{len(true.density)} densities, {len(generated)} sample sets"
        )
    estimate = DensityGrid.from_samples(generated, domain_edges(system.domain, bins))
    if system.dim == 1:
        figure = _density_curves(system, times, true, estimate, true_label, generated_label)
    else:
        figure = _density_panels(system, times, true, estimate, true_label, generated_label)
    if title:
        figure.suptitle(title)
    return figure


def _density_panels(system, times, true, estimate, true_label, generated_label) -> plt.Figure:
    figure, axes = plt.subplots(
        3,
        len(times),
        figsize=(2.9 * len(times) + 0.8, 8.4),
        squeeze=False,
        constrained_layout=True,
    )
    centres = [np.linspace(low, high, 100) for low, high in system.domain]
    energy_norm = Normalize(0.0, MAX_ENERGY)
    for column, time in enumerate(times):
        energy = potential_in_kt(system, centres, time)
        potential_image = axes[0, column].contourf(
            *centres,
            energy.T,
            levels=np.linspace(0.0, MAX_ENERGY, 13),
            norm=energy_norm,
            cmap="cividis",
            extend="max",
        )
        axes[0, column].set_title(f"potential, t = {time:.3g}", fontsize="small")

        densities = (true.density[column], estimate.density[column])
        vmax = max(float(np.max(density)) for density in densities) or 1.0
        norm = Normalize(0.0, vmax)
        for row, (density, grid, label) in enumerate(
            zip(densities, (true, estimate), (true_label, generated_label), strict=True),
            start=1,
        ):
            axis = axes[row, column]
            image = _plane_image(axis, density, grid.edges, norm=norm, cmap="viridis")
            _potential_contours(axis, system, time)
            axis.set_title(f"{label}, t = {time:.3g}", fontsize="small")
        figure.colorbar(image, ax=axes[1:, column], shrink=0.8, label=DENSITY_LABELS[1])
        for axis in axes[:, column]:
            _label_plane(axis)
    figure.colorbar(potential_image, ax=axes[0, -1], label=POTENTIAL_LABEL)
    return figure


def _density_curves(system, times, true, estimate, true_label, generated_label) -> plt.Figure:
    figure, axes = plt.subplots(
        1,
        len(times),
        figsize=(3.4 * len(times), 3.2),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    centres = [np.linspace(*system.domain[0], 400)]
    for column, time in enumerate(times):
        axis = axes[0, column]
        axis.stairs(true.density[column], true.edges[0], label=true_label, color="black")
        axis.stairs(estimate.density[column], estimate.edges[0], label=generated_label)
        axis.set_xlabel(POSITION_LABELS[0])
        axis.set_ylabel(DENSITY_LABELS[0])
        axis.set_title(f"t = {time:.3g}", fontsize="small")
        twin = axis.twinx()
        twin.plot(centres[0], potential_in_kt(system, centres, time), color="0.5", linestyle="--")
        twin.set_ylim(0.0, MAX_ENERGY)
        twin.set_ylabel(POTENTIAL_LABEL, color="0.4")
    axes[0, 0].legend(fontsize="small", loc="upper left")
    return figure


def plot_metrics_against_time(
    times: np.ndarray,
    scores: Mapping[str, np.ndarray],
    noise_floor: Mapping[str, np.ndarray] | None = None,
    label: str = "model",
    title: str = "",
) -> plt.Figure:
    """Plot each per-frame metric against time, one panel a metric, with the noise floor.

    ``scores`` maps metric names (jsd_exact, jsd, w1) to arrays of shape (n_times,), and
    ``noise_floor`` has the same metrics and its own ``time`` array, drawn dashed grey.
    Metrics not in METRIC_LABELS are left out. A panel whose values are all positive
    gets a log scale.
    """
    metrics = [metric for metric in METRIC_LABELS if metric in scores]
    if not metrics:
        raise ValueError(
            f"scores need at least one of {sorted(METRIC_LABELS)}, got {sorted(scores)}"
        )
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False, constrained_layout=True
    )
    for axis, metric in zip(axes[0], metrics, strict=True):
        values = [np.asarray(scores[metric], dtype=float)]
        axis.plot(times, values[0], marker=".", label=label)
        if noise_floor is not None and metric in noise_floor:
            floor = np.asarray(noise_floor[metric], dtype=float)
            values.append(floor)
            axis.plot(noise_floor["time"], floor, color="0.5", linestyle="--", label="noise floor")
        if all(np.all(array > 0) for array in values):
            axis.set_yscale("log")
        axis.set_xlabel(TIME_LABEL)
        axis.set_ylabel(METRIC_LABELS[metric])
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_energy_comparison(
    system: System,
    times: np.ndarray,
    energy: Callable[[np.ndarray, float], np.ndarray],
    label: str = "learned energy",
    grid_points: int = 80,
    title: str = "",
) -> plt.Figure:
    """Draw a learned energy next to the true potential beta V at several times.

    ``energy(positions, time)`` takes positions of shape (n, dim) and returns E of shape
    (n,) in k_B T (the exponent of the model's unnormalised density). Both are shifted to
    a minimum of 0 on a grid of ``grid_points`` a dimension. In 2D the rows share one
    colour scale from 0 to MAX_ENERGY. In 1D each time gets a panel with both curves.
    """
    centres = [np.linspace(low, high, grid_points) for low, high in system.domain]
    positions = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, system.dim)
    learned = []
    for time in times:
        values = np.asarray(energy(positions, float(time)), dtype=float).reshape(
            [grid_points] * system.dim
        )
        learned.append(values - np.nanmin(values))
    true = [potential_in_kt(system, centres, time) for time in times]

    if system.dim == 1:
        figure, axes = plt.subplots(
            1,
            len(times),
            figsize=(3.4 * len(times), 3.2),
            squeeze=False,
            sharey=True,
            constrained_layout=True,
        )
        for column, time in enumerate(times):
            axis = axes[0, column]
            axis.plot(centres[0], true[column], color="black", label=r"true $\beta V$")
            axis.plot(centres[0], learned[column], label=label)
            axis.set_ylim(-0.5, MAX_ENERGY)
            axis.set_xlabel(POSITION_LABELS[0])
            axis.set_ylabel(ENERGY_LABEL)
            axis.set_title(f"t = {time:.3g}", fontsize="small")
        axes[0, 0].legend(fontsize="small")
    else:
        figure, axes = plt.subplots(
            2,
            len(times),
            figsize=(2.9 * len(times) + 0.8, 5.8),
            squeeze=False,
            constrained_layout=True,
        )
        norm = Normalize(0.0, MAX_ENERGY)
        edges = domain_edges(system.domain, grid_points)
        for column, time in enumerate(times):
            for row, (values, name) in enumerate(
                zip((true[column], learned[column]), (r"true $\beta V$", label), strict=True)
            ):
                axis = axes[row, column]
                image = _plane_image(axis, values, edges, norm=norm, cmap="cividis")
                axis.set_title(f"{name}, t = {time:.3g}", fontsize="small")
                _label_plane(axis)
        figure.colorbar(image, ax=axes, shrink=0.8, extend="max", label=ENERGY_LABEL)
    if title:
        figure.suptitle(title)
    return figure


def plot_sample_paths(
    system: System, times: np.ndarray, paths: np.ndarray, title: str = ""
) -> plt.Figure:
    """Draw sampled paths over the potential.

    ``paths`` has shape (n_times, n_paths, dim), and column j is one path at ``times``. In 2D
    the paths run over filled contours of beta V at the first time, coloured by time. In
    1D they are curves x(t) over beta V(x, t) drawn in the (t, x) plane.
    """
    times = np.asarray(times, dtype=float)
    if paths.ndim != 3 or paths.shape[0] != len(times) or paths.shape[2] != system.dim:
        raise ValueError(
            f"paths must have shape ({len(times)}, n_paths, {system.dim}), got {paths.shape}"
        )
    norm = Normalize(0.0, MAX_ENERGY)
    if system.dim == 1:
        figure, axis = plt.subplots(figsize=(7.0, 4.0), constrained_layout=True)
        centres = [np.linspace(*system.domain[0], 200)]
        landscape = np.stack([potential_in_kt(system, centres, time) for time in times])
        image = axis.imshow(
            landscape.T,
            origin="lower",
            aspect="auto",
            extent=[times[0], times[-1], *system.domain[0]],
            norm=norm,
            cmap="cividis",
        )
        axis.plot(times, paths[:, :, 0], color="white", linewidth=0.9)
        axis.set_ylim(*system.domain[0])
        axis.set_xlabel(TIME_LABEL)
        axis.set_ylabel(POSITION_LABELS[0])
        figure.colorbar(image, ax=axis, extend="max", label=POTENTIAL_LABEL)
    else:
        figure, axis = plt.subplots(figsize=(5.6, 4.6), constrained_layout=True)
        centres = [np.linspace(low, high, 150) for low, high in system.domain]
        energy = potential_in_kt(system, centres, times[0])
        axis.contourf(
            *centres,
            energy.T,
            levels=np.linspace(0.0, MAX_ENERGY, 13),
            norm=norm,
            cmap="Greys_r",
            extend="max",
        )
        middle = (times[1:] + times[:-1]) / 2
        for path in np.moveaxis(paths, 1, 0):
            segments = np.stack([path[:-1], path[1:]], axis=1)
            lines = LineCollection(segments, cmap="plasma", linewidths=1.1)
            lines.set_array(middle)
            lines.set_clim(times[0], times[-1])
            axis.add_collection(lines)
            axis.plot(*path[0], marker="o", color="white", markersize=3)
        axis.set_xlim(*system.domain[0])
        axis.set_ylim(*system.domain[1])
        _label_plane(axis)
        axis.set_title(
            rf"{paths.shape[1]} paths over $\beta V$ at t = {times[0]:.3g}", fontsize="small"
        )
        figure.colorbar(lines, ax=axis, label=TIME_LABEL)
    if title:
        figure.suptitle(title)
    return figure


def animation_frames(n_times: int, max_frames: int) -> np.ndarray:
    """Return at most ``max_frames`` evenly spread positions in range(n_times), ends kept."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames}")
    return np.unique(np.linspace(0, n_times - 1, min(n_times, max_frames)).round().astype(int))


def write_marginal_animation(
    path: str | os.PathLike,
    system: System,
    times: np.ndarray,
    generated: np.ndarray,
    true: DensityGrid,
    generated_label: str = "generated",
    true_label: str = "exact",
    bins: int = 40,
    max_frames: int = 40,
    fps: int = 5,
    dpi: int = 100,
) -> int:
    """Write a GIF of the true and the generated marginal over time, return its frame count.

    ``generated`` has shape (n_times, n_samples, dim) and ``true`` one density per time.
    At most ``max_frames`` times, evenly spread, are drawn. Each frame shows both
    densities on one colour scale (2D, with the potential's contours) or one y axis (1D,
    with beta V on a twin axis). The GIF is written through matplotlib's PillowWriter to
    a temporary file that replaces ``path`` only when complete.
    """
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"the animation is written as a GIF, so name it *.gif, got {path}")
    if len(true.density) != len(times) or len(generated) != len(times):
        raise ValueError(
            f"need one true density and one sample set per time: {len(times)} times, "
            f"{len(true.density)} densities, {len(generated)} sample sets"
        )
    chosen = animation_frames(len(times), max_frames)
    estimate = DensityGrid.from_samples(generated[chosen], domain_edges(system.domain, bins))
    true = true.frames(chosen)
    times = np.asarray(times, dtype=float)[chosen]
    labels = (true_label, generated_label)
    if system.dim == 1:
        figure, draw = _animation_1d(system, times, true, estimate, labels)
    else:
        figure, draw = _animation_2d(system, times, true, estimate, labels)

    # Lay the figure out once for the first frame and then keep the positions. Running the
    # constrained layout on every frame took about 40% of the writing time (five wells).
    draw(0)
    figure.canvas.draw()
    figure.set_layout_engine("none")

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".gif")
    os.close(handle)
    try:
        writer = PillowWriter(fps=fps)
        with writer.saving(figure, temporary, dpi):
            for index in range(len(times)):
                draw(index)
                writer.grab_frame()
        # mkstemp creates the file readable by its owner only, so give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
        plt.close(figure)
    return len(times)


def _animation_2d(system, times, true, estimate, labels):
    # Every frame is redrawn whole and quantised to a GIF palette, so the figure is kept
    # small and the right panel shares the left one's y tick labels.
    figure, axes = plt.subplots(
        1, 2, figsize=(6.6, 3.0), sharex=True, sharey=True, constrained_layout=True
    )
    grids = (true, estimate)
    images = [
        _plane_image(axis, grid.density[0], grid.edges, norm=Normalize(0.0, 1.0), cmap="viridis")
        for axis, grid in zip(axes, grids, strict=True)
    ]
    for axis, label in zip(axes, labels, strict=True):
        axis.set_title(label, fontsize="small")
        _label_plane(axis)
    axes[1].set_ylabel("")
    figure.colorbar(images[0], ax=axes, shrink=0.85, label=DENSITY_LABELS[1])
    contours = []

    def draw(index: int) -> None:
        vmax = max(float(np.max(grid.density[index])) for grid in grids) or 1.0
        for image, grid in zip(images, grids, strict=True):
            image.set_data(grid.density[index].T)
            image.set_clim(0.0, vmax)
        while contours:
            contours.pop().remove()
        contours.extend(_potential_contours(axis, system, times[index], 60) for axis in axes)
        figure.suptitle(f"t = {times[index]:.3g} (reduced units)")

    return figure, draw


def _animation_1d(system, times, true, estimate, labels):
    figure, axis = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    true_curve = axis.stairs(true.density[0], true.edges[0], label=labels[0], color="black")
    generated_curve = axis.stairs(estimate.density[0], estimate.edges[0], label=labels[1])
    axis.set_xlabel(POSITION_LABELS[0])
    axis.set_ylabel(DENSITY_LABELS[0])
    axis.legend(fontsize="small", loc="upper left")
    twin = axis.twinx()
    centres = [np.linspace(*system.domain[0], 300)]
    (potential_line,) = twin.plot(centres[0], centres[0] * 0, color="0.5", linestyle="--")
    twin.set_ylim(0.0, MAX_ENERGY)
    twin.set_ylabel(POTENTIAL_LABEL, color="0.4")

    def draw(index: int) -> None:
        true_curve.set_data(true.density[index])
        generated_curve.set_data(estimate.density[index])
        # Both curves share the y axis, scaled to the taller one at this time.
        top = max(float(np.max(grid.density[index])) for grid in (true, estimate)) or 1.0
        axis.set_ylim(0.0, 1.05 * top)
        potential_line.set_ydata(potential_in_kt(system, centres, times[index]))
        axis.set_title(f"t = {times[index]:.3g} (reduced units)", fontsize="small")

    return figure, draw


def render_summary(
    title: str,
    facts: Mapping[str, str],
    metrics: Mapping[str, float],
    noise_floor: Mapping[str, float] | None,
    figures: Mapping[str, str],
) -> str:
    """Return a Markdown page: what was trained on which data, headline metrics, figures.

    ``facts`` are the rows of the first table (model, system, dataset, run ids).
    ``metrics`` and ``noise_floor`` map the names in HEADLINE_METRICS to values, and the
    page gives each model value beside the floor and their ratio. ``figures`` maps
    artifact paths, relative to the page, to captions.
    """
    lines = [f"# {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    lines += [
        "",
        "## Headline metrics",
        "",
        "Time averages over the evaluated frames. The noise floor is the training ensemble",
        "scored like a model against the held-out one: what a perfect model would reach.",
        "",
        "| metric | this model | noise floor | model / floor |",
        "| --- | --- | --- | --- |",
    ]
    for name in HEADLINE_METRICS:
        value = metrics.get(name)
        floor = None if noise_floor is None else noise_floor.get(name)
        ratio = f"{value / floor:.3g}" if value is not None and floor else "n/a"
        lines.append(f"| {name} | {_number(value)} | {_number(floor)} | {ratio} |")
    if noise_floor is None:
        lines += ["", "No noise floor was found. Run `neqgen evaluate --noise-floor` first."]
    lines += ["", "## Figures", ""]
    lines += [f"- [{caption}]({target})" for target, caption in figures.items()]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
