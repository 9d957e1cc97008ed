"""The interface of models that generate whole trajectories, not only snapshots."""

from __future__ import annotations

import contextlib
import logging
import math
from abc import abstractmethod

import hydra
import torch

from neqgen.models.base import GenerativeModel

log = logging.getLogger(__name__)


class TrajectoryModel(GenerativeModel):
    """A generative model of paths X(t) on [0, horizon] that start from the first frame.

    Subclasses train on windows of consecutive frames of the same particles, batches
    ``(x, t)`` of :class:`neqgen.data.paths.PathDataModule` with x of shape
    (windows, window + 1, particles, dim) and t of shape (windows, window + 1), and
    implement :meth:`sample_paths`. Marginal samples (:meth:`sample`, :meth:`sample_times`)
    are read off the paths.

    Paths start from a bank of first-frame positions, a buffer of ``initial_bank_size`` rows
    that the checkpoint stores with the weights. When ``Trainer.fit`` gets a datamodule with
    an ``initial_positions()`` method (as :class:`~neqgen.data.paths.PathDataModule` has),
    :meth:`on_fit_start` fills the bank from it. Otherwise call :meth:`set_initial_bank`
    before fitting or sampling. Starts are drawn from the bank with replacement, so samples
    at t = 0 reproduce the training particles and measure nothing the model learned.

    Parameters
    ----------
    initial_bank_size:
        Maximum number of first-frame positions kept. A larger first frame is subsampled.
    window:
        Frame-to-frame steps per training window. The train command passes it to the
        datamodule.
    """

    family = "nonequilibrium"
    data_kind = "paths"

    def __init__(
        self,
        dim: int,
        horizon: float,
        domain: list[list[float]],
        learning_rate: float,
        initial_bank_size: int = 4096,
        window: int = 1,
    ):
        super().__init__(dim, horizon, domain, learning_rate)
        if initial_bank_size < 1:
            raise ValueError(f"model.initial_bank_size must be positive, got {initial_bank_size}")
        if window < 1:
            raise ValueError(f"model.window must be at least 1, got {window}")
        self.window = int(window)
        self.register_buffer("initial_bank", torch.zeros(initial_bank_size, dim))
        self.register_buffer("initial_bank_count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def set_initial_bank(self, positions: torch.Tensor) -> None:
        """Store first-frame positions (n, dim) that paths start from.

        If n exceeds ``initial_bank_size``, a random subset drawn with a fixed seed is kept,
        so the same data always gives the same bank.

        Raises
        ------
        ValueError
            If positions is empty, not of shape (n, dim) or not finite.
        """
        positions = torch.as_tensor(positions, dtype=torch.float32)
        if positions.ndim != 2 or positions.shape[1] != self.dim or len(positions) == 0:
            raise ValueError(
                f"initial positions must have shape (n >= 1, {self.dim}), got "
                f"{tuple(positions.shape)}"
            )
        if not torch.isfinite(positions).all():
            raise ValueError("initial positions contain NaN or inf")
        capacity = len(self.initial_bank)
        if len(positions) > capacity:
            keep = torch.randperm(len(positions), generator=torch.Generator().manual_seed(0))
            positions = positions[keep[:capacity]]
        self.initial_bank.zero_()
        self.initial_bank[: len(positions)] = positions.to(self.initial_bank)
        self.initial_bank_count.fill_(len(positions))

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "initial_positions"):
            self.set_initial_bank(datamodule.initial_positions())
            log.info(
                "Filled the initial bank with %d first-frame positions",
                int(self.initial_bank_count),
            )
        elif int(self.initial_bank_count) == 0:
            raise ValueError(
                f"{type(self).__name__} has no initial positions: fit it with a "
                f"PathDataModule or call set_initial_bank(first_frame) before fitting"
            )

    def draw_initial(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Draw n starting positions from the bank, shape (n, dim).

        Positions are drawn without replacement while the bank lasts, then from a new
        permutation, so n up to the bank size gives n distinct starts. Repeated starts of
        a deterministic drift would give coincident points, whose nearest-neighbour
        entropy is minus infinity.

        Raises
        ------
        ValueError
            If the bank is empty.
        """
        count = int(self.initial_bank_count)
        if count == 0:
            raise ValueError(
                f"{type(self).__name__} has an empty initial bank; train it with a "
                f"PathDataModule or call set_initial_bank(first_frame) before sampling"
            )
        generator_device = generator.device if generator is not None else "cpu"
        rounds = -(-n // count)
        index = torch.cat(
            [
                torch.randperm(count, generator=generator, device=generator_device)
                for _ in range(rounds)
            ]
        )[:n]
        return self.initial_bank[index.to(self.device)]

    @contextlib.contextmanager
    def loss_randomness(self):
        """Fix the random draws of a loss to seed 0 outside training; a context manager.

        In evaluation mode every batch draws from seed 0, so the validation losses of
        different epochs differ only through the weights and the checkpoint with the lowest
        val/loss is not picked by luck. The global random state is restored afterwards.
        """
        if self.training:
            yield
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            yield

    @abstractmethod
    def sample_paths(
        self,
        times: torch.Tensor,
        n_paths: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw n_paths paths started at t = 0 and return them at the requested times.

        Parameters
        ----------
        times:
            Increasing physical times in [0, horizon], shape (n_times,).
        generator:
            Random generator on the model's device, for reproducible paths.

        Returns
        -------
        torch.Tensor
            Positions of shape (n_times, n_paths, dim) on the model's device. Column j is
            one path.
        """

    def validate_times(self, times: torch.Tensor) -> torch.Tensor:
        """Return times as float64 of shape (n,), raising ValueError outside [0, horizon]."""
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
        if len(times) == 0:
            raise ValueError("sample times must not be empty")
        self.check_times(times)
        return times.clamp(max=self.horizon)

    @torch.no_grad()
    def sample(
        self,
        times: torch.Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        batch_size: int = 65536,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw n_samples paths and return their positions at the given times.

        Samples at one time are independent of each other. Column j is the same path at
        every time, so samples at different times are correlated.

        Parameters
        ----------
        times:
            Physical times in [0, horizon], shape (n_times), in any order.
        batch_size:
            Number of paths integrated together.
        progress:
            Show a progress bar over physical time for each batch of paths.

        Returns
        -------
        torch.Tensor
            Samples of shape (n_times, n_samples, dim) on the CPU.
        """
        times = self.validate_times(times)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be positive, got {n_samples}")
        unique, inverse = torch.unique(times, sorted=True, return_inverse=True)
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, n_samples, batch_size):
            n_paths = min(batch_size, n_samples - start)
            chunks.append(self.sample_paths(unique, n_paths, generator, progress).cpu())
        self.train(was_training)
        return torch.cat(chunks, dim=1)[inverse]

    @torch.no_grad()
    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw one sample for each entry of t (n,), each from its own path, shape (n, dim)."""
        times = self.validate_times(t)
        unique, inverse = torch.unique(times, sorted=True, return_inverse=True)
        paths = self.sample_paths(unique, len(times), generator)
        return paths[inverse.to(paths.device), torch.arange(len(times), device=paths.device)]


def count_steps(length: float, dt: float) -> int:
    """Return the number of equal steps of at most dt (up to 0.1%) that cover length.

    The 0.1% slack absorbs float32 rounding of frame times, which would otherwise add a
    step to every frame interval late in a long horizon.
    """
    return max(1, math.ceil(length / dt - 1e-3))


def check_window_batch(x: torch.Tensor, t: torch.Tensor, dim: int) -> None:
    """Raise ValueError unless x (b, window + 1 >= 2, p, dim) and t (b, window + 1) match."""
    if x.ndim != 4 or x.shape[-1] != dim or t.shape != x.shape[:2] or x.shape[1] < 2:
        raise ValueError(
            f"trajectory models need windows x of shape (batch, window + 1 >= 2, particles, "
            f"{dim}) and t of shape (batch, window + 1), got {tuple(x.shape)} and "
            f"{tuple(t.shape)}; train them with neqgen.data.paths.PathDataModule"
        )


def system_noise(system_config: dict | None, setting: str) -> float:
    """Return the noise amplitude sqrt(2 / beta) at t = 0 of the system in a resolved config.

    Raises
    ------
    ValueError
        If system_config is None. The message names ``setting``, the config key to set.
    """
    if system_config is None:
        raise ValueError(
            f"{setting} is null and no system_config was given; set {setting} to the noise "
            f"amplitude sqrt(2 / beta) or train through `neqgen train`"
        )
    kwargs = {key: value for key, value in system_config.items() if key != "name"}
    system = hydra.utils.instantiate(kwargs, _convert_="all")
    return system.noise_scale(0.0)
