"""A stochastic bridge between consecutive frames, chained into whole paths."""

from __future__ import annotations

import torch
import torchsde
from torch import nn
from tqdm.auto import tqdm

from neqgen.models.nets import ConditionedMLP, FourierPosition, FourierTime, SinusoidalEmbedding
from neqgen.models.nonequilibrium.trajectory import (
    TrajectoryModel,
    check_window_batch,
    count_steps,
    system_noise,
)


class FrameBridge(TrajectoryModel):
    r"""Brownian bridge matching between consecutive frames, with the data's own pairing.

    Each training pair is one particle at consecutive frames, (x_k, x_{k+1}) at times
    t_k and t_{k+1} = t_k + Delta t. Between them the interpolant is a Brownian bridge of
    noise amplitude sigma (``bridge_noise``, in length per square root of time): at the
    fraction s = (tau - t_k) / Delta t of the frame interval,

    .. math::

        z_s = (1 - s) x_k + s x_{k+1} + \sigma \sqrt{s (1 - s) \Delta t} \, \epsilon,
        \qquad \epsilon \sim N(0, I).

    A network predicts the endpoint, x_theta(z, s, x_k, t_k) ~ E[x_{k+1} | z_s = z, x_k],
    trained by the mean squared error ||x_theta - x_{k+1}||^2 in units of ``data_scale``.
    Sampling runs the bridge SDE in physical time,

    .. math::

        dz = \frac{x_\theta(z, s, x_k, t_k) - z}{t_{k+1} - \tau} \, d\tau + \sigma \, dW_\tau,
        \qquad z(t_k) = x_k,

    whose law at each tau equals that of the interpolant when x_theta is exact (bridge
    matching, Peluchetti 2023, arXiv:2304.00917). Because the network also takes x_k as input,
    z(t_{k+1}) follows the data's transition law from x_k itself, not only its marginal
    (augmented bridge matching, De Bortoli, Liu, Chen, Theodorou and Nie 2023,
    arXiv:2311.06978), so chained frames reproduce the Markov transitions of the data. With
    ``condition_on_start=False`` only the marginals at the frames are matched.

    Paths start from the initial bank and chain one bridge per frame interval. For a time
    between frames, only part of the last bridge is integrated. Between frames the law is the
    interpolant's, a Brownian-bridge mixture, which is only an approximation of the
    physical process there.

    Noise level: sigma = sqrt(2 / beta) (the default, from the system) makes the bridge
    as rough as the physical paths on short times. A smaller sigma gives smoother paths
    and a drift that must choose the endpoint faster near s = 1. sigma must be positive,
    because a bridge without noise that starts from x_k is deterministic and cannot
    represent a random transition.

    Parameters
    ----------
    hidden, n_layers, n_time_frequencies:
        Width and depth of the endpoint MLP and the number of physical-time frequencies.
    n_space_frequencies, space_frequency_scale:
        Random Fourier features of z and x_k in units of ``data_scale`` (0 feeds the plain
        positions).
    bridge_noise:
        sigma, in length per square root of time. None takes sqrt(2 / beta) at t = 0 of the
        system in ``system_config``.
    condition_on_start:
        Feed x_k to the network so that the bridge keeps the data's transition law.
    dt:
        Euler-Maruyama step of the sampler, in time units.
    data_scale:
        Length by which positions are divided before they enter the network.
    system_config:
        The resolved system config (with ``_target_``) that the train command passes. It
        is used only when bridge_noise is None.
    """

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float = 2e-3,
        hidden: int = 128,
        n_layers: int = 3,
        n_time_frequencies: int = 32,
        n_space_frequencies: int = 32,
        space_frequency_scale: float = 1.0,
        bridge_noise: float | None = None,
        condition_on_start: bool = True,
        dt: float = 5e-3,
        data_scale: float = 0.5,
        system_config: dict | None = None,
        initial_bank_size: int = 4096,
        window: int = 1,
    ):
        super().__init__(dim, horizon, domain, learning_rate, initial_bank_size, window)
        if not dt > 0:
            raise ValueError(f"model.dt must be positive, got {dt}")
        if not data_scale > 0:
            raise ValueError(f"model.data_scale must be positive, got {data_scale}")
        if bridge_noise is None:
            bridge_noise = system_noise(system_config, "model.bridge_noise")
        if not bridge_noise > 0:
            raise ValueError(f"model.bridge_noise must be positive, got {bridge_noise}")
        self.save_hyperparameters()
        self.bridge_noise = float(bridge_noise)
        self.condition_on_start = condition_on_start
        self.dt = float(dt)
        self.data_scale = float(data_scale)

        self.time_embedding = FourierTime(horizon, n_time_frequencies)
        self.fraction_embedding = SinusoidalEmbedding(32)
        self.position_embedding = FourierPosition(dim, n_space_frequencies, space_frequency_scale)
        n_positions = 2 if condition_on_start else 1
        self.net = ConditionedMLP(
            n_positions * self.position_embedding.out_features,
            self.time_embedding.out_features + self.fraction_embedding.out_features,
            hidden,
            n_layers,
            dim,
        )
        # Spacing of the frames that paths are chained over, 0 until set from the data.
        self.register_buffer("frame_spacing", torch.zeros((), dtype=torch.float64))

    def set_frame_times(self, times: torch.Tensor) -> None:
        """Store the spacing of the recorded frames times (n_frames,), which paths chain over.

        Raises
        ------
        ValueError
            If the times do not start at 0 or are not evenly spaced.
        """
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
        if len(times) < 2 or abs(float(times[0])) > 1e-9:
            raise ValueError(
                "FrameBridge needs at least two frame times starting at 0, got "
                f"{times[:3].tolist()}"
            )
        spacing = times[1:] - times[:-1]
        if not torch.allclose(spacing, spacing[0], rtol=1e-6, atol=1e-12) or spacing[0] <= 0:
            raise ValueError(
                "FrameBridge needs evenly spaced frames, got spacings between "
                f"{float(spacing.min())} and {float(spacing.max())}"
            )
        self.frame_spacing.fill_(float(spacing.mean()))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "frame_times"):
            self.set_frame_times(datamodule.frame_times())
        elif float(self.frame_spacing) == 0:
            raise ValueError(
                "FrameBridge has no frame spacing: fit it with a PathDataModule or call "
                "set_frame_times(times) before fitting"
            )

    def predict_endpoint(
        self, z: torch.Tensor, fraction: torch.Tensor, start: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Return x_theta(z, s, x_k, t_k), shape (n, dim).

        z and start (x_k) have shape (n, dim), fraction (s) and t (t_k) have shape (n,).
        """
        features = self.position_embedding(z / self.data_scale)
        if self.condition_on_start:
            start_features = self.position_embedding(start / self.data_scale)
            features = torch.cat((features, start_features), -1)
        condition = torch.cat((self.time_embedding(t), self.fraction_embedding(fraction)), -1)
        return z + self.data_scale * self.net(features, condition)

    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the endpoint MSE of windows x (b, window + 1, p, dim) at t (b, window + 1)."""
        check_window_batch(x, t, self.dim)
        b, frames, p, dim = x.shape
        start = x[:, :-1].reshape(-1, dim)
        end = x[:, 1:].reshape(-1, dim)
        start_time = t[:, :-1, None].expand(b, frames - 1, p).reshape(-1)
        spacing = (t[:, 1:] - t[:, :-1])[..., None].expand(b, frames - 1, p).reshape(-1, 1)

        with self.loss_randomness():
            fraction = torch.rand(len(start), 1, device=x.device)
            noise = torch.randn_like(start)
        spread = self.bridge_noise * torch.sqrt(fraction * (1 - fraction) * spacing)
        z = (1 - fraction) * start + fraction * end + spread * noise
        endpoint = self.predict_endpoint(z, fraction[:, 0], start, start_time)
        return (((endpoint - end) / self.data_scale) ** 2).sum(-1).mean() / dim

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
        spacing = float(self.frame_spacing)
        if spacing == 0:
            raise ValueError(
                "FrameBridge has no frame spacing; train it with a PathDataModule or call "
                "set_frame_times(times) before sampling"
            )
        x = self.draw_initial(n_paths, generator)
        paths = x.new_empty(len(times), n_paths, self.dim)
        end = float(times[-1])
        brownian = None
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

        # Times within this tolerance of a frame time count as that frame, so float32
        # rounding of a requested frame time does not start the next bridge.
        tolerance = 1e-4 * spacing
        frame = 0
        start = x
        current = 0.0
        with tqdm(total=end, desc="sample FrameBridge", unit="time", disable=not progress) as bar:
            for index, target in enumerate(times.tolist()):
                while target > (frame + 1) * spacing + tolerance:
                    x = self._integrate(x, start, frame, current, (frame + 1) * spacing, brownian)
                    bar.update((frame + 1) * spacing - current)
                    frame += 1
                    start = x
                    current = frame * spacing
                if target > current + tolerance:
                    x = self._integrate(x, start, frame, current, target, brownian)
                    bar.update(target - current)
                    current = target
                paths[index] = x
        return paths

    def _integrate(
        self,
        z: torch.Tensor,
        start: torch.Tensor,
        frame: int,
        begin: float,
        finish: float,
        brownian: torchsde.BrownianInterval,
    ) -> torch.Tensor:
        """Run the bridge of frame ``frame`` (from x_k = start) over [begin, finish]."""
        if finish <= begin:
            return z
        # Equal steps of at most dt end exactly on finish, so torchsde returns a
        # solver state there, not an interpolation.
        n_steps = count_steps(finish - begin, self.dt)
        sde = _BridgeSDE(self, start, frame * float(self.frame_spacing), float(self.frame_spacing))
        segment = torch.tensor([begin, finish], dtype=torch.float64, device=self.device)
        return torchsde.sdeint(
            sde, z, segment, bm=brownian, dt=(finish - begin) / n_steps, method="euler"
        )[-1]


class _BridgeSDE(nn.Module):
    """The bridge SDE of one frame interval [t_k, t_k + spacing] for torchsde."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: FrameBridge, start: torch.Tensor, t_start: float, spacing: float):
        super().__init__()
        self.model = model
        self.start = start
        self.t_start = t_start
        self.spacing = spacing
        self.start_times = torch.full((len(start),), t_start, device=start.device)

    def f(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        fraction = (float(t) - self.t_start) / self.spacing
        fractions = torch.full((len(z),), fraction, device=z.device, dtype=z.dtype)
        endpoint = self.model.predict_endpoint(z, fractions, self.start, self.start_times)
        # Euler-Maruyama evaluates the drift only at the start of a step, so the time left
        # is at least one step and never zero.
        remaining = (1.0 - fraction) * self.spacing
        return (endpoint - z) / remaining

    def g(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, self.model.bridge_noise)
