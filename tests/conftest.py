"""Shared fixtures: the project's config directory and composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neqgen.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests use small tensors, for which extra intra-op threads only add synchronisation
# (and slow down sharply when another process is using the cores).
torch.set_num_threads(1)
CONFIG_DIR = REPO_ROOT / "conf"


@pytest.fixture
def tiny_config(tmp_path):
    """Return a factory of tiny-sized configs whose outputs all land under tmp_path."""

    def compose(*overrides: str):
        paths = [
            f"paths.{name}={tmp_path / name}"
            for name in ("data", "models", "metrics", "plots", "mlruns")
        ]
        return load_config(["experiment=tiny", *paths, *overrides], CONFIG_DIR)

    return compose
