"""The DVC pipeline end to end on tiny sizes, with a real DVC repo and MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from neqgen.data.dataset import load_ensemble

from .conftest import MODELS, PROTOCOLS, REPLICAS, SYSTEMS, run


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_pipeline_writes_summary_for_every_model(pipeline_repo, system):
    repo, _ = pipeline_repo
    summary = json.loads((repo / "metrics" / "summary" / f"{system}.json").read_text())
    summary = summary[system]

    assert sorted(summary) == sorted(PROTOCOLS)
    for protocol in PROTOCOLS:
        entries = summary[protocol]
        assert sorted(entries) == sorted([*MODELS, "noise_floor", "equilibrium", "comparisons"])
        distance = entries["equilibrium"]
        assert 0 <= distance["js_from_boltzmann_mean"] <= math.log(2), f"{protocol} equilibrium"
        for name in [*MODELS, "noise_floor"]:
            metrics = entries[name]
            assert metrics["n_replicas"] == len(REPLICAS), f"{protocol}/{name} replicas"
            # ln 2 is the bound for disjoint samples; the mean over replicas may round above it.
            bound = math.log(2) + 1e-12
            assert 0 <= metrics["jsd_mean"] <= bound, f"{protocol}/{name} jsd"
            assert metrics["jsd_mean_std"] >= 0, f"{protocol}/{name} spread"
            assert metrics["w1_mean"] >= 0, f"{protocol}/{name} w1"
            assert 0 <= metrics["jsd_exact_mean"] <= bound, f"{protocol}/{name} exact"
            assert "entropy_early" in metrics, f"{protocol}/{name} entropy production"
        # Each model against the best one (not itself) and against the noise floor.
        assert len(entries["comparisons"]) == 2 * len(MODELS) - 1


@pytest.mark.slow
def test_pipeline_writes_report_figures(pipeline_repo):
    repo, _ = pipeline_repo
    for system in SYSTEMS:
        figures = {path.name for path in (repo / "plots" / "figures" / system).iterdir()}
        assert "error_vs_equilibrium.png" in figures, system
        for protocol in PROTOCOLS:
            assert f"{protocol}_metrics_over_time.png" in figures, f"{system}/{protocol}"
            assert f"{protocol}_entropy_production.png" in figures, f"{system}/{protocol}"


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

    assert len(training) == len(PROTOCOLS) * len(REPLICAS) * len(MODELS)
    assert len(evaluations) == len(PROTOCOLS) * len(REPLICAS) * len(MODELS)
    assert any(run.data.tags.get("kind") == "report" for run in runs)
    for run_info in training:
        tags, metrics = run_info.data.tags, run_info.data.metrics
        protocol, replica = tags["protocol"], tags["replica"]
        dataset = load_ensemble(
            repo / "data" / "five_well" / protocol / f"r{replica}" / "train.npz"
        )
        artifacts = {a.path for a in client.list_artifacts(run_info.info.run_id)}
        figures = {a.path for a in client.list_artifacts(run_info.info.run_id, "figures")}
        history = client.get_metric_history(run_info.info.run_id, "train/loss")

        assert tags["dataset_hash"] == dataset.content_hash
        assert "eval/jsd_mean" in metrics
        assert "eval/w1_mean" in metrics
        # experiment=tiny trains one epoch; the oracle has nothing to train.
        assert len(history) == (0 if tags["model"] == "oracle" else 1), tags["model"]
        assert run_info.data.params["config.model.name"] == tags["model"]
        assert {"config.yaml", "checkpoint", "figures"} <= artifacts
        assert "figures/snapshots.png" in figures

    for evaluation in evaluations:
        series = client.get_metric_history(evaluation.info.run_id, "eval/jsd")
        parent = evaluation.data.tags["mlflow.parentRunId"]
        assert len(series) == 6, "experiment=tiny scores 6 frames"
        assert parent in {run.info.run_id for run in training}


@pytest.mark.slow
def test_pipeline_training_runs_carry_figures_and_summary(pipeline_repo, tmp_path):
    repo, _ = pipeline_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    always = {
        "figures/density_snapshots.png",
        "figures/metrics_over_time.png",
        "figures/marginal_animation.gif",
        "figures/snapshots.png",
    }
    for system in SYSTEMS:
        experiment = client.get_experiment_by_name(system)
        runs = client.search_runs([experiment.experiment_id])
        training = [
            run for run in runs if "model" in run.data.tags and "kind" not in run.data.tags
        ]
        evaluations = [run for run in runs if run.data.tags.get("kind") == "evaluation"]
        assert training, system
        for run_info in training:
            run_id, tags = run_info.info.run_id, run_info.data.tags
            model = tags["model"]
            figures = {a.path for a in client.list_artifacts(run_id, "figures")}
            expected = set(always)
            if model in ("energy", "stationary_energy"):
                expected.add("figures/energy_vs_potential.png")
            if model in ("neural_sde", "bridge"):
                expected.add("figures/sample_paths.png")
            page = client.download_artifacts(run_id, "summary.md", str(tmp_path / run_id))
            text = Path(page).read_text()

            assert expected <= figures, f"{system}/{model}: {sorted(expected - figures)}"
            assert run_info.info.run_name in text, f"{system}/{model}"
            assert tags["dataset_hash"] in text, f"{system}/{model}"
            for metric in ("jsd_exact_mean", "jsd_mean", "w1_mean"):
                assert f"| {metric} | " in text, f"{system}/{model} {metric}"
            assert "n/a | n/a |" not in text, f"{system}/{model}: noise floor missing"
            for figure in expected:
                assert f"]({figure})" in text, f"{system}/{model} {figure}"
        for evaluation in evaluations:
            tags = evaluation.data.tags
            name = evaluation.info.run_name
            assert name.startswith(f"{tags['model']}-{system}-{tags['protocol']}-r"), name
            assert name.endswith("-evaluation"), name
            for key in ("family", "replica", "dataset_hash", "dataset_path"):
                assert key in tags, f"{name} lacks tag {key}"


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
        for replica in REPLICAS:
            stage = f"five_well-{protocol}-{replica}"
            assert f"train@{stage}-energy" in output
            assert f"train@{stage}-diffusion" not in output
            assert f"simulate@{stage}" not in output


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
        for replica in REPLICAS:
            assert f"simulate@five_well-{protocol}-{replica}" in output
        assert f"simulate@prinz_quench-{protocol}-0" not in output
