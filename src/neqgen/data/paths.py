"""A LightningDataModule that serves an ensemble as windows of consecutive frames.

Trajectory models learn how each particle moves from one frame to the next, so a batch
follows the same particles across a window of frames instead of mixing unrelated
particles of single frames.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from neqgen.data.datamodule import check_positive_sizes, split_particles
from neqgen.data.dataset import Ensemble, load_ensemble, select_particles


class WindowDataset(Dataset):
    """Items are windows (positions, times) of shapes (window + 1, particles, dim), (window + 1,).

    Every start frame k in 0 .. n_frames - window - 1 gives the frames k .. k + window of one
    set of particles. With ``random=True`` each item draws a fresh random set of particles
    and every start frame appears ``repeats`` times an epoch. With ``random=False``
    (validation) each start frame appears once with the first ``particles_per_window``
    particles.
    """

    def __init__(
        self,
        positions: np.ndarray,
        times: np.ndarray,
        window: int,
        particles_per_window: int,
        repeats: int = 1,
        random: bool = True,
    ):
        self.positions = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32))
        self.times = torch.from_numpy(np.asarray(times, dtype=np.float32))
        self.window = window
        self.n_starts = len(self.times) - window
        self.particles_per_window = min(particles_per_window, self.positions.shape[1])
        self.repeats = repeats
        self.random = random

    def __len__(self) -> int:
        return self.n_starts * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index % self.n_starts
        frames = slice(start, start + self.window + 1)
        if self.random:
            particles = torch.randperm(self.positions.shape[1])[: self.particles_per_window]
        else:
            particles = torch.arange(self.particles_per_window)
        return self.positions[frames][:, particles], self.times[frames]


class PathDataModule(pl.LightningDataModule):
    """Split an ensemble into training and validation trajectories and batch windows of them.

    A batch is ``(x, t)`` with x of shape (windows_per_batch, window + 1, particles_per_window,
    dim) and t of shape (windows_per_batch, window + 1): x[b, :, j] is one particle followed
    over window + 1 consecutive frames at times t[b]. The particles are split into training
    and validation trajectories exactly as :class:`neqgen.data.datamodule.EnsembleDataModule`
    splits them for the same seed.

    Parameters
    ----------
    path:
        Ensemble file written by ``neqgen simulate``.
    windows_per_batch:
        Windows per batch. None takes frames_per_batch // (window + 1), so that a batch
        contains as many positions as a batch of the frames datamodule with the same data
        config.
    particles_per_window:
        Particles followed through each window. None takes particles_per_frame.
    window:
        Number of frame-to-frame steps in a window (1 gives pairs of consecutive frames).
    val_fraction:
        Fraction of the particles held back for validation (whole trajectories).
    repeats_per_epoch:
        How often each start frame is drawn per training epoch.
    frames_per_batch, particles_per_frame:
        The frames datamodule's batch sizes from ``conf/data``, used only when
        windows_per_batch or particles_per_window is None.

    Raises
    ------
    ValueError
        For a size below 1 or a val_fraction outside (0, 1). The message names the setting.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        windows_per_batch: int | None = None,
        particles_per_window: int | None = None,
        window: int = 1,
        val_fraction: float = 0.1,
        repeats_per_epoch: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        frames_per_batch: int = 16,
        particles_per_frame: int = 256,
    ):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if window < 1:
            raise ValueError(f"window must be at least 1 frame-to-frame step, got {window}")
        check_positive_sizes(
            frames_per_batch=frames_per_batch,
            particles_per_frame=particles_per_frame,
            repeats_per_epoch=repeats_per_epoch,
        )
        if windows_per_batch is None:
            windows_per_batch = max(1, frames_per_batch // (window + 1))
        if particles_per_window is None:
            particles_per_window = particles_per_frame
        for name, value in (
            ("windows_per_batch", windows_per_batch),
            ("particles_per_window", particles_per_window),
            ("repeats_per_epoch", repeats_per_epoch),
        ):
            if value < 1:
                raise ValueError(f"data.{name} must be at least 1, got {value}")
        self.path = path
        self.windows_per_batch = int(windows_per_batch)
        self.particles_per_window = int(particles_per_window)
        self.window = int(window)
        self.val_fraction = val_fraction
        self.repeats_per_epoch = repeats_per_epoch
        self.num_workers = num_workers
        self.seed = seed
        self.ensemble: Ensemble | None = None

    def prepare(self) -> Ensemble:
        """Load (once) and return the ensemble, so callers can read its sizes before fit.

        Raises
        ------
        ValueError
            If the ensemble has no more than ``window`` frames, so no window fits.
        """
        if self.ensemble is None:
            ensemble = load_ensemble(self.path)
            if ensemble.n_frames <= self.window:
                raise ValueError(
                    f"window={self.window} needs at least {self.window + 1} frames, but "
                    f"{self.path} has {ensemble.n_frames}; lower the model's window"
                )
            self.ensemble = ensemble
        return self.ensemble

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the sorted training and validation particle indices."""
        return split_particles(self.prepare().n_particles, self.val_fraction, self.seed)

    def initial_positions(self) -> torch.Tensor:
        """Return the training particles at the first frame, shape (n_train, dim), float32."""
        train, _ = self.split()
        return torch.from_numpy(np.asarray(self.prepare().positions[0, train], np.float32))

    def frame_times(self) -> torch.Tensor:
        """Return the recorded times of the ensemble, shape (n_frames,), float64."""
        return torch.from_numpy(np.asarray(self.prepare().times, dtype=np.float64))

    def setup(self, stage: str | None = None) -> None:
        ensemble = self.prepare()
        train, val = self.split()
        self.train_set = WindowDataset(
            select_particles(ensemble.positions, train),
            ensemble.times,
            self.window,
            self.particles_per_window,
            repeats=self.repeats_per_epoch,
        )
        self.val_set = WindowDataset(
            select_particles(ensemble.positions, val),
            ensemble.times,
            self.window,
            self.particles_per_window,
            random=False,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.windows_per_batch,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=len(self.train_set) > self.windows_per_batch,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.windows_per_batch, num_workers=self.num_workers
        )
