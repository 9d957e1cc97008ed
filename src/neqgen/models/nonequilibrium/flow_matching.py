"""Conditional flow matching conditioned on physical time, and fixed-step ODE integrators."""

from __future__ import annotations

from collections.abc import Callable

import torch

from neqgen.models.base import GenerativeModel
from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime, SinusoidalEmbedding

ODE_METHODS = ("euler", "heun", "rk4")


def check_ode_method(method: str, key: str) -> None:
    """Raise a ValueError naming config key ``key`` if method is not a fixed-step ODE scheme."""
    if method not in ODE_METHODS:
        raise ValueError(f"{key} must be one of {', '.join(ODE_METHODS)}, got {method!r}")


def odeint_fixed_step(
    velocity: Callable[[torch.Tensor, float], torch.Tensor],
    x: torch.Tensor,
    start: float,
    end: float,
    n_steps: int,
    method: str,
) -> torch.Tensor:
    """Integrate dx/ds = velocity(x, s) from s = start to s = end in n_steps equal steps.

    ``method`` is ``euler`` (order 1, one velocity evaluation a step), ``heun`` (the explicit
    trapezoidal rule, order 2, two evaluations) or ``rk4`` (classical Runge-Kutta, order 4,
    four evaluations). ``end`` may be smaller than ``start``. Returns the state at ``end``
    with the shape of x.
    """
    check_ode_method(method, "method")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    step = (end - start) / n_steps
    for index in range(n_steps):
        s = start + index * step
        slope = velocity(x, s)
        if method == "euler":
            x = x + step * slope
        elif method == "heun":
            predicted = x + step * slope
            x = x + step / 2 * (slope + velocity(predicted, s + step))
        else:
            k2 = velocity(x + step / 2 * slope, s + step / 2)
            k3 = velocity(x + step / 2 * k2, s + step / 2)
            k4 = velocity(x + step * k3, s + step)
            x = x + step / 6 * (slope + 2 * k2 + 2 * k3 + k4)
    return x


class TimeConditionedFlowMatching(GenerativeModel):
    r"""Conditional flow matching (Lipman et al. 2023) whose velocity also takes physical time t.

    Positions x are scaled to y = (x - c) / ``data_scale`` around the domain centre c. A
    source point y_0 ~ N(0, I) and a data point y_1 ~ p(., t) are joined by the straight
    conditional path of the optimal-transport flow,

    .. math::

        y_s = (1 - (1 - \sigma_{min}) s)\, y_0 + s\, y_1, \qquad
        u_s = y_1 - (1 - \sigma_{min})\, y_0, \qquad s \in [0, 1],

    and the network v_theta(y, s, t) regresses the conditional velocity,

    .. math::

        \mathcal{L} = \mathbb{E}_{t, y_1, s \sim U[0, 1], y_0}
            \| v_\theta(y_s, s, t) - u_s \|^2 .

    Its minimiser is the marginal velocity, whose flow carries N(0, I) to p(., t) convolved
    with N(0, sigma_min^2 I). Sampling integrates dy/ds = v_theta(y, s, t) from s = 0 to 1
    with a fixed-step scheme, at any t in [0, horizon].

    Parameters
    ----------
    hidden, n_layers, n_time_frequencies:
        Width and depth of the MLP and the number of Fourier frequencies of the time t.
    sigma_min:
        Standard deviation (in units of ``data_scale``) of the Gaussian around each data
        point that the path ends in. The learned density is smoothed by that much.
    n_sampling_steps:
        Number of equal steps of the ODE integrator.
    ode_method:
        ``euler``, ``heun`` or ``rk4`` (1, 2 or 4 network evaluations a step).
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
        sigma_min: float = 1e-3,
        n_sampling_steps: int = 25,
        ode_method: str = "rk4",
        data_scale: float = 0.5,
        n_space_frequencies: int = 0,
        space_frequency_scale: float = 1.0,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        if not 0 <= sigma_min < 1:
            raise ValueError(f"model.sigma_min must be in [0, 1), got {sigma_min}")
        if n_sampling_steps < 1:
            raise ValueError(f"model.n_sampling_steps must be at least 1, got {n_sampling_steps}")
        check_ode_method(ode_method, "model.ode_method")
        if not data_scale > 0:
            raise ValueError(f"model.data_scale must be positive, got {data_scale}")

        self.save_hyperparameters()
        self.sigma_min = sigma_min
        self.n_sampling_steps = n_sampling_steps
        self.ode_method = ode_method
        self.data_scale = data_scale

        self.time_embedding = FourierTime(horizon, n_time_frequencies)
        self.flow_time_embedding = SinusoidalEmbedding(32)
        condition_features = (
            self.time_embedding.out_features + self.flow_time_embedding.out_features
        )
        position_features = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        self.net = ConditionedMLP(
            dim, condition_features, hidden, n_layers, dim, features=position_features
        )
        bounds = torch.tensor(self.domain, dtype=torch.float32)
        self.register_buffer("center", bounds.mean(1))

    def velocity(self, y: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return v_theta(y, s, t) for scaled positions y (n, dim), s (n,) and times t (n,)."""
        condition = torch.cat((self.flow_time_embedding(s), self.time_embedding(t)), dim=-1)
        return self.net(y, condition)

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        target = (x.reshape(-1, self.dim) - self.center) / self.data_scale
        t = t[:, None].expand(x.shape[:-1]).reshape(-1)
        s = torch.rand(len(target), device=target.device)
        source = torch.randn_like(target)
        path = (1 - (1 - self.sigma_min) * s[:, None]) * source + s[:, None] * target
        conditional_velocity = target - (1 - self.sigma_min) * source
        return ((self.velocity(path, s, t) - conditional_velocity) ** 2).mean()

    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        y = torch.randn(len(t), self.dim, device=self.device, generator=generator)

        def flow(state: torch.Tensor, s: float) -> torch.Tensor:
            return self.velocity(state, torch.full_like(t, s), t)

        y = odeint_fixed_step(flow, y, 0.0, 1.0, self.n_sampling_steps, self.ode_method)
        return self.center + self.data_scale * y
