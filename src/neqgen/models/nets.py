"""Network building blocks shared by the models."""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierTime(nn.Module):
    """Embed a time t in [0, horizon] as (t / horizon, sin(pi j t / horizon), cos(...)).

    Frequencies j = 1 .. n_frequencies resolve structure down to a time scale of about
    horizon / n_frequencies.
    """

    def __init__(self, horizon: float, n_frequencies: int):
        super().__init__()
        self.horizon = float(horizon)
        frequencies = math.pi * torch.arange(1, n_frequencies + 1, dtype=torch.float32)
        self.register_buffer("frequencies", frequencies)

    @property
    def out_features(self) -> int:
        return 1 + 2 * len(self.frequencies)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        scaled = (t / self.horizon)[..., None]
        angles = scaled * self.frequencies
        return torch.cat((scaled, torch.sin(angles), torch.cos(angles)), dim=-1)


class FourierPosition(nn.Module):
    """Random Fourier features (x, sin(2 pi B x), cos(2 pi B x)) of a position x.

    B is a fixed (n_frequencies, dim) matrix with N(0, scale^2) entries drawn from
    ``seed``, so features resolve structure down to a length of about 1 / (2 pi scale) in
    the units of x (Tancik et al. 2020, "Fourier features let networks learn high
    frequency functions in low dimensional domains").
    """

    def __init__(self, dim: int, n_frequencies: int, scale: float, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        frequencies = scale * torch.randn(n_frequencies, dim, generator=generator)
        self.register_buffer("frequencies", frequencies)

    @property
    def out_features(self) -> int:
        return self.frequencies.shape[1] + 2 * self.frequencies.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * x @ self.frequencies.T
        return torch.cat((x, torch.sin(angles), torch.cos(angles)), dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a diffusion step in [0, 1]."""

    def __init__(self, n_features: int, max_period: float = 1000.0):
        super().__init__()
        half = n_features // 2
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("frequencies", frequencies * max_period)

    @property
    def out_features(self) -> int:
        return 2 * len(self.frequencies)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        angles = s[..., None] * self.frequencies
        return torch.cat((torch.sin(angles), torch.cos(angles)), dim=-1)


def mlp(in_features: int, hidden: int, n_layers: int, out_features: int) -> nn.Sequential:
    """Return an MLP with n_layers hidden layers of width hidden and SiLU activations."""
    if n_layers < 1 or hidden < 1:
        raise ValueError(
            f"model.hidden and model.n_layers must be positive, got {hidden} and {n_layers}"
        )
    layers: list[nn.Module] = [nn.Linear(in_features, hidden), nn.SiLU()]
    for _ in range(n_layers - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    layers.append(nn.Linear(hidden, out_features))
    return nn.Sequential(*layers)


class ConditionedMLP(nn.Module):
    """An MLP on (x, c) whose first layer is W_x x + W_c c, with c broadcast against x.

    Projecting the condition c separately lets one condition (say, one time) serve a whole
    grid of points without being copied to every point first. An optional ``features``
    module (for example :class:`FourierPosition`) maps x before the first layer.
    """

    def __init__(
        self,
        in_features: int,
        condition_features: int,
        hidden: int,
        n_layers: int,
        out: int,
        features: nn.Module | None = None,
    ):
        super().__init__()
        if n_layers < 1 or hidden < 1:
            raise ValueError(
                f"model.hidden and model.n_layers must be positive, got {hidden} and {n_layers}"
            )
        self.features = features if features is not None else nn.Identity()
        if features is not None:
            in_features = features.out_features
        self.input = nn.Linear(in_features, hidden)
        self.condition = nn.Linear(condition_features, hidden, bias=False)
        self.body = (
            mlp(hidden, hidden, n_layers - 1, out) if n_layers > 1 else nn.Linear(hidden, out)
        )

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.silu(self.input(self.features(x)) + self.condition(condition))
        return self.body(hidden)
