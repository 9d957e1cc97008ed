"""The DVC pipeline end to end on tiny sizes, with a real DVC repo and MLflow store."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from neqgen.data.dataset import load_ensemble

from .conftest import REPO_ROOT

PROTOCOLS = ("uniform", "one_well")
MODELS = ("energy", "diffusion")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    """A git + DVC repository with the project's pipeline, reproduced at tiny sizes."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("conf", "src"):
        shutil.copytree(
            REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    pipeline = repo / "conf" / "pipeline" / "default.yaml"
    pipeline.write_text(pipeline.read_text().replace("experiment: default", "experiment: tiny"))

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("NEQGEN_CONFIG_DIR", None)
    env.update(
        GIT_AUTHOR_NAME="neqgen test",
        GIT_AUTHOR_EMAIL="test@neqgen.invalid",
        GIT_COMMITTER_NAME="neqgen test",
        GIT_COMMITTER_EMAIL="test@neqgen.invalid",
    )
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "config", "core.analytics", "false"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline"], repo, env)
    run(["dvc", "repro"], repo, env)
    return repo, env


@pytest.mark.slow
def test_pipeline_writes_summary_for_every_model(pipeline_repo):
    repo, _ = pipeline_repo
    summary = json.loads((repo / "metrics" / "summary" / "five_well.json").read_text())
    summary = summary["five_well"]

    assert sorted(summary) == sorted(PROTOCOLS)
    for protocol in PROTOCOLS:
        assert sorted(summary[protocol]) == sorted([*MODELS, "noise_floor", "equilibrium"])
        distance = summary[protocol]["equilibrium"]
        assert 0 <= distance["js_from_boltzmann_mean"] <= math.log(2), f"{protocol} equilibrium"
        for name in [*MODELS, "noise_floor"]:
            metrics = summary[protocol][name]
            assert 0 <= metrics["jsd_mean"] <= math.log(2), f"{protocol}/{name} jsd"
            assert metrics["w1_mean"] >= 0, f"{protocol}/{name} w1"
            assert 0 <= metrics["jsd_exact_mean"] <= math.log(2), f"{protocol}/{name} exact"


@pytest.mark.slow
def test_pipeline_metrics_show_prints_summary(pipeline_repo):
    repo, env = pipeline_repo

    output = run(["dvc", "metrics", "show"], repo, env)

    assert "metrics/summary/five_well.json" in output
    assert "jsd_mean" in output


@pytest.mark.slow
def test_pipeline_is_up_to_date_after_repro(pipeline_repo):
    repo, env = pipeline_repo

    output = run(["dvc", "status"], repo, env)

    assert "up to date" in output


@pytest.mark.slow
def test_pipeline_runs_are_tracked_in_mlflow(pipeline_repo):
    repo, _ = pipeline_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("five_well")
    runs = client.search_runs([experiment.experiment_id])
    training = [run for run in runs if "model" in run.data.tags and "kind" not in run.data.tags]
    evaluations = [run for run in runs if run.data.tags.get("kind") == "evaluation"]

    assert len(training) == len(PROTOCOLS) * len(MODELS)
    assert len(evaluations) == len(PROTOCOLS) * len(MODELS)
    assert any(run.data.tags.get("kind") == "report" for run in runs)
    for run_info in training:
        tags, metrics = run_info.data.tags, run_info.data.metrics
        protocol = tags["protocol"]
        dataset = load_ensemble(repo / "data" / "five_well" / protocol / "train.npz")
        artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
        figures = {a.path for a in client.list_artifacts(run_info.info.run_id, "figures")}
        history = client.get_metric_history(run_info.info.run_id, "train/loss")

        assert tags["dataset_hash"] == dataset.content_hash
        assert "eval/jsd_mean" in metrics
        assert "eval/w1_mean" in metrics
        assert len(history) == 1  # experiment=tiny trains one epoch
        assert run_info.data.params["config.model.name"] == tags["model"]
        assert {"config.yaml", "checkpoint", "figures"} <= artifacts
        assert "figures/snapshots.png" in figures

    for evaluation in evaluations:
        series = client.get_metric_history(evaluation.info.run_id, "eval/jsd")
        parent = evaluation.data.tags["mlflow.parentRunId"]
        assert len(series) == 6, "experiment=tiny scores 6 frames"
        assert parent in {run.info.run_id for run in training}


@pytest.mark.slow
def test_model_parameter_change_reruns_only_that_model(pipeline_repo):
    repo, env = pipeline_repo
    energy = repo / "conf" / "model" / "energy.yaml"
    original = energy.read_text()
    energy.write_text(original.replace("learning_rate: 1.0e-3", "learning_rate: 5.0e-4"))
    try:
        output = run(["dvc", "status"], repo, env)
    finally:
        energy.write_text(original)

    for protocol in PROTOCOLS:
        assert f"train@five_well-{protocol}-energy" in output
        assert f"train@five_well-{protocol}-diffusion" not in output
        assert f"simulate@five_well-{protocol}" not in output


@pytest.mark.slow
def test_system_parameter_change_reruns_simulation(pipeline_repo):
    repo, env = pipeline_repo
    system = repo / "conf" / "system" / "five_well.yaml"
    original = system.read_text()
    system.write_text(original.replace("k: 10.0", "k: 12.0"))
    try:
        output = run(["dvc", "status"], repo, env)
    finally:
        system.write_text(original)

    for protocol in PROTOCOLS:
        assert f"simulate@five_well-{protocol}" in output
