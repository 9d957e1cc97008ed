"""A time-conditioned energy model sampled as a Boltzmann density on a grid."""

from __future__ import annotations

import math

import torch

from neqgen.models.base import GenerativeModel
from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime


class TimeConditionedEnergy(GenerativeModel):
    r"""An energy E_theta(x, t) whose density at time t is exp(-E) / Z(t) on the domain.

    Training maximises the likelihood with the partition function evaluated on a grid of
    cell centres g_m with cell volume dA:

    .. math::

        \mathcal{L} = \mathbb{E}_{(x, t)}\big[E_\theta(x, t)\big]
            + \mathbb{E}_t\Big[\log \sum_m e^{-E_\theta(g_m, t)} \, dA\Big],

    the grid-normalised energy-model baseline of the rotating five-well case study.
    Sampling draws a grid cell with probability exp(-E) / sum exp(-E) and a uniform point
    inside it. Mass outside the domain is not represented.

    Parameters
    ----------
    train_grid, sample_grid:
        Cells per dimension of the normalisation grid in training and of the sampling grid.
    hidden, n_layers, n_time_frequencies:
        Width and depth of the MLP and the number of time frequencies it takes as input.
    n_space_frequencies, space_frequency_scale:
        Number and spread (cycles per half-width of the domain) of random Fourier features
        of the position; 0 feeds the plain position.
    """

    family = "equilibrium"

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 1e-3,
        hidden: int = 128,
        n_layers: int = 3,
        n_time_frequencies: int = 32,
        train_grid: int = 48,
        sample_grid: int = 128,
        n_space_frequencies: int = 0,
        space_frequency_scale: float = 2.0,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        self.save_hyperparameters()
        self.time_embedding = FourierTime(horizon, n_time_frequencies)
        self.position_embedding = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        self.net = ConditionedMLP(
            self.position_embedding.out_features,
            self.time_embedding.out_features,
            hidden,
            n_layers,
            1,
        )
        bounds = torch.tensor(self.domain, dtype=torch.float32)
        self.register_buffer("center", bounds.mean(1))
        self.register_buffer("half_width", (bounds[:, 1] - bounds[:, 0]) / 2)
        train_cells, train_volume = self._grid(train_grid)
        self.register_buffer("train_cells", train_cells)
        self.register_buffer(
            "train_cell_size",
            torch.tensor([(high - low) / train_grid for low, high in self.domain]),
        )
        self.train_log_volume = math.log(train_volume)
        self.sample_grid = sample_grid

    def _grid(self, n: int) -> tuple[torch.Tensor, float]:
        """Return the n^dim cell centres of the domain and the volume of one cell."""
        axes = [
            low + (high - low) * (torch.arange(n, dtype=torch.float32) + 0.5) / n
            for low, high in self.domain
        ]
        cells = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)
        volume = math.prod((high - low) / n for low, high in self.domain)
        return cells, volume

    def energy(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return E(x, t) for x of shape (..., dim) and t broadcastable to x.shape[:-1]."""
        shape = torch.broadcast_shapes(x.shape[:-1], t.shape)
        position = self.position_embedding((x - self.center) / self.half_width)
        energy = self.net(position, self.time_embedding(t))
        return torch.broadcast_to(energy.squeeze(-1), shape)

    def log_partition(self, t: torch.Tensor, cells: torch.Tensor, log_volume: float):
        """Return log Z(t) on a grid, shape t.shape, for t of shape (frames,)."""
        energies = self.energy(cells[None], t[:, None])
        return torch.logsumexp(-energies, dim=-1) + log_volume

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        data_energy = self.energy(x, t[:, None]).mean(-1)
        cells = self.train_cells
        if self.training:
            # A random shift of the whole grid within one cell makes the Riemann sum an
            # unbiased (stratified) estimate of Z, so the energy cannot hide sharp peaks
            # between fixed grid points.
            shift = (torch.rand(self.dim, device=cells.device) - 0.5) * self.train_cell_size
            cells = cells + shift
        log_z = self.log_partition(t, cells, self.train_log_volume)
        return (data_energy + log_z).mean()

    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cells, _ = self._grid(self.sample_grid)
        cells = cells.to(self.device)
        cell_size = torch.tensor(
            [(high - low) / self.sample_grid for low, high in self.domain], device=self.device
        )
        samples = torch.empty(len(t), self.dim, device=self.device)
        for time in torch.unique(t):
            rows = torch.nonzero(t == time).squeeze(-1)
            weights = torch.softmax(-self.energy(cells, time), dim=0)
            chosen = torch.multinomial(weights, len(rows), replacement=True, generator=generator)
            jitter = torch.rand(len(rows), self.dim, device=self.device, generator=generator)
            samples[rows] = cells[chosen] + (jitter - 0.5) * cell_size
        return samples
