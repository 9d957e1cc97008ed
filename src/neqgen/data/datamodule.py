"""A LightningDataModule that serves an ensemble as batches of frames."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from neqgen.data.dataset import Ensemble, load_ensemble, select_particles


def split_particles(
    n_particles: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split particle indices into sorted training and validation sets of whole trajectories.

    The split is a permutation drawn with ``numpy.random.default_rng(seed)``. Its first
    round(val_fraction * n) entries (at least one) are the validation particles. The frame
    and the path datamodules share it, so one seed holds out the same particles in both.

    Raises
    ------
    ValueError
        If val_fraction is outside (0, 1) or the split would leave no training particle.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_particles)
    n_val = max(1, int(round(val_fraction * n_particles)))
    if n_val >= n_particles:
        raise ValueError(
            f"data.val_fraction={val_fraction} leaves no training particle out of "
            f"{n_particles}; lower it or simulate more particles"
        )
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def check_positive_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first data.<size> that is not a positive integer."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"data.{name} must be a positive integer, got {value!r}")


class FrameDataset(Dataset):
    """Items are (positions, time) of one frame: (particles_per_frame, dim) and a scalar.

    With ``random=True`` each item draws a fresh random subset of the frame's particles, and
    every frame appears ``repeats`` times an epoch. With ``random=False`` (validation) the
    first ``particles_per_frame`` particles of each frame are used once.
    """

    def __init__(
        self,
        positions: np.ndarray,
        times: np.ndarray,
        particles_per_frame: int,
        repeats: int = 1,
        random: bool = True,
    ):
        self.positions = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float32))
        self.times = torch.from_numpy(np.asarray(times, dtype=np.float32))
        self.particles_per_frame = min(particles_per_frame, self.positions.shape[1])
        self.repeats = repeats
        self.random = random

    def __len__(self) -> int:
        return len(self.times) * self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frame = index % len(self.times)
        if self.random:
            particles = torch.randint(self.positions.shape[1], (self.particles_per_frame,))
            return self.positions[frame, particles], self.times[frame]
        return self.positions[frame, : self.particles_per_frame], self.times[frame]


class EnsembleDataModule(pl.LightningDataModule):
    """Split an ensemble's particles into training and validation sets and batch frames.

    A batch is ``(x, t)`` with x of shape (frames_per_batch, particles_per_frame, dim) and
    t of shape (frames_per_batch,), so a model gets whole frames at known physical times.

    Parameters
    ----------
    path:
        Ensemble file written by ``neqgen simulate``.
    val_fraction:
        Fraction of the particles held back for validation (whole trajectories).
    repeats_per_epoch:
        How often each frame is drawn per training epoch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        frames_per_batch: int = 16,
        particles_per_frame: int = 256,
        val_fraction: float = 0.1,
        repeats_per_epoch: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        check_positive_sizes(
            frames_per_batch=frames_per_batch,
            particles_per_frame=particles_per_frame,
            repeats_per_epoch=repeats_per_epoch,
        )
        self.path = path
        self.frames_per_batch = frames_per_batch
        self.particles_per_frame = particles_per_frame
        self.val_fraction = val_fraction
        self.repeats_per_epoch = repeats_per_epoch
        self.num_workers = num_workers
        self.seed = seed
        self.ensemble: Ensemble | None = None

    def prepare(self) -> Ensemble:
        """Load (once) and return the ensemble, so callers can read its sizes before fit."""
        if self.ensemble is None:
            self.ensemble = load_ensemble(self.path)
        return self.ensemble

    def setup(self, stage: str | None = None) -> None:
        ensemble = self.prepare()
        train, val = split_particles(ensemble.n_particles, self.val_fraction, self.seed)
        # The loaded positions are memory-mapped, so these copies are the only ones in memory.
        self.train_set = FrameDataset(
            select_particles(ensemble.positions, train),
            ensemble.times,
            self.particles_per_frame,
            repeats=self.repeats_per_epoch,
        )
        self.val_set = FrameDataset(
            select_particles(ensemble.positions, val),
            ensemble.times,
            self.particles_per_frame,
            random=False,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.frames_per_batch,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=len(self.train_set) > self.frames_per_batch,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.frames_per_batch, num_workers=self.num_workers
        )
