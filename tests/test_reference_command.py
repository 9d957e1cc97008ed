"""`neqgen reference`: the exact density on a grid and scores against it."""

from __future__ import annotations

import json
import math

import numpy as np
from mlflow.tracking import MlflowClient

from neqgen.cli import main

from .conftest import CONFIG_DIR


def test_reference_scores_noise_floor_against_exact_density(tmp_path):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "metrics", "plots")]
    common = ["--config-dir", str(CONFIG_DIR)]
    overrides = ["experiment=tiny", "protocol=one_well", *paths]

    assert main([*common, "simulate", *overrides]) == 0
    assert main([*common, "reference", *overrides]) == 0
    assert main([*common, "evaluate", "--noise-floor", *overrides]) == 0

    reference = np.load(tmp_path / "data" / "five_well" / "one_well" / "reference.npz")
    table = np.genfromtxt(
        tmp_path / "plots" / "five_well" / "one_well" / "equilibrium.csv",
        delimiter=",",
        names=True,
    )
    floor = json.loads(
        (tmp_path / "metrics" / "five_well" / "one_well" / "r0" / "noise_floor.json").read_text()
    )

    np.testing.assert_allclose(reference["masses"].sum(axis=(1, 2)), 1.0, atol=1e-10)
    # All the mass starts in one well of five, so the start is far from equilibrium.
    assert table["js"][0] > 0.3
    assert np.all(table["entropy_production"] > 0)
    # 200 samples on 8 x 8 bins: JS to the exact law is of order (K - 1) / (8 N) ~ 0.04
    # nats for K = 64 bins, far below the ln 2 of disjoint laws.
    assert 0 < floor["jsd_exact_mean"] < 0.1
    assert floor["jsd_exact_max"] <= math.log(2)
    assert floor["kl_exact_mean"] >= 0
    # The ensemble relaxes from one well: the exact entropy produced is positive.
    assert floor["entropy_early_exact"] > 0


def test_reference_archive_is_byte_reproducible(tmp_path):
    """Rerunning the stage writes the same bytes, so DVC records the same hash."""
    common = ["--config-dir", str(CONFIG_DIR)]
    overrides = ["experiment=tiny", "system=prinz_tilt", f"paths.data={tmp_path / 'data'}"]
    overrides.append(f"paths.plots={tmp_path / 'plots'}")
    path = tmp_path / "data" / "prinz_tilt" / "uniform" / "reference.npz"

    assert main([*common, "reference", *overrides]) == 0
    first = path.read_bytes()
    assert main([*common, "reference", *overrides]) == 0

    assert path.read_bytes() == first


def test_evaluate_foreign_run_uses_stand_in(tmp_path):
    """A checkpoint whose training run lives in another MLflow store is still evaluated."""
    common = ["--config-dir", str(CONFIG_DIR)]
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "models", "metrics", "plots")]
    overrides = ["experiment=tiny", "model=oracle", *paths]
    assert main([*common, "simulate", *overrides]) == 0
    assert main([*common, "train", *overrides, f"paths.mlruns={tmp_path / 'first'}"]) == 0

    code = main([*common, "evaluate", *overrides, f"paths.mlruns={tmp_path / 'second'}"])

    assert code == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "five_well"]
    names = {run.info.run_name for run in client.search_runs([experiment.experiment_id])}
    assert "oracle-five_well-uniform-r0" in names
