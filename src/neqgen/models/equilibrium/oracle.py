"""The exact instantaneous Boltzmann density of the true system, as a model to compare with."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import OmegaConf

from neqgen.config import build_system
from neqgen.models.base import GenerativeModel
from neqgen.reference.grid import Grid

# torch.multinomial draws from at most 2^24 categories.
MAX_CELLS = 2**24


class BoltzmannOracle(GenerativeModel):
    r"""Samples of exp(-beta(t) V(x, t)) / Z(t) of the true system at any time t.

    This is the best that any equilibrium model can do: it uses the exact potential and
    temperature protocol and assumes that the ensemble is at equilibrium at every
    instant. Where the data depart from it, the system is out of equilibrium, not the
    model undertrained.

    Sampling draws a cell of a uniform grid over the domain with probability

    .. math::

        \pi_i(t) = e^{-\beta(t) V(g_i, t)} \Big/ \sum_j e^{-\beta(t) V(g_j, t)}

    at the cell centres g_i (inverse CDF over the cells, through ``torch.multinomial``)
    and a uniform point inside it. The cell masses are those of
    :func:`neqgen.reference.boltzmann.log_boltzmann_masses` on the same grid, and
    beta(t) comes from ``system.beta_at``, so a temperature quench is followed. Mass
    outside the domain is not represented.

    NOTE: inside a cell the samples are uniform, not Boltzmann-distributed, so structure
    finer than one cell is lost. Choose ``grid`` so that a cell is much narrower than a
    well.

    The model has no trainable parameters: ``trainable = False`` makes the train command
    to save it without fitting. :meth:`loss` returns the negative log-likelihood of the
    data under the Boltzmann density (no gradient), so that validation still logs a
    number comparable with the grid-normalised energy model.

    Parameters
    ----------
    system_config:
        The system's config as a plain dict with ``_target_`` (a ``name`` key is
        ignored); the train command passes the resolved ``cfg.system``.
    grid:
        Cells per dimension of the sampling grid over ``domain``.
    learning_rate:
        Unused (nothing is trained), kept for the common constructor signature.

    Raises
    ------
    ValueError
        If ``grid`` is below 2, the grid has more than 2^24 cells, or the system's
        dimension differs from ``dim``.
    """

    family = "equilibrium"
    trainable = False

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 1e-3,
        system_config: dict[str, Any] | None = None,
        grid: int = 256,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        if system_config is None or "_target_" not in system_config:
            raise ValueError(
                "model.system_config must be the system's config with a _target_ key (the "
                f"train command passes cfg.system), got {system_config!r}"
            )
        if grid < 2:
            raise ValueError(f"model.grid must be at least 2 cells per dimension, got {grid}")
        if grid**dim > MAX_CELLS:
            raise ValueError(
                f"model.grid={grid} gives {grid}^{dim} cells, more than {MAX_CELLS}; lower "
                f"model.grid"
            )
        self.save_hyperparameters()
        self.system = build_system(OmegaConf.create(system_config))
        if self.system.dim != dim:
            raise ValueError(
                f"the system {type(self.system).__name__} has dimension {self.system.dim}, "
                f"but the model was built with dim={dim}"
            )
        self.grid = Grid(self.domain, grid)
        # Lightning 2.6 leaves a model whose state_dict is empty on the CPU. This persistent
        # buffer lets load_from_checkpoint(map_location=...) move the model to that device.
        self.register_buffer("cell_widths", torch.as_tensor(self.grid.widths, dtype=torch.float32))

    def log_masses(self, time: float) -> torch.Tensor:
        """Return log pi_i(t) of every grid cell, flat in C order, float64, on self.device."""
        centers = self.grid.points().to(self.device)
        reduced = self.system.beta_at(time) * self.system.potential(centers, time).double()
        if not torch.isfinite(reduced).all():
            raise ValueError(
                f"{type(self.system).__name__}.potential is not finite on the sampling grid at "
                f"t={time}; change model.grid so that no cell centre sits on a singularity"
            )
        return -reduced - torch.logsumexp(-reduced, dim=0)

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""Return the mean of beta(t) V(x, t) + log Z(t) over the batch, without gradient.

        Z(t) = sum_i exp(-beta(t) V(g_i, t)) dA on the sampling grid, so this is the
        negative log-likelihood of the data under the oracle's density.
        """
        log_volume = math.log(self.grid.cell_volume)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for frame, time in enumerate(t.tolist()):
            centers = self.grid.points().to(x.device)
            beta = self.system.beta_at(time)
            reduced_cells = beta * self.system.potential(centers, time).double()
            log_z = torch.logsumexp(-reduced_cells, dim=0) + log_volume
            reduced_data = beta * self.system.potential(x[frame].double(), time)
            total = total + (reduced_data + log_z).mean()
        return (total / len(t)).float()

    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cells = self.grid.points().to(device=self.device, dtype=torch.float32)
        samples = torch.empty(len(t), self.dim, device=self.device)
        for time in torch.unique(t):
            rows = torch.nonzero(t == time).squeeze(-1)
            weights = self.log_masses(float(time)).exp()
            chosen = torch.multinomial(weights, len(rows), replacement=True, generator=generator)
            jitter = torch.rand(len(rows), self.dim, device=self.device, generator=generator)
            samples[rows] = cells[chosen] + (jitter - 0.5) * self.cell_widths
        return samples

    def configure_optimizers(self):
        """Return no optimizer: the oracle has no parameters to fit."""
        return None
