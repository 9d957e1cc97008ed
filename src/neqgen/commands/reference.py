"""Solve the Fokker-Planck equation for one system and protocol: the exact reference."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from neqgen.config import build_system, protocol_dir
from neqgen.data.dataset import write_arrays
from neqgen.reference import (
    Grid,
    distance_from_equilibrium,
    entropy_production_rate,
    initial_density,
    solve_fokker_planck,
)
from neqgen.simulation import frame_times

log = logging.getLogger(__name__)


def reference_path(cfg: DictConfig) -> Path:
    """Return the file of the exact density, beside the replicas' ensembles."""
    return protocol_dir(cfg.paths.data, cfg) / "reference.npz"


def equilibrium_table_path(cfg: DictConfig) -> Path:
    """Return the per-frame distance-from-equilibrium table of the configured protocol."""
    return protocol_dir(cfg.paths.plots, cfg) / "equilibrium.csv"


def run_reference(cfg: DictConfig) -> Path:
    """Solve for p(x, t) at the recorded frames from the protocol's start density.

    Writes ``reference.npz`` (``times``, ``edges_<d>`` and ``masses``: the probability of
    every grid cell per frame) beside the ensembles, and ``equilibrium.csv`` with the
    per-frame KL and Jensen-Shannon divergence from the instantaneous Boltzmann density
    and the entropy production rate, under <paths.plots>/<system>/<protocol>/.
    """
    system = build_system(cfg.system)
    n_cells = int(cfg.reference.n_cells_1d if system.dim == 1 else cfg.reference.n_cells_2d)
    grid = Grid(system.domain, n_cells)
    times = frame_times(cfg.simulation.horizon, cfg.simulation.n_frames).numpy()
    p0 = initial_density(system, grid, cfg.protocol.start)
    solution = solve_fokker_planck(system, grid, p0, times, dt=float(cfg.reference.dt))

    path = reference_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"times": times, "masses": solution.masses().astype(np.float64)}
    for axis, edges in enumerate(grid.edges):
        arrays[f"edges_{axis}"] = edges
    write_arrays(path, arrays)

    distance = distance_from_equilibrium(solution, system)
    entropy = entropy_production_rate(solution, system)
    table = equilibrium_table_path(cfg)
    table.parent.mkdir(parents=True, exist_ok=True)
    lines = ["time,kl,js,entropy_production"]
    for index, time in enumerate(times):
        lines.append(
            f"{time:.6g},{distance['kl'][index]:.6g},{distance['js'][index]:.6g},"
            f"{entropy[index]:.6g}"
        )
    table.write_text("\n".join(lines) + "\n")
    log.info(
        "Wrote %s; JS from equilibrium: %.3g at t=0, %.3g at the end",
        path,
        distance["js"][0],
        distance["js"][-1],
    )
    return path


def load_reference_archive(path: Path) -> dict[str, np.ndarray]:
    """Read a reference.npz written by run_reference; raise ValueError if it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{path} is not a readable reference ({error}); delete it and rerun "
            f"`neqgen reference` for this system and protocol"
        ) from error


def exact_masses_on_bins(reference: dict, frame: int, bins: int) -> np.ndarray | None:
    """Sum the reference's cell masses of one frame onto ``bins`` cells per dimension.

    Returns the flattened masses with a trailing zero for the outside cell, in the layout
    of :func:`neqgen.evaluation.metrics.histogram`, or None when the grid's cell count is
    not a multiple of ``bins``.
    """
    masses = reference["masses"][frame]
    factors = [size // bins for size in masses.shape]
    if any(size % bins for size in masses.shape):
        return None
    for axis, factor in enumerate(factors):
        shape = list(masses.shape)
        shape[axis : axis + 1] = [bins, factor]
        masses = masses.reshape(shape).sum(axis=axis + 1)
    return np.append(masses.ravel(), 0.0)
