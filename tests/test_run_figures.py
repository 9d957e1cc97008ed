"""Figures and summary page of one MLflow run, on tiny 2D and 1D cases."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from PIL import Image

from neqgen.commands.evaluate import _energy_function
from neqgen.evaluation.run_figures import (
    DENSITY_LABELS,
    MAX_ENERGY,
    POTENTIAL_LABEL,
    TIME_LABEL,
    DensityGrid,
    domain_edges,
    plot_density_snapshots,
    plot_energy_comparison,
    plot_metrics_against_time,
    plot_sample_paths,
    potential_in_kt,
    render_summary,
    write_marginal_animation,
)
from neqgen.models import TimeConditionedEnergy
from neqgen.models.equilibrium.stationary import StationaryEnergy
from neqgen.systems import Prinz, RotatingWells

TIMES = np.array([0.0, 0.5, 1.0])


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def wells():
    return RotatingWells()


@pytest.fixture
def prinz():
    return Prinz(quench_time=0.5, quench_beta=4.0)


def _samples(system, n_times=3, n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.3, size=(n_times, n, system.dim))


def _true(system, n_times=3, bins=30):
    samples = _samples(system, n_times, seed=1)
    return DensityGrid.from_samples(samples, domain_edges(system.domain, bins))


def _axes_titled(figure, title):
    return [axis for axis in figure.axes if axis.get_title() == title]


def test_density_grid_normalises_inside_mass():
    samples = np.array([[[0.1], [0.2], [0.7], [5.0]]])
    grid = DensityGrid.from_samples(samples, [np.linspace(0.0, 1.0, 11)])

    mass = (grid.density[0] * np.diff(grid.edges[0])).sum()

    assert mass == pytest.approx(0.75), "the sample outside the edges has no cell"
    assert grid.density[0][1] == pytest.approx(2.5)


def test_density_grid_rejects_mismatched_shape():
    with pytest.raises(ValueError, match="shape"):
        DensityGrid([np.linspace(0, 1, 5)], np.zeros((2, 3)))


def test_potential_in_kt_scales_by_beta_at_time(prinz):
    centres = [np.linspace(-1.0, 1.0, 201)]

    before = potential_in_kt(prinz, centres, 0.0)
    after = potential_in_kt(prinz, centres, 1.0)

    assert before.min() == 0.0
    assert after.max() == pytest.approx(4.0 * before.max())


def test_density_snapshots_2d_share_colour_scale(wells):
    figure = plot_density_snapshots(
        wells, TIMES, _samples(wells), _true(wells), "diffusion", "exact"
    )

    for time in TIMES:
        (true_axis,) = _axes_titled(figure, f"exact, t = {time:.3g}")
        (generated_axis,) = _axes_titled(figure, f"diffusion, t = {time:.3g}")
        true_image = true_axis.get_images()[0]
        generated_image = generated_axis.get_images()[0]
        assert true_image.get_clim() == generated_image.get_clim(), f"t = {time}"
        assert true_image.norm is generated_image.norm, f"t = {time}"
        assert generated_axis.get_xlabel() == "x"
        assert generated_axis.get_ylabel() == "y"
    potential_axes = [axis for axis in figure.axes if axis.get_title().startswith("potential")]
    assert len(potential_axes) == len(TIMES)
    assert any(DENSITY_LABELS[1] in axis.get_ylabel() for axis in figure.axes), "colour bar"


def test_density_snapshots_1d_share_axis(prinz):
    figure = plot_density_snapshots(
        prinz, TIMES, _samples(prinz), _true(prinz), "diffusion", "exact"
    )

    density_axes = [axis for axis in figure.axes if axis.get_ylabel() == DENSITY_LABELS[0]]
    potential_axes = [axis for axis in figure.axes if axis.get_ylabel() == POTENTIAL_LABEL]
    assert len(density_axes) == len(TIMES)
    assert len(potential_axes) == len(TIMES)
    for axis in density_axes:
        labels = [patch.get_label() for patch in axis.patches]
        assert labels == ["exact", "diffusion"], "both densities on one y axis"
        assert axis.get_xlabel() == "x"
    limits = {axis.get_ylim() for axis in density_axes}
    assert len(limits) == 1, "panels share the density scale"


def test_density_snapshots_reject_missing_times(wells):
    with pytest.raises(ValueError, match="one true density"):
        plot_density_snapshots(wells, TIMES, _samples(wells), _true(wells, n_times=2))


def test_metrics_against_time_draw_noise_floor():
    scores = {"jsd": np.array([0.2, 0.1, 0.05]), "w1": np.array([0.3, 0.2, 0.1])}
    floor = {"time": TIMES, "jsd": np.full(3, 0.01), "w1": np.full(3, 0.02)}

    figure = plot_metrics_against_time(TIMES, scores, floor, label="diffusion")

    assert len(figure.axes) == 2
    for axis in figure.axes:
        labels = [line.get_label() for line in axis.get_lines()]
        assert axis.get_xlabel() == TIME_LABEL
        assert axis.get_ylabel(), "metric axis needs a label"
        assert labels == ["diffusion", "noise floor"]
        assert axis.get_yscale() == "log"


def test_metrics_against_time_reject_unknown_metrics():
    with pytest.raises(ValueError, match="at least one of"):
        plot_metrics_against_time(TIMES, {"loss": np.ones(3)})


def test_energy_comparison_2d_matches_true_potential(wells):
    def true_energy(positions, time):
        x = torch.as_tensor(positions, dtype=torch.float64)
        return wells.beta * wells.potential(x, time).numpy()

    figure = plot_energy_comparison(wells, TIMES[:2], true_energy, label="learned", grid_points=20)

    for time in TIMES[:2]:
        (true_axis,) = _axes_titled(figure, rf"true $\beta V$, t = {time:.3g}")
        (learned_axis,) = _axes_titled(figure, f"learned, t = {time:.3g}")
        true_image = true_axis.get_images()[0]
        learned_image = learned_axis.get_images()[0]
        assert true_image.get_clim() == (0.0, MAX_ENERGY)
        assert learned_image.get_clim() == (0.0, MAX_ENERGY)
        np.testing.assert_allclose(learned_image.get_array(), true_image.get_array(), atol=1e-9)
        assert learned_axis.get_xlabel() == "x"
        assert learned_axis.get_ylabel() == "y"


def test_energy_comparison_1d_labels_energy(prinz):
    figure = plot_energy_comparison(prinz, TIMES, lambda positions, time: positions[:, 0] ** 2)

    assert len(figure.axes) == len(TIMES)
    for axis in figure.axes:
        assert axis.get_xlabel() == "x"
        assert "k_B T" in axis.get_ylabel()
        assert len(axis.get_lines()) == 2


def test_sample_paths_2d_draw_each_path(wells):
    times = np.linspace(0.0, 1.0, 11)
    paths = _samples(wells, n_times=11, n=4)

    figure = plot_sample_paths(wells, times, paths)

    axis = figure.axes[0]
    collections = [item for item in axis.collections if isinstance(item, LineCollection)]
    assert len(collections) == 4
    assert axis.get_xlabel() == "x"
    assert axis.get_ylabel() == "y"
    assert figure.axes[1].get_ylabel() == TIME_LABEL, "colour bar of time"


def test_sample_paths_1d_over_potential_in_time(prinz):
    times = np.linspace(0.0, 1.0, 11)

    figure = plot_sample_paths(prinz, times, _samples(prinz, n_times=11, n=5))

    axis = figure.axes[0]
    assert axis.get_xlabel() == TIME_LABEL
    assert axis.get_ylabel() == "x"
    assert len(axis.get_lines()) == 5
    assert figure.axes[1].get_ylabel() == POTENTIAL_LABEL


def test_sample_paths_reject_wrong_shape(wells):
    with pytest.raises(ValueError, match="paths must have shape"):
        plot_sample_paths(wells, TIMES, np.zeros((len(TIMES), 4, 1)))


@pytest.mark.parametrize(("n_times", "max_frames", "expected"), [(12, 5, 5), (3, 40, 3)])
def test_animation_2d_frame_count(tmp_path, wells, n_times, max_frames, expected):
    path = tmp_path / "marginal.gif"
    times = np.linspace(0.0, 1.0, n_times)

    written = write_marginal_animation(
        path, wells, times, _samples(wells, n_times), _true(wells, n_times), max_frames=max_frames
    )

    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.n_frames == expected
    assert written == expected
    assert path.stat().st_size < 2_000_000
    assert list(tmp_path.iterdir()) == [path], "no temporary file left behind"


def test_animation_1d_frame_count(tmp_path, prinz):
    path = tmp_path / "marginal.gif"
    times = np.linspace(0.0, 1.0, 4)

    write_marginal_animation(path, prinz, times, _samples(prinz, 4), _true(prinz, 4))

    with Image.open(path) as image:
        assert image.n_frames == 4


def test_animation_rejects_other_format(tmp_path, wells):
    with pytest.raises(ValueError, match="GIF"):
        write_marginal_animation(
            tmp_path / "marginal.mp4", wells, TIMES, _samples(wells), _true(wells)
        )
    assert list(tmp_path.iterdir()) == []


def test_summary_lists_metrics_and_links():
    figures = {
        "figures/density_snapshots.png": "densities",
        "figures/marginal_animation.gif": "animation",
    }
    metrics = {"jsd_exact_mean": 0.2, "jsd_mean": 0.1, "w1_mean": 0.3, "n_frames": 6}
    floor = {"jsd_exact_mean": 0.01, "jsd_mean": 0.02, "w1_mean": 0.03}

    page = render_summary("bridge-five_well", {"model": "bridge"}, metrics, floor, figures)

    assert page.startswith("# bridge-five_well\n")
    assert "| model | bridge |" in page
    assert "| jsd_exact_mean | 0.2 | 0.01 | 20 |" in page
    assert "| jsd_mean | 0.1 | 0.02 | 5 |" in page
    assert "| w1_mean | 0.3 | 0.03 | 10 |" in page
    assert "[densities](figures/density_snapshots.png)" in page
    assert "[animation](figures/marginal_animation.gif)" in page


def test_summary_without_noise_floor():
    page = render_summary("run", {}, {"jsd_mean": 0.1}, None, {})

    assert "| jsd_mean | 0.1 | n/a | n/a |" in page
    assert "| w1_mean | n/a | n/a | n/a |" in page
    assert "neqgen evaluate --noise-floor" in page


def test_energy_function_of_energy_models():
    domain = [[-1.0, 1.0]]
    positions = np.array([[-0.5], [0.0], [0.5]])
    time_conditioned = TimeConditionedEnergy(1, 1.0, domain, hidden=8, n_layers=1, train_grid=4)
    stationary = StationaryEnergy(1, 1.0, domain, hidden=8, n_layers=1)

    for model in (time_conditioned, stationary):
        values = _energy_function(model)(positions, 0.5)
        assert values.shape == (3,), type(model).__name__
        assert np.isfinite(values).all(), type(model).__name__
    expected = time_conditioned.energy(
        torch.as_tensor(positions, dtype=torch.float32), torch.full((3,), 0.5)
    )
    np.testing.assert_allclose(
        _energy_function(time_conditioned)(positions, 0.5), expected.detach().numpy()
    )
    assert _energy_function(torch.nn.Linear(1, 1)) is None
