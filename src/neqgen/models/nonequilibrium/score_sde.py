"""A continuous-time score-based model (variance-preserving SDE) conditioned on physical time."""

from __future__ import annotations

import torch
import torchsde

from neqgen.models.base import GenerativeModel
from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime, SinusoidalEmbedding
from neqgen.models.nonequilibrium.flow_matching import check_ode_method, odeint_fixed_step

SAMPLERS = ("sde", "ode")
# torchsde 0.2.6 methods for Ito SDEs with diagonal noise that the sampler supports.
SDE_METHODS = ("euler", "srk")


class ReverseVPSDE(torch.nn.Module):
    """The reverse-time VP-SDE of a score model as a torchsde SDE in tau = 1 - s.

    torchsde integrates forward in time, so the reverse SDE from s = 1 down to s_min is
    written in tau = 1 - s:

        dy = beta(s) (y / 2 + score(y, s, t)) dtau + sqrt(beta(s)) dW_tau.

    ``t`` is the physical time of each sample, shape (n,).
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: TimeConditionedScoreSDE, t: torch.Tensor):
        super().__init__()
        self.model = model
        self.t = t

    def f(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.full_like(self.t, 1 - float(tau))
        beta = self.model.beta(s)[:, None]
        return beta * (y / 2 + self.model.score(y, s, self.t))

    def g(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        beta = self.model.beta(torch.as_tensor(1 - float(tau), dtype=y.dtype, device=y.device))
        return beta.sqrt().expand_as(y)


class TimeConditionedScoreSDE(GenerativeModel):
    r"""A score-based model (Song et al. 2021) on a VP-SDE whose score also takes physical time t.

    Positions x are scaled to y = (x - c) / ``data_scale`` around the domain centre c and
    diffused in an auxiliary time s in [0, 1] by the variance-preserving SDE

    .. math::

        dy = -\tfrac12 \beta(s)\, y\, ds + \sqrt{\beta(s)}\, dW, \qquad
        \beta(s) = \beta_{min} + s (\beta_{max} - \beta_{min}),

    so y_s = alpha(s) y_0 + sigma(s) eps with
    alpha(s) = exp(-beta_min s / 2 - (beta_max - beta_min) s^2 / 4) and
    sigma(s)^2 = 1 - alpha(s)^2. The score is parameterised through a noise predictor,
    s_theta(y, s, t) = -eps_theta(y, s, t) / sigma(s), and trained by denoising score
    matching with the weight lambda(s) = sigma(s)^2, which turns the loss into

    .. math::

        \mathcal{L} = \mathbb{E}_{t, y_0, s \sim U[s_{min}, 1], \epsilon}
            \| \epsilon_\theta(\alpha(s) y_0 + \sigma(s) \epsilon, s, t) - \epsilon \|^2 .

    Sampling starts from y_1 ~ N(0, I) and runs from s = 1 to s_min either along the
    reverse-time SDE (``sampler: sde``, integrated by ``torchsde.sdeint``) or along the
    probability-flow ODE dy/ds = -beta(s) (y + score) / 2 (``sampler: ode``, a fixed-step
    Euler, Heun or RK4 scheme). The last step is the denoiser
    E[y_0 | y_{s_min}] = (y + sigma^2 score) / alpha (Tweedie's formula).

    Parameters
    ----------
    hidden, n_layers, n_time_frequencies:
        Width and depth of the MLP and the number of Fourier frequencies of the time t.
    beta_min, beta_max:
        Noise rates of the linear schedule at s = 0 and s = 1.
    min_diffusion_time:
        Smallest diffusion time s_min used in training and where sampling stops, because
        the score diverges as s -> 0.
    sampler:
        ``sde`` (reverse-time SDE) or ``ode`` (probability-flow ODE).
    n_sampling_steps:
        Number of equal steps from s = 1 to s_min.
    sde_method:
        torchsde method for ``sampler: sde``: ``euler`` (Euler-Maruyama) or ``srk``
        (stochastic Runge-Kutta of strong order 1.5, about ten network evaluations a step).
    ode_method:
        Integrator for ``sampler: ode``: ``euler``, ``heun`` or ``rk4``.
    data_scale:
        Length (units of x) by which positions are divided after subtracting the domain
        centre.
    n_space_frequencies, space_frequency_scale:
        Random Fourier features of the scaled (noisy) positions, with frequencies of
        spread ``space_frequency_scale`` cycles per ``data_scale``; 0 feeds the plain
        positions. They let the network resolve angular structure such as five wells.
    """

    family = "nonequilibrium"

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 2e-3,
        hidden: int = 256,
        n_layers: int = 3,
        n_time_frequencies: int = 32,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        min_diffusion_time: float = 1e-3,
        sampler: str = "sde",
        n_sampling_steps: int = 100,
        sde_method: str = "euler",
        ode_method: str = "rk4",
        data_scale: float = 0.5,
        n_space_frequencies: int = 0,
        space_frequency_scale: float = 1.0,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        if not 0 < beta_min < beta_max:
            raise ValueError(
                f"model.beta_min and model.beta_max must satisfy 0 < beta_min < beta_max, "
                f"got {beta_min} and {beta_max}"
            )
        if not 0 < min_diffusion_time < 1:
            raise ValueError(
                f"model.min_diffusion_time must be in (0, 1), got {min_diffusion_time}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(
                f"model.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}"
            )
        if n_sampling_steps < 1:
            raise ValueError(f"model.n_sampling_steps must be at least 1, got {n_sampling_steps}")
        if sde_method not in SDE_METHODS:
            raise ValueError(
                f"model.sde_method must be one of {', '.join(SDE_METHODS)}, got {sde_method!r}"
            )
        check_ode_method(ode_method, "model.ode_method")
        if not data_scale > 0:
            raise ValueError(f"model.data_scale must be positive, got {data_scale}")

        self.save_hyperparameters()
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.min_diffusion_time = min_diffusion_time
        self.sampler = sampler
        self.n_sampling_steps = n_sampling_steps
        self.sde_method = sde_method
        self.ode_method = ode_method
        self.data_scale = data_scale

        self.time_embedding = FourierTime(horizon, n_time_frequencies)
        self.diffusion_time_embedding = SinusoidalEmbedding(32)
        condition_features = (
            self.time_embedding.out_features + self.diffusion_time_embedding.out_features
        )
        position_features = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        self.net = ConditionedMLP(
            dim, condition_features, hidden, n_layers, dim, features=position_features
        )
        bounds = torch.tensor(self.domain, dtype=torch.float32)
        self.register_buffer("center", bounds.mean(1))

    def beta(self, s: torch.Tensor) -> torch.Tensor:
        """Return the noise rate beta(s) of the linear schedule, with the shape of s."""
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def marginal_coefficients(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return alpha(s) and sigma(s) of y_s = alpha y_0 + sigma eps, both shaped like s."""
        log_alpha = -0.5 * self.beta_min * s - 0.25 * (self.beta_max - self.beta_min) * s**2
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha))
        return log_alpha.exp(), sigma

    def predict_noise(self, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return eps_theta(y, s, t) for scaled positions y (n, dim), s (n,) and times t (n,)."""
        condition = torch.cat((self.diffusion_time_embedding(s), self.time_embedding(t)), dim=-1)
        return self.net(y, condition)

    def score(self, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return s_theta(y, s, t) = -eps_theta / sigma(s), the score of p_s(y | t)."""
        _, sigma = self.marginal_coefficients(s)
        return -self.predict_noise(y, s, t) / sigma[:, None]

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y0 = (x.reshape(-1, self.dim) - self.center) / self.data_scale
        t = t[:, None].expand(x.shape[:-1]).reshape(-1)
        s_min = self.min_diffusion_time
        s = s_min + (1 - s_min) * torch.rand(len(y0), device=y0.device)
        alpha, sigma = self.marginal_coefficients(s)
        noise = torch.randn_like(y0)
        noisy = alpha[:, None] * y0 + sigma[:, None] * noise
        return ((self.predict_noise(noisy, s, t) - noise) ** 2).mean()

    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        y = torch.randn(len(t), self.dim, device=self.device, generator=generator)
        if self.sampler == "sde":
            y = self._integrate_reverse_sde(y, t, generator)
        else:
            y = self._integrate_probability_flow(y, t)

        s_min = torch.full_like(t, self.min_diffusion_time)
        alpha, sigma = self.marginal_coefficients(s_min)
        y = (y + sigma[:, None] ** 2 * self.score(y, s_min, t)) / alpha[:, None]
        return self.center + self.data_scale * y

    def _integrate_reverse_sde(
        self, y: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Integrate the reverse-time SDE from s = 1 to s_min with torchsde."""
        # t1 of the Brownian motion must equal the last query time in the state's dtype.
        taus = torch.tensor([0.0, 1 - self.min_diffusion_time], dtype=y.dtype, device=y.device)
        end = float(taus[-1])
        step = end / self.n_sampling_steps
        entropy = None
        if generator is not None:
            entropy = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        brownian = torchsde.BrownianInterval(
            t0=0.0,
            t1=end,
            size=tuple(y.shape),
            dtype=y.dtype,
            device=y.device,
            entropy=entropy,
            dt=step,
            levy_area_approximation="space-time" if self.sde_method == "srk" else "none",
        )
        path = torchsde.sdeint(
            ReverseVPSDE(self, t), y, taus, bm=brownian, dt=step, method=self.sde_method
        )
        return path[-1]

    def _integrate_probability_flow(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Integrate the probability-flow ODE from s = 1 to s_min with the fixed-step scheme."""

        def flow(state: torch.Tensor, s: float) -> torch.Tensor:
            diffusion_time = torch.full_like(t, s)
            beta = self.beta(diffusion_time)[:, None]
            return -0.5 * beta * (state + self.score(state, diffusion_time, t))

        return odeint_fixed_step(
            flow, y, 1.0, self.min_diffusion_time, self.n_sampling_steps, self.ode_method
        )
