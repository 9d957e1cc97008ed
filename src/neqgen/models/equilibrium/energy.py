"""A time-conditioned energy model sampled as a Boltzmann density on a grid or by MCMC."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from neqgen.models.base import GenerativeModel
from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime
from neqgen.models.samplers import METHODS, run_chains, uniform_in_domain

OBJECTIVES = ("grid_mle", "dsm")
SAMPLERS = ("grid", *METHODS)
CHAIN_STARTS = ("uniform", "grid")


class TimeConditionedEnergy(GenerativeModel):
    r"""An energy E_theta(x, t) whose density at time t is exp(-E) / Z(t) on the domain.

    Training maximises the likelihood with the partition function evaluated on a grid of
    cell centres g_m with cell volume dA:

    .. math::

        \mathcal{L} = \mathbb{E}_{(x, t)}\big[E_\theta(x, t)\big]
            + \mathbb{E}_t\Big[\log \sum_m e^{-E_\theta(g_m, t)} \, dA\Big],

    the grid-normalised energy-model baseline of the rotating five-well case study
    (``objective: grid_mle``). Sampling draws a grid cell with probability
    exp(-E) / sum exp(-E) and a uniform point inside it (``sampler: grid``). Mass outside
    the domain is not represented.

    Where a grid is too large (more dimensions), ``objective: dsm`` trains by denoising
    score matching instead (see :func:`denoising_score_matching`, applied per frame at
    the frame's time), with a :class:`GaussianBase` added to the energy. With ``dsm`` the
    validation loss is the same objective with noise from a fixed seed. ``sampler: mala``
    or ``langevin`` runs independent chains on E(x, t) at fixed t (see
    :mod:`neqgen.models.samplers`), confined to the domain and started uniformly on it or
    from the grid sampler (``chain_start``).

    NOTE: MCMC chains cross high barriers rarely, so with too few steps from uniform
    starts the well populations follow the basin volumes, not the Boltzmann weights.

    Parameters
    ----------
    train_grid, sample_grid:
        Cells per dimension of the normalisation grid in training and of the sampling grid.
    hidden, n_layers, n_time_frequencies:
        Width and depth of the MLP and the number of time frequencies it takes as input.
    n_space_frequencies, space_frequency_scale:
        Number and spread (cycles per half-width of the domain) of random Fourier features
        of the position; 0 feeds the plain position.
    objective:
        ``grid_mle`` (grid-normalised likelihood) or ``dsm`` (denoising score matching).
    noise_scale:
        sigma of denoising score matching, in units of x (``dsm`` only).
    sampler, n_sampler_steps, sampler_step_size:
        ``grid``, ``mala`` or ``langevin``, and for the last two the chain length and the
        initial step size h (units of x squared).
    sampler_burn_in, target_acceptance:
        Steps during which every chain adapts its step size towards the target
        acceptance (null keeps h fixed); see :func:`neqgen.models.samplers.run_chains`.
    chain_start:
        ``uniform`` on the domain or ``grid`` (draws of the grid sampler) for MCMC chains.

    Raises
    ------
    ValueError
        For an unknown objective, sampler or chain start, or a non-positive sampler
        setting or noise scale.
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
        objective: str = "grid_mle",
        noise_scale: float = 0.02,
        sampler: str = "grid",
        n_sampler_steps: int = 300,
        sampler_step_size: float = 1e-3,
        sampler_burn_in: int = 100,
        target_acceptance: float | None = 0.6,
        chain_start: str = "uniform",
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        if objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
        if not noise_scale > 0:
            raise ValueError(f"model.noise_scale must be positive, got {noise_scale}")
        if chain_start not in CHAIN_STARTS:
            raise ValueError(
                f"model.chain_start must be one of {CHAIN_STARTS}, got {chain_start!r}"
            )
        check_mcmc_settings(
            sampler,
            n_sampler_steps,
            sampler_step_size,
            sampler_burn_in,
            target_acceptance,
            allowed=SAMPLERS,
        )
        self.save_hyperparameters()
        self.objective = objective
        self.noise_scale = noise_scale
        self.sampler = sampler
        self.n_sampler_steps = n_sampler_steps
        self.sampler_step_size = sampler_step_size
        self.sampler_burn_in = sampler_burn_in
        self.target_acceptance = target_acceptance
        self.chain_start = chain_start
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
        # The grid objective normalises over the whole domain; score matching does not,
        # so it gets a quadratic base energy that rises away from the data.
        self.base = GaussianBase(self.center, self.half_width) if objective == "dsm" else None
        if objective == "grid_mle":
            # Only the grid objective builds the train_grid^dim normalisation cells.
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
        energy = self.net(position, self.time_embedding(t)).squeeze(-1)
        if self.base is not None:
            energy = energy + self.base(x)
        return torch.broadcast_to(energy, shape)

    def log_partition(self, t: torch.Tensor, cells: torch.Tensor, log_volume: float):
        """Return log Z(t) on a grid, shape t.shape, for t of shape (frames,)."""
        energies = self.energy(cells[None], t[:, None])
        return torch.logsumexp(-energies, dim=-1) + log_volume

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.objective == "dsm":
            generator = None
            if self.training:
                self.base.fit_once(x)
            else:
                generator = torch.Generator(device=x.device).manual_seed(0)
            return denoising_score_matching(
                lambda noisy: self.energy(noisy, t[:, None]),
                x,
                self.noise_scale,
                generator,
            )

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
        if self.sampler == "grid":
            return self.sample_grid_cells(t, generator)

        if self.chain_start == "grid":
            starts = self.sample_grid_cells(t, generator)
        else:
            starts = uniform_in_domain(len(t), self.domain, generator, self.device)
        chains = run_chains(
            self.sampler,
            lambda x: self.energy(x, t),
            starts,
            self.sampler_step_size,
            self.n_sampler_steps,
            generator,
            burn_in=self.sampler_burn_in,
            domain=self.domain,
            target_acceptance=self.target_acceptance,
        )
        return chains.final

    def sample_grid_cells(
        self, t: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Draw one sample per entry of t from exp(-E) on the ``sample_grid`` cells."""
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


def denoising_score_matching(
    energy: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    noise_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Return the denoising score matching loss of an energy on data x of shape (..., dim).

    With the model score -grad E and x_noisy = x + sigma eps, eps ~ N(0, I),

    .. math::

        \mathcal{L} = \mathbb{E}_{x, \epsilon}
            \big\| \sigma \nabla E(x + \sigma \epsilon) - \epsilon \big\|^2,

    which is sigma^2 times the loss of Vincent (2011), "A connection between score
    matching and denoising autoencoders". Its minimiser is the energy of the data density
    convolved with N(0, sigma^2 I), up to a constant, but only where noisy data fall:
    elsewhere the loss leaves E free (see :class:`GaussianBase`). The energy maps
    (..., dim) to (...). Autograd is switched on locally, so the loss can be evaluated
    inside Lightning's inference-mode validation. The graph to the parameters is kept only
    if gradients were enabled by the caller.
    """
    create_graph = torch.is_grad_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        noisy = (x.detach().clone() + noise_scale * noise).requires_grad_(True)
        energies = energy(noisy)
        (gradient,) = torch.autograd.grad(energies.sum(), noisy, create_graph=create_graph)
        return ((noise_scale * gradient - noise) ** 2).sum(-1).mean()


class GaussianBase(nn.Module):
    r"""The energy sum_d (x_d - m_d)^2 / (2 s_d^2), added to a network energy.

    Denoising score matching only constrains E near the data, so a network energy alone
    can stay low in data-free parts of the domain, where exp(-E) then puts spurious mass
    and MCMC chains get stuck. With this term E rises quadratically away from the data
    unless the network learns otherwise. m and s start as the domain's centre and
    half-width. :meth:`fit_once` sets them once, to the mean and standard deviation per
    dimension of the first training batch. They are buffers, so checkpoints contain them.
    """

    def __init__(self, center: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", center.clone())
        self.register_buffer("std", scale.clone())
        self.register_buffer("fitted", torch.tensor(False))

    def fit_once(self, x: torch.Tensor) -> None:
        """Set m and s from x of shape (..., dim), unless an earlier call already did."""
        if bool(self.fitted):
            return
        flat = x.detach().reshape(-1, x.shape[-1])
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (((x - self.mean) / self.std) ** 2).sum(-1) / 2


def check_mcmc_settings(
    sampler: str,
    n_steps: int,
    step_size: float,
    burn_in: int,
    target_acceptance: float | None,
    allowed: tuple[str, ...],
) -> None:
    """Raise ValueError naming the model key of an invalid sampler setting."""
    if sampler not in allowed:
        raise ValueError(f"model.sampler must be one of {allowed}, got {sampler!r}")
    if n_steps < 1:
        raise ValueError(f"model.n_sampler_steps must be at least 1, got {n_steps}")
    if not step_size > 0:
        raise ValueError(f"model.sampler_step_size must be positive, got {step_size}")
    if not 0 <= burn_in < n_steps:
        raise ValueError(
            f"model.sampler_burn_in must be in [0, n_sampler_steps) = [0, {n_steps}), "
            f"got {burn_in}"
        )
    if target_acceptance is not None and not 0 < target_acceptance < 1:
        raise ValueError(
            f"model.target_acceptance must be in (0, 1) or null, got {target_acceptance}"
        )
    if target_acceptance is not None and burn_in < 1:
        raise ValueError(
            "model.target_acceptance adapts the step size during the burn-in; set "
            "model.sampler_burn_in to at least 1 or model.target_acceptance to null"
        )
