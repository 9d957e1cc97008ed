"""Shared fixtures: the project's config directory and composed configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from neqgen.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests use small tensors, for which extra intra-op threads only add synchronisation
# (and slow down sharply when another process is using the cores).
torch.set_num_threads(1)
CONFIG_DIR = REPO_ROOT / "conf"

# One protocol keeps the end-to-end run near five minutes on two cores; the report code
# loops over protocols the same way for one or several.
PROTOCOLS = ("one_well",)
REPLICAS = (0, 1)
SYSTEMS = ("five_well", "prinz_quench")
# Every model of the default pipeline runs in the test too.
MODELS = tuple(
    yaml.safe_load((REPO_ROOT / "conf" / "pipeline" / "default.yaml").read_text())["models"]
)
# NEQGEN_TEST_MODELS=oracle,diffusion limits the tiny pipeline to a few models while
# developing; CI and `make test` run every model.
if os.environ.get("NEQGEN_TEST_MODELS"):
    MODELS = tuple(os.environ["NEQGEN_TEST_MODELS"].split(","))


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=2400
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory):
    """A git + DVC repository with the project's pipeline, reproduced at tiny sizes.

    Session-scoped: the end-to-end, DVC, notebook and browser tests share one run (about
    ten minutes on two cores). Tests that change files in it must restore them.
    """
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("conf", "src"):
        shutil.copytree(
            REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    # Keep the MLflow store out of git as in the project, so that committing the pipeline's
    # outputs or running `dvc exp run` in a clone leaves it alone.
    (repo / "mlruns").mkdir()
    shutil.copy(REPO_ROOT / "mlruns" / ".gitignore", repo / "mlruns" / ".gitignore")
    # Tiny sizes, a 2D and a 1D system, one protocol and two replicas so that spreads exist.
    pipeline = repo / "conf" / "pipeline" / "default.yaml"
    settings = yaml.safe_load(pipeline.read_text())
    settings.update(
        experiment="tiny",
        systems=list(SYSTEMS),
        protocols=list(PROTOCOLS),
        replicas=list(REPLICAS),
        models=list(MODELS),
    )
    pipeline.write_text(yaml.safe_dump(settings))

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
