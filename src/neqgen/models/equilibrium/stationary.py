"""A time-independent energy model: one Boltzmann density for every frame."""

from __future__ import annotations

import torch

from neqgen.models.base import GenerativeModel
from neqgen.models.equilibrium.energy import (
    GaussianBase,
    check_mcmc_settings,
    denoising_score_matching,
)
from neqgen.models.nets import FourierPosition, mlp
from neqgen.models.samplers import METHODS, langevin, run_chains, uniform_in_domain

OBJECTIVES = ("dsm", "cd")


class StationaryEnergy(GenerativeModel):
    r"""An energy E_theta(x) without time input, fitted to all frames pooled.

    The model density is p(x) = exp(-E_theta(x)) / Z on the domain, the same at every
    time, so it can at best learn the time average of the data. It is the equilibrium
    model that ignores the driving.

    Two objectives are available (``objective``):

    - ``dsm``, denoising score matching (Vincent 2011, "A connection between score
      matching and denoising autoencoders"): with x_noisy = x + sigma eps,

      .. math::

          \mathcal{L} = \mathbb{E}_{x, \epsilon}
              \big\| \sigma \nabla_x E_\theta(x + \sigma \epsilon) - \epsilon \big\|^2,

      whose minimiser is the energy of the data density convolved with N(0, sigma^2 I).
      It needs no samples of the model, but it is evaluated only near the data. So E is
      free where there are no data (hence ``gaussian_base``), and the relative weights of
      wells separated by empty regions are weakly constrained.
    - ``cd``, contrastive divergence with a persistent replay buffer of Langevin chains,
      as in Du and Mordatch (2019), "Implicit generation and generalization in
      energy-based models", with a penalty on squared energies:

      .. math::

          \mathcal{L} = \mathbb{E}_{\text{data}}[E_\theta]
              - \mathbb{E}_{\text{buffer}}[E_\theta]
              + \alpha \big(\mathbb{E}_{\text{data}}[E_\theta^2]
              + \mathbb{E}_{\text{buffer}}[E_\theta^2]\big).

      Each training step takes ``n_negatives`` chains from the buffer (each restarted
      uniformly on the domain with probability ``reinit_probability``), moves them by
      ``cd_steps`` unadjusted Langevin steps on the current energy and writes them back.
      The gradient of the first two terms is that of the likelihood when the buffer
      follows the model density, so well weights are learned as well. NOTE: the buffer
      chains use a fixed step, so they blow up once E is steeper than about
      2 / cd_step_size; on the Prinz potential cd_step_size = 3e-3, or alpha = 0.01,
      made training collapse.

    ``val/loss`` is the denoising score matching loss for both objectives, with noise
    drawn from a fixed seed, so checkpoints are selected by the same criterion.

    Samples at any time come from independent chains started uniformly on the domain and
    run for ``n_sampler_steps`` steps of ``sampler`` (``mala`` or ``langevin``), confined
    to the domain. NOTE: chains cross high barriers rarely, so with too few steps the
    well populations follow the volumes of the basins of attraction rather than the
    Boltzmann weights.

    Parameters
    ----------
    hidden, n_layers:
        Width and depth of the MLP.
    n_space_frequencies, space_frequency_scale:
        Number and spread (cycles per half-width of the domain) of random Fourier features
        of the position; 0 feeds the plain position.
    gaussian_base:
        Add :class:`~neqgen.models.equilibrium.energy.GaussianBase`, a quadratic energy
        fitted to the first training batch, to the network, so that E rises away from
        the data where the objective leaves it free.
    objective:
        ``dsm`` or ``cd``.
    noise_scale:
        sigma of denoising score matching, in units of x.
    sampler, n_sampler_steps, sampler_step_size:
        MCMC kernel, chain length and initial step size h (units of x squared) of sampling.
    sampler_burn_in, target_acceptance:
        Steps during which every chain adapts its step size towards the target
        acceptance (null keeps h fixed); see :func:`neqgen.models.samplers.run_chains`.
    buffer_size, reinit_probability, n_negatives:
        Replay buffer size, chance of restarting a chain uniformly, and chains per step
        (``cd`` only).
    cd_steps, cd_step_size:
        Langevin steps per training step and their step size (``cd`` only).
    energy_regularization:
        alpha, the weight of the squared energies, which fixes the free additive constant
        of E (``cd`` only).

    Raises
    ------
    ValueError
        For an unknown objective or sampler, or a non-positive size, step or scale.
    """

    family = "equilibrium"

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 1e-3,
        hidden: int = 64,
        n_layers: int = 3,
        n_space_frequencies: int = 32,
        space_frequency_scale: float = 2.0,
        gaussian_base: bool = True,
        objective: str = "dsm",
        noise_scale: float = 0.02,
        sampler: str = "mala",
        n_sampler_steps: int = 300,
        sampler_step_size: float = 1e-3,
        sampler_burn_in: int = 100,
        target_acceptance: float | None = 0.6,
        buffer_size: int = 1000,
        reinit_probability: float = 0.05,
        n_negatives: int = 256,
        cd_steps: int = 30,
        cd_step_size: float = 1e-3,
        energy_regularization: float = 0.1,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        self.save_hyperparameters()
        check_training_settings(self.hparams)
        check_mcmc_settings(
            sampler,
            n_sampler_steps,
            sampler_step_size,
            sampler_burn_in,
            target_acceptance,
            allowed=METHODS,
        )
        self.objective = objective
        self.noise_scale = noise_scale
        self.sampler = sampler
        self.n_sampler_steps = n_sampler_steps
        self.sampler_step_size = sampler_step_size
        self.sampler_burn_in = sampler_burn_in
        self.target_acceptance = target_acceptance
        self.reinit_probability = reinit_probability
        self.n_negatives = n_negatives
        self.cd_steps = cd_steps
        self.cd_step_size = cd_step_size
        self.energy_regularization = energy_regularization

        self.position_embedding = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        self.net = mlp(self.position_embedding.out_features, hidden, n_layers, 1)
        bounds = torch.tensor(self.domain, dtype=torch.float32)
        self.register_buffer("center", bounds.mean(1))
        self.register_buffer("half_width", (bounds[:, 1] - bounds[:, 0]) / 2)
        self.base = GaussianBase(self.center, self.half_width) if gaussian_base else None
        if objective == "cd":
            # Not saved in checkpoints: the chains only serve training.
            chains = uniform_in_domain(buffer_size, self.domain, None)
            self.register_buffer("replay_buffer", chains, persistent=False)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Return E(x) for x of shape (..., dim); the result has shape (...)."""
        position = self.position_embedding((x - self.center) / self.half_width)
        energy = self.net(position).squeeze(-1)
        if self.base is not None:
            energy = energy + self.base(x)
        return energy

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the training objective on all positions of the batch pooled; t is unused."""
        pooled = x.reshape(-1, self.dim)
        if self.training and self.base is not None:
            self.base.fit_once(pooled)
        if not self.training:
            generator = torch.Generator(device=pooled.device).manual_seed(0)
            return denoising_score_matching(self.energy, pooled, self.noise_scale, generator)
        if self.objective == "dsm":
            return denoising_score_matching(self.energy, pooled, self.noise_scale)
        return self.contrastive_divergence(pooled)

    def contrastive_divergence(self, data: torch.Tensor) -> torch.Tensor:
        """Return the CD loss of the docstring, advancing part of the replay buffer first."""
        negatives = self.advance_replay_buffer()
        data_energy = self.energy(data)
        negative_energy = self.energy(negatives)
        regularization = (data_energy**2).mean() + (negative_energy**2).mean()
        return (
            data_energy.mean()
            - negative_energy.mean()
            + self.energy_regularization * regularization
        )

    def advance_replay_buffer(self) -> torch.Tensor:
        """Move ``n_negatives`` random buffer chains by ``cd_steps`` Langevin steps.

        Returns the moved states, shape (n_negatives, dim), detached; they also replace
        their old states in the buffer.
        """
        buffer = self.replay_buffer
        n = min(self.n_negatives, len(buffer))
        rows = torch.randperm(len(buffer), device=buffer.device)[:n]
        starts = buffer[rows]
        restart = torch.rand(n, device=buffer.device) < self.reinit_probability
        starts[restart] = uniform_in_domain(int(restart.sum()), self.domain, None, buffer.device)
        moved = langevin(
            self.energy, starts, self.cd_step_size, self.cd_steps, domain=self.domain
        ).final
        buffer[rows] = moved
        return moved

    @torch.no_grad()
    def sample(
        self,
        times: torch.Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        batch_size: int = 65536,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw n_samples of the stationary density once and return them at every time.

        The density does not depend on t, so one set of chains serves all times. The frames
        then share their samples. Every per-frame score keeps its distribution, and the
        cost is one frame's chains instead of one set per time.
        """
        times = self.check_times(times)
        first = super().sample(times[:1], n_samples, generator, batch_size, progress)
        return first.expand(len(times), -1, -1).clone()

    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        starts = uniform_in_domain(len(t), self.domain, generator, self.device)
        chains = run_chains(
            self.sampler,
            self.energy,
            starts,
            self.sampler_step_size,
            self.n_sampler_steps,
            generator,
            burn_in=self.sampler_burn_in,
            domain=self.domain,
            target_acceptance=self.target_acceptance,
        )
        return chains.final


def check_training_settings(settings) -> None:
    """Raise ValueError naming the first invalid training setting of a StationaryEnergy."""
    objective = settings["objective"]
    if objective not in OBJECTIVES:
        raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {objective!r}")
    for key in ("noise_scale", "cd_step_size"):
        if not settings[key] > 0:
            raise ValueError(f"model.{key} must be positive, got {settings[key]}")
    for key in ("buffer_size", "n_negatives", "cd_steps"):
        if settings[key] < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {settings[key]}")
    if not 0 <= settings["reinit_probability"] <= 1:
        raise ValueError(
            f"model.reinit_probability must be in [0, 1], got {settings['reinit_probability']}"
        )
    if settings["energy_regularization"] < 0:
        raise ValueError(
            "model.energy_regularization must be non-negative, got "
            f"{settings['energy_regularization']}"
        )
