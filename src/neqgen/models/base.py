"""The one sampling interface that every generative model implements."""

from __future__ import annotations

from abc import abstractmethod

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm


class GenerativeModel(pl.LightningModule):
    """A LightningModule that learns p(x, t) from ensembles and samples it at any time.

    Subclasses implement :meth:`loss` on a batch of frames and :meth:`sample_times`, which
    draws one sample per requested time. Evaluation only calls :meth:`sample`, so it never
    needs to know which family a model belongs to.

    Parameters
    ----------
    dim:
        Dimension of the state space.
    horizon:
        Last recorded time of the training data; times are normalised by it.
    domain:
        Per-dimension (low, high) bounds of the system's region of interest.
    learning_rate:
        Initial Adam learning rate.
    """

    family: str = "unknown"

    def __init__(self, dim: int, horizon: float, domain: list[list[float]], learning_rate: float):
        super().__init__()
        if not learning_rate > 0:
            raise ValueError(f"model.learning_rate must be positive, got {learning_rate}")
        self.dim = dim
        self.horizon = float(horizon)
        self.domain = [[float(low), float(high)] for low, high in domain]
        self.learning_rate = learning_rate

    @abstractmethod
    def loss(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return the scalar training loss of x (frames, particles, dim) at times t (frames,)."""

    @abstractmethod
    def sample_times(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Draw one sample for each entry of t, shape (n,), and return shape (n, dim)."""

    @torch.no_grad()
    def sample(
        self,
        times: torch.Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
        batch_size: int = 65536,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw n_samples independent samples of p(x, t) at each of the given times.

        Parameters
        ----------
        times:
            Physical times, shape (n_times,), inside [0, horizon].
        generator:
            Random generator on the model's device, for reproducible samples.
        batch_size:
            Number of samples drawn per call of :meth:`sample_times`.

        Returns
        -------
        torch.Tensor
            Samples of shape (n_times, n_samples, dim) on the CPU.
        """
        times = self.check_times(times)
        was_training = self.training
        self.eval()
        flat = times.repeat_interleave(n_samples).to(self.device)
        chunks = []
        for start in tqdm(
            range(0, len(flat), batch_size),
            desc=f"sample {type(self).__name__}",
            disable=not progress,
        ):
            chunks.append(self.sample_times(flat[start : start + batch_size], generator).cpu())
        self.train(was_training)
        return torch.cat(chunks).reshape(len(times), n_samples, self.dim)

    def check_times(self, times) -> torch.Tensor:
        """Return times as a flat float tensor; raise if any lies outside [0, horizon]."""
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
        if ((times < 0) | (times > self.horizon * (1 + 1e-6))).any():
            raise ValueError(
                f"sample times must lie in [0, {self.horizon}] (the training horizon), "
                f"got min {float(times.min())}, max {float(times.max())}"
            )
        return times

    def training_step(self, batch, batch_index):
        x, t = batch
        loss = self.loss(x, t)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_index):
        x, t = batch
        loss = self.loss(x, t)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        """Use Adam with the learning rate annealed on a cosine to 1% over max_epochs."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if not max_epochs or max_epochs < 1:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max_epochs, eta_min=0.01 * self.learning_rate
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
