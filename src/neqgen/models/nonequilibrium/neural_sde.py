"""A neural SDE fitted to the frame-to-frame transitions of simulated trajectories."""

from __future__ import annotations

import math

import torch
import torchsde
from torch import nn
from tqdm.auto import tqdm

from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime
from neqgen.models.nonequilibrium.trajectory import (
    TrajectoryModel,
    check_window_batch,
    count_steps,
    system_noise,
)


class NeuralSDE(TrajectoryModel):
    r"""dX = f_theta(X, t) dt + G dW with a neural drift and a constant diagonal noise G.

    The model is the Euler-Maruyama chain X_{j+1} = X_j + f_theta(X_j, t_j) dt + G sqrt(dt)
    xi_j with step ``dt``, the same chain in training and sampling. Training matches its
    transition law over one frame spacing Delta t to the data. From each observed x_k the
    chain is run Delta t / dt steps ``n_loss_samples`` times (m), with the noise
    reparameterised so gradients reach f_theta and G, and the endpoints X^1 .. X^m are
    scored against the observed x_{k+1} by the energy score

    .. math::

        \mathrm{ES} = \frac{1}{m} \sum_i \| X^i - x_{k+1} \|
            - \frac{1}{2 m (m - 1)} \sum_{i \ne j} \| X^i - X^j \|,

    in units of ``data_scale``. The energy score is strictly proper (Gneiting and Raftery
    2007, "Strictly proper scoring rules, prediction, and estimation", JASA 102, 359-378):
    its expectation is smallest exactly when the chain's law of X_{k+1} given (x_k, t_k)
    equals the data's. The estimate is unbiased for any m >= 2, so the only bias is that of
    the chain itself.

    Bias: the drift that fits best is the one whose dt-chain reproduces the Delta t
    transitions, not the continuous-time drift. For an Ornstein-Uhlenbeck process
    dX = -lambda X dt + sigma dW the chain matches the data exactly with
    a = (1 - exp(-lambda dt)) / dt and G^2 = sigma^2 a (2 - a dt) / (2 lambda), a relative
    bias of about -lambda dt / 2 in both. A chain cannot be narrower than G^2 dt in a
    direction of stiffness lambda unless dt <= 1 / (2 lambda). The angular stiffness of
    the five wells is about 100, hence the default dt = 5e-3. With the exact drift scaled
    by c and the exact noise, this loss is smallest at c = 1.00 on the five wells from a
    uniform start over t in [0, 2] (``test_energy_score_bias_on_five_wells``) and at
    c = 1.05 over t in [2, 4].

    Where the frames are far apart compared with the relaxation inside a well, a transition
    ends in the local equilibrium, whose width fixes only the ratio G^2 / stiffness. Fitted
    together over t in [2, 4], the exact drift and G came out as c = 0.91, G = 0.58
    (true 0.63), so G is best kept at the system's value (``learn_diffusion=False``).

    NOTE: the energy score changes little with the drift (scaling the exact drift of the
    five wells by 0.7 raises it by about 1.5%), so training converges slowly and the learned
    wells stay too soft. On the five wells (uniform start, 201 frames x 4000 particles, one
    CPU thread) the histogram Jensen-Shannon divergence (40 bins), averaged over every
    frame up to t = 2 and every fifth after it, is 0.11 after 2000 steps (20 epochs) and
    0.080 after 4000, against 0.034 and 0.028 for FrameBridge, 0.39 for the
    Gaussian-per-frame baseline and 0.015 between two independent ensembles.

    Sampling integrates the chain with ``torchsde.sdeint`` (method ``euler``, step at most
    ``dt``) from positions of the initial bank.

    Parameters
    ----------
    hidden, n_layers, n_time_frequencies:
        Width and depth of the drift MLP and the number of time frequencies it takes.
    n_space_frequencies, space_frequency_scale:
        Random Fourier features of the position in units of ``data_scale`` (0 feeds the
        plain position).
    diffusion:
        Initial (with learn_diffusion false, fixed) noise amplitude G of every coordinate,
        in length per square root of time. None takes sqrt(2 / beta) at t = 0 of the system
        in ``system_config``.
    learn_diffusion:
        Fit G with the drift. Otherwise G stays at ``diffusion``.
    diagonal_diffusion:
        Learn one amplitude per coordinate instead of one shared by all.
    dt:
        Euler-Maruyama step of the training chains and of the sampler, in time units.
    n_loss_samples:
        Chains run from each observed position per training step (m >= 2).
    transitions_per_step:
        At most this many frame-to-frame transitions of a batch are used per training step
        (a random subset). None uses all.
    data_scale:
        Length by which positions are divided before they enter the network.
    system_config:
        The resolved system config (with ``_target_``) that the train command passes. It
        is used only when diffusion is None.
    """

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 2e-3,
        hidden: int = 64,
        n_layers: int = 3,
        n_time_frequencies: int = 32,
        n_space_frequencies: int = 32,
        space_frequency_scale: float = 1.0,
        diffusion: float | None = None,
        learn_diffusion: bool = True,
        diagonal_diffusion: bool = False,
        dt: float = 5e-3,
        n_loss_samples: int = 2,
        transitions_per_step: int | None = 256,
        data_scale: float = 0.5,
        system_config: dict | None = None,
        initial_bank_size: int = 4096,
        window: int = 1,
    ):
        super().__init__(dim, horizon, domain, learning_rate, initial_bank_size, window)
        if not dt > 0:
            raise ValueError(f"model.dt must be positive, got {dt}")
        if n_loss_samples < 2:
            raise ValueError(
                f"model.n_loss_samples must be at least 2 for the energy score, got "
                f"{n_loss_samples}"
            )
        if transitions_per_step is not None and transitions_per_step < 1:
            raise ValueError(
                f"model.transitions_per_step must be positive or null, got {transitions_per_step}"
            )
        if not data_scale > 0:
            raise ValueError(f"model.data_scale must be positive, got {data_scale}")
        if diffusion is None:
            diffusion = system_noise(system_config, "model.diffusion")
        if not diffusion > 0:
            raise ValueError(f"model.diffusion must be positive, got {diffusion}")
        self.save_hyperparameters()
        self.dt = float(dt)
        self.n_loss_samples = n_loss_samples
        self.transitions_per_step = transitions_per_step
        self.data_scale = float(data_scale)

        self.time_embedding = FourierTime(horizon, n_time_frequencies)
        self.position_embedding = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        self.net = ConditionedMLP(
            self.position_embedding.out_features,
            self.time_embedding.out_features,
            hidden,
            n_layers,
            dim,
        )
        log_diffusion = torch.full((dim if diagonal_diffusion else 1,), math.log(diffusion))
        if learn_diffusion:
            self.log_diffusion = nn.Parameter(log_diffusion)
        else:
            self.register_buffer("log_diffusion", log_diffusion)

    @property
    def diffusion(self) -> torch.Tensor:
        """Noise amplitude G of each coordinate, shape (dim,)."""
        return self.log_diffusion.exp().expand(self.dim)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return f_theta(x, t) for positions x (n, dim) and times t (n,)."""
        features = self.position_embedding(x / self.data_scale)
        return self.data_scale * self.net(features, self.time_embedding(t))

    def simulate_chain(
        self, start: torch.Tensor, t: torch.Tensor, spacing: torch.Tensor
    ) -> torch.Tensor:
        """Run the Euler-Maruyama chain from start (n, dim) at times t (n,) over spacing (n,).

        Every chain takes the same number of steps, ceil(max(spacing) / dt), so no step is
        longer than dt. The noise comes from the global torch generator and is
        reparameterised, so the result is differentiable in the drift network and in G.
        """
        n_steps = count_steps(float(spacing.max()), self.dt)
        step = (spacing / n_steps)[:, None]
        amplitude = self.diffusion * step.sqrt()
        x = start
        for index in range(n_steps):
            x = x + self.drift(x, t + index * step[:, 0]) * step
            x = x + amplitude * torch.randn_like(x)
        return x

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the mean energy score of windows x (b, window + 1, p, dim), t (b, window + 1)."""
        check_window_batch(x, t, self.dim)
        b, frames, p, dim = x.shape
        start = x[:, :-1].reshape(-1, dim)
        end = x[:, 1:].reshape(-1, dim)
        start_time = t[:, :-1, None].expand(b, frames - 1, p).reshape(-1)
        spacing = (t[:, 1:] - t[:, :-1])[..., None].expand(b, frames - 1, p).reshape(-1)
        with self.loss_randomness():
            if self.transitions_per_step is not None and len(start) > self.transitions_per_step:
                keep = torch.randperm(len(start), device=x.device)[: self.transitions_per_step]
                start, end = start[keep], end[keep]
                start_time, spacing = start_time[keep], spacing[keep]

            m = self.n_loss_samples
            endpoints = self.simulate_chain(
                start.repeat(m, 1), start_time.repeat(m), spacing.repeat(m)
            ).reshape(m, -1, dim)
        return energy_score(endpoints / self.data_scale, end / self.data_scale).mean()

    def training_step(self, batch, batch_index):
        loss = super().training_step(batch, batch_index)
        self.log("train/diffusion", self.diffusion.mean(), on_step=False, on_epoch=True)
        return loss

    @torch.no_grad()
    def sample_paths(
        self,
        times: torch.Tensor,
        n_paths: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        times = self.validate_times(times)
        if (times[1:] < times[:-1]).any():
            raise ValueError("sample_paths needs times in increasing order")
        x = self.draw_initial(n_paths, generator)
        paths = x.new_empty(len(times), n_paths, self.dim)
        end = float(times[-1])
        if end > 0:
            entropy = int(torch.randint(2**31 - 1, (), device=self.device, generator=generator))
            brownian = torchsde.BrownianInterval(
                t0=0.0,
                t1=end,
                size=(n_paths, self.dim),
                dtype=x.dtype,
                device=self.device,
                entropy=entropy,
                dt=self.dt,
            )
            sde = _DriftSDE(self)

        current = 0.0
        with tqdm(total=end, desc="sample NeuralSDE", unit="time", disable=not progress) as bar:
            for index, target in enumerate(times.tolist()):
                if target > current:
                    # A step that divides the segment puts the requested time on the solver
                    # grid, so torchsde returns a solver state, not an interpolation.
                    n_steps = count_steps(target - current, self.dt)
                    segment = torch.tensor([current, target], dtype=torch.float64)
                    x = torchsde.sdeint(
                        sde,
                        x,
                        segment.to(self.device),
                        bm=brownian,
                        dt=(target - current) / n_steps,
                        method="euler",
                    )[-1]
                    bar.update(target - current)
                    current = target
                paths[index] = x
        return paths


class _DriftSDE(nn.Module):
    """The torchsde view of a NeuralSDE: learned drift and constant diagonal noise."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: NeuralSDE):
        super().__init__()
        self.model = model

    def f(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.drift(x, t.to(x).expand(len(x)))

    def g(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.model.diffusion.expand_as(x)


def energy_score(samples: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Return the unbiased energy score of m samples (m, n, dim) against observed (n, dim).

    The result has shape (n,). A small constant inside the norms keeps their gradient
    finite where two points coincide.
    """
    m = samples.shape[0]

    def norm(difference: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((difference**2).sum(-1) + 1e-12)

    first, second = torch.triu_indices(m, m, 1, device=samples.device)
    accuracy = norm(samples - observed).mean(0)
    spread = norm(samples[first] - samples[second]).mean(0)
    return accuracy - 0.5 * spread
