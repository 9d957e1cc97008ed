"""Ensemble files and the Lightning DataModule over them."""

from neqgen.data.datamodule import EnsembleDataModule, FrameDataset
from neqgen.data.dataset import DatasetError, Ensemble, load_ensemble, save_ensemble

__all__ = [
    "DatasetError",
    "Ensemble",
    "EnsembleDataModule",
    "FrameDataset",
    "load_ensemble",
    "save_ensemble",
]
