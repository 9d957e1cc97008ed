"""Versioned datasets: DVC remotes, push and pull, reads at a revision, lineage, experiments.

The fast tests build small git + DVC repositories in tmp_path. The slow ones publish the
tiny pipeline of ``pipeline_repo`` to a local remote, clone it and pull it elsewhere, read
its datasets back through DVC and run an experiment in the clone.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from neqgen.data.dataset import DatasetError, load_ensemble, save_ensemble
from neqgen.data.versioned import open_dataset
from neqgen.lineage import (
    UNKNOWN,
    dataset_lineage,
    file_md5,
    find_project_root,
    log_dataset_input,
)

from .conftest import MODELS, PROTOCOLS, REPLICAS, REPO_ROOT, SYSTEMS, run

EXPERIMENT_OMEGA = 3.14
EXPERIMENT_NAME = "omega-pi"


def git_revision(repo: Path, env: dict[str, str], ref: str = "HEAD") -> str:
    return run(["git", "rev-parse", ref], repo, env).strip()


def lock_outputs(repo: Path) -> dict[str, str]:
    """Return {path: md5} of every output that dvc.lock records."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outputs = {}
    for stage in lock["stages"].values():
        for output in stage.get("outs", []):
            outputs[output["path"]] = output["md5"]
    return outputs


def directory_manifest(repo: Path, md5: str) -> dict[str, str]:
    """Return {relative path: md5} of a directory output from its .dir object in the cache."""
    manifest = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}


def write_ensemble(path: Path, seed: int) -> None:
    positions = np.random.default_rng(seed).normal(size=(3, 5, 2))
    save_ensemble(path, positions, np.linspace(0.0, 1.0, 3), {"seed": seed})


@pytest.fixture
def small_repo(tmp_path):
    """A git + DVC repository with one ensemble tracked by `dvc add` in two commits."""
    repo = tmp_path / "small"
    repo.mkdir()
    env = _git_env()
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "config", "core.analytics", "false"], repo, env)
    dataset = repo / "data" / "train.npz"
    revisions = []
    for seed in (0, 1):
        write_ensemble(dataset, seed)
        run(["dvc", "add", "-q", "data/train.npz"], repo, env)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", f"ensemble with seed {seed}"], repo, env)
        revisions.append(git_revision(repo, env))
    return repo, env, revisions


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(
        GIT_AUTHOR_NAME="neqgen test",
        GIT_AUTHOR_EMAIL="test@neqgen.invalid",
        GIT_COMMITTER_NAME="neqgen test",
        GIT_COMMITTER_EMAIL="test@neqgen.invalid",
    )
    return env


# Fast tests: the project's remote, lineage and reads at a revision on small repositories.


def test_project_default_remote_is_outside_repository():
    from dvc.config import Config

    config = Config(dvc_dir=str(REPO_ROOT / ".dvc"))
    name = config["core"].get("remote")

    assert name, "no default remote in .dvc/config"
    url = Path(config["remote"][name]["url"])
    assert url.is_absolute(), url
    assert not url.resolve().is_relative_to(REPO_ROOT.resolve()), url


def test_lineage_md5_matches_dvc_add(small_repo):
    repo, env, revisions = small_repo
    recorded = yaml.safe_load((repo / "data" / "train.npz.dvc").read_text())["outs"][0]["md5"]

    lineage = dataset_lineage(repo / "data" / "train.npz")

    assert lineage.dvc_md5 == recorded
    assert lineage.path == "data/train.npz"
    assert lineage.git_revision == revisions[-1]
    assert lineage.git_dirty == "false"
    assert Path(lineage.project_root) == repo.resolve()


def test_lineage_marks_modified_tracked_file_dirty(small_repo):
    repo, _, _ = small_repo
    (repo / "data" / "train.npz.dvc").write_text("outs: []\n")

    assert dataset_lineage(repo / "data" / "train.npz").git_dirty == "true"


def test_lineage_outside_git_records_unknown(tmp_path):
    dataset = tmp_path / "train.npz"
    write_ensemble(dataset, seed=0)

    lineage = dataset_lineage(dataset)

    assert find_project_root(dataset) is None
    assert lineage.git_revision == UNKNOWN
    assert lineage.git_dirty == UNKNOWN
    assert lineage.dvc_md5 == file_md5(dataset)
    assert "mlflow.source.git.commit" not in lineage.tags()


def test_dataset_input_is_logged_with_dvc_source(small_repo, tmp_path):
    repo, _, revisions = small_repo
    lineage = dataset_lineage(repo / "data" / "train.npz")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("lineage", artifact_location=tmp_path.as_uri())
    run_id = client.create_run(experiment, tags=lineage.tags()).info.run_id

    log_dataset_input(client, run_id, lineage)

    logged = client.get_run(run_id)
    (dataset_input,) = logged.inputs.dataset_inputs
    source = json.loads(dataset_input.dataset.source)
    context = {tag.key: tag.value for tag in dataset_input.tags}
    assert dataset_input.dataset.digest == lineage.dvc_md5
    assert dataset_input.dataset.source_type == "dvc"
    assert source["path"] == "data/train.npz"
    assert source["rev"] == revisions[-1]
    assert context["mlflow.data.context"] == "training"
    assert logged.data.tags["dataset.dvc_md5"] == lineage.dvc_md5
    assert logged.data.tags["git.revision"] == revisions[-1]


def test_dataset_source_loads_file_at_revision(small_repo, tmp_path):
    repo, _, revisions = small_repo
    lineage = dataset_lineage(repo / "data" / "train.npz")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("lineage", artifact_location=tmp_path.as_uri())
    run_id = client.create_run(experiment).info.run_id
    log_dataset_input(client, run_id, lineage)
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs

    source = mlflow.data.get_source(dataset_input)
    local = source.load(tmp_path / "fetched")

    assert file_md5(local) == lineage.dvc_md5


def test_open_dataset_reads_each_revision(small_repo):
    repo, _, revisions = small_repo

    for seed, revision in enumerate(revisions):
        ensemble = open_dataset("data/train.npz", repo=repo, rev=revision)
        expected = np.random.default_rng(seed).normal(size=(3, 5, 2)).astype(np.float32)

        np.testing.assert_array_equal(ensemble.positions, expected, err_msg=revision)
        assert ensemble.metadata["seed"] == seed


def test_open_dataset_missing_path_names_it(small_repo):
    repo, _, revisions = small_repo

    with pytest.raises(DatasetError, match="data/missing.npz"):
        open_dataset("data/missing.npz", repo=repo, rev=revisions[0])


# Slow tests: the tiny pipeline published to a remote, cloned and pulled.


@pytest.fixture(scope="module")
def published(pipeline_repo, tmp_path_factory):
    """Commit the pipeline's lock and .gitignore files, push to a local remote, clone and pull.

    Returns (repo, clone, env, remote). The pipeline repository keeps its files; it gains
    one commit and a default remote in .dvc/config.
    """
    repo, env = pipeline_repo
    remote = tmp_path_factory.mktemp("dvc-remote")
    run(["dvc", "remote", "add", "-d", "test_remote", str(remote)], repo, env)
    tracked = [".dvc/config", "dvc.lock"] + [
        name for name in ("data", "models", "metrics", "plots") if (repo / name).exists()
    ]
    run(["git", "add", "--", *tracked], repo, env)
    run(["git", "commit", "-qm", "pipeline outputs"], repo, env)
    run(["dvc", "push", "--run-cache"], repo, env)

    clone = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent, env)
    run(["dvc", "pull", "--run-cache"], clone, env)
    return repo, clone, env, remote


@pytest.mark.slow
def test_pull_restores_every_output(published):
    repo, clone, _, _ = published
    outputs = lock_outputs(repo)

    assert lock_outputs(clone) == outputs
    for path, md5 in outputs.items():
        if md5.endswith(".dir"):
            manifest = directory_manifest(clone, md5)
            pulled = {
                file.relative_to(clone / path).as_posix()
                for file in (clone / path).rglob("*")
                if file.is_file()
            }
            assert pulled == set(manifest), path
            for relpath, file_hash in manifest.items():
                assert file_md5(clone / path / relpath) == file_hash, f"{path}/{relpath}"
                assert file_md5(repo / path / relpath) == file_hash, f"{path}/{relpath}"
        else:
            assert file_md5(clone / path) == md5, path
            assert file_md5(repo / path) == md5, path


@pytest.mark.slow
def test_push_covers_every_output(published):
    repo, clone, env, remote = published
    outputs = lock_outputs(repo)
    objects = {
        f"{folder.name}{path.name}"
        for folder in (remote / "files" / "md5").iterdir()
        for path in folder.iterdir()
    }

    for system in SYSTEMS:
        assert f"metrics/summary/{system}.md" in outputs, system
        assert f"metrics/summary/{system}.json" in outputs, system
        assert f"plots/figures/{system}" in outputs, system
        for protocol in PROTOCOLS:
            for replica in REPLICAS:
                assert f"data/{system}/{protocol}/r{replica}/train.npz" in outputs
    for path, md5 in outputs.items():
        assert md5 in objects, f"{path} is not in the remote"
    # Every output is in DVC's care, so git ignores all of them in the clone.
    ignored = run(["git", "check-ignore", *outputs], clone, env).split()
    assert sorted(ignored) == sorted(outputs)


@pytest.mark.slow
def test_clone_has_nothing_to_reproduce(published):
    _, clone, env, _ = published

    status = run(["dvc", "status"], clone, env)
    dry = run(["dvc", "repro", "--dry"], clone, env)

    assert "up to date" in status
    assert "Running stage" not in dry


@pytest.mark.slow
def test_dvc_api_reads_dataset_at_revision(published, tmp_path):
    repo, _, env, _ = published
    # A fresh clone without `dvc pull`: DVC fetches the file from the remote.
    bare = tmp_path / "unpulled"
    run(["git", "clone", "-q", str(repo), str(bare)], tmp_path, env)
    revision = git_revision(repo, env)
    path = f"data/{SYSTEMS[0]}/{PROTOCOLS[0]}/r0/train.npz"

    ensemble = open_dataset(path, repo=bare, rev=revision)
    expected = load_ensemble(repo / path)

    np.testing.assert_array_equal(ensemble.positions, expected.positions)
    np.testing.assert_array_equal(ensemble.times, expected.times)
    assert ensemble.content_hash == expected.content_hash
    assert not (bare / path).exists(), "dvc.api must not check the file out"


@pytest.mark.slow
def test_dvc_get_fetches_dataset(published, tmp_path):
    repo, _, env, _ = published
    path = f"data/{SYSTEMS[-1]}/{PROTOCOLS[0]}/r{REPLICAS[-1]}/heldout.npz"
    target = tmp_path / "heldout.npz"

    run(["dvc", "get", str(repo), path, "-o", str(target), "--rev", "HEAD"], tmp_path, env)

    assert file_md5(target) == lock_outputs(repo)[path]
    assert load_ensemble(target).content_hash == load_ensemble(repo / path).content_hash


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_training_runs_record_dataset_lineage(published, system):
    repo, _, env, _ = published
    outputs = lock_outputs(repo)
    # The pipeline ran on the fixture's first commit, before the outputs were committed.
    revision = run(["git", "rev-list", "--max-parents=0", "HEAD"], repo, env).strip()
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(system)
    runs = client.search_runs([experiment.experiment_id])
    training = [run for run in runs if "model" in run.data.tags and "kind" not in run.data.tags]

    assert training, f"no training runs in {system}"
    for training_run in training:
        tags = training_run.data.tags
        path = f"data/{system}/{tags['protocol']}/r{tags['replica']}/train.npz"
        name = f"{tags['model']} r{tags['replica']}"
        (dataset_input,) = client.get_run(training_run.info.run_id).inputs.dataset_inputs
        source = json.loads(dataset_input.dataset.source)

        assert tags["dataset.path"] == path, name
        assert tags["dataset.dvc_md5"] == outputs[path], name
        assert tags["git.revision"] == revision, name
        assert tags["git.dirty"] == "false", name
        assert dataset_input.dataset.digest == outputs[path], name
        assert source["path"] == path, name
        assert source["rev"] == revision, name


@pytest.fixture(scope="module")
def experiment(published):
    """Run one DVC experiment in the clone with a faster rotation of the five-well system."""
    _, clone, env, _ = published
    output = run(
        [
            "dvc",
            "exp",
            "run",
            "--name",
            EXPERIMENT_NAME,
            "--set-param",
            f"conf/system/five_well.yaml:omega={EXPERIMENT_OMEGA}",
        ],
        clone,
        env,
    )
    return clone, env, output


@pytest.mark.slow
def test_exp_run_reruns_only_changed_system(experiment):
    _, _, output = experiment
    stages = re.findall(r"Running stage '([^']+)'", output)

    assert f"simulate@five_well-{PROTOCOLS[0]}-0" in stages
    assert "report@five_well" in stages
    for stage in stages:
        assert "five_well" in stage, f"{stage} does not depend on five_well but ran"


@pytest.mark.slow
def test_exp_show_lists_param_and_metrics(experiment):
    clone, env, _ = experiment

    baselines = json.loads(run(["dvc", "exp", "show", "--json"], clone, env))

    baseline = next(entry for entry in baselines if entry.get("experiments"))
    revisions = {
        revision["name"]: revision["data"]
        for experiment_entry in baseline["experiments"]
        for revision in experiment_entry["revs"]
    }
    assert EXPERIMENT_NAME in revisions, sorted(revisions)
    data = revisions[EXPERIMENT_NAME]
    params = data["params"]["conf/system/five_well.yaml"]["data"]
    base_params = baseline["data"]["params"]["conf/system/five_well.yaml"]["data"]
    assert params["omega"] == EXPERIMENT_OMEGA
    assert base_params["omega"] != EXPERIMENT_OMEGA
    for system in SYSTEMS:
        summary = data["metrics"][f"metrics/summary/{system}.json"]["data"][system]
        base_summary = baseline["data"]["metrics"][f"metrics/summary/{system}.json"]["data"]
        for protocol in PROTOCOLS:
            for model in MODELS:
                assert "jsd_mean" in summary[protocol][model], f"{system}/{protocol}/{model}"
        if system == "five_well":
            assert summary != base_summary[system], "five_well metrics did not change"
        else:
            assert summary == base_summary[system], f"{system} metrics changed"


@pytest.mark.slow
def test_repro_restores_stages_from_run_cache(experiment):
    clone, env, _ = experiment
    system_file = clone / "conf" / "system" / "five_well.yaml"
    # Back to the commit, then to the experiment's omega again. Every five_well run with that
    # omega is in the clone's run cache now, with git-tracked outputs committed to it too.
    run(["git", "checkout", "--", "."], clone, env)
    run(["dvc", "checkout"], clone, env)
    assert "up to date" in run(["dvc", "status"], clone, env)
    settings = yaml.safe_load(system_file.read_text())
    settings["omega"] = EXPERIMENT_OMEGA
    system_file.write_text(yaml.safe_dump(settings))

    output = run(["dvc", "repro"], clone, env)

    restored = re.findall(r"Stage '([^']+)' is cached - skipping run", output)
    assert "Running stage" not in output
    assert f"simulate@five_well-{PROTOCOLS[0]}-0" in restored
    assert f"evaluate@five_well-{PROTOCOLS[0]}-0-{MODELS[0]}" in restored
    assert "report@five_well" in restored
    assert "up to date" in run(["dvc", "status"], clone, env)
