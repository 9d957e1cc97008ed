"""`neqgen data list`: dataset sizes, hashes and the DVC remote status."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neqgen.cli import main
from neqgen.commands.data import list_datasets
from neqgen.commands.simulate import run_simulation

from .conftest import CONFIG_DIR

DVC = str(Path(sys.executable).parent / "dvc")


def run(command: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="neqgen test",
        GIT_AUTHOR_EMAIL="test@neqgen.invalid",
        GIT_COMMITTER_NAME="neqgen test",
        GIT_COMMITTER_EMAIL="test@neqgen.invalid",
    )
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture
def simulated(tiny_config, tmp_path):
    """A tiny simulated replica 0 plus a reference file; returns its config and hashes."""
    cfg = tiny_config("protocol=one_well")
    hashes = run_simulation(cfg)
    reference = Path(cfg.paths.data) / "five_well" / "one_well" / "reference.npz"
    np.savez(reference, times=np.linspace(0, 1, 6), masses=np.full((6, 40, 30), 1 / 1200))
    return cfg, hashes


def test_data_list_describes_every_file(simulated):
    cfg, hashes = simulated

    entries, reason = list_datasets(cfg)

    assert [(entry.split, entry.replica) for entry in entries] == [
        ("heldout", 0),
        ("train", 0),
        ("reference", None),
    ]
    heldout, train, reference = entries
    assert train.sizes == "200 x 6 x 2"
    assert train.seed == 0
    assert heldout.seed == 1
    assert train.content_hash == hashes["train"]
    assert train.md5 == hashlib.md5(Path(train.path).read_bytes()).hexdigest()
    assert reference.sizes == "grid 40 x 30, 6 frames"
    assert reference.content_hash is None
    assert {entry.pushed for entry in entries} == {"unknown"}
    assert "not inside a DVC repository" in reason


def test_data_list_json_and_table(simulated, capsys):
    cfg, hashes = simulated
    arguments = ["--config-dir", str(CONFIG_DIR), "data", "list", f"paths.data={cfg.paths.data}"]

    assert main([*arguments, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert main(arguments) == 0
    table = capsys.readouterr().out

    assert listing["datasets"][1]["content_hash"] == hashes["train"]
    assert "not inside a DVC repository" in listing["pushed_unknown"]
    assert table.splitlines()[0].split()[:3] == ["path", "system", "protocol"]
    assert hashes["train"][:12] in table
    # The reason for the unknown status is printed once, not per row.
    assert table.count("not inside a DVC repository") == 1


def test_data_list_reports_unreadable_file(simulated):
    cfg, _ = simulated
    broken = Path(cfg.paths.data) / "five_well" / "one_well" / "r1" / "train.npz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a zip archive")

    entries, _ = list_datasets(cfg)

    [entry] = [entry for entry in entries if entry.replica == 1]
    assert entry.sizes == "unreadable"
    assert "not a readable dataset archive" in entry.problem


def test_data_list_missing_folder_exits_2(tmp_path, caplog):
    code = main(
        ["--config-dir", str(CONFIG_DIR), "data", "list", f"paths.data={tmp_path / 'absent'}"]
    )

    assert code == 2
    assert "neqgen simulate" in caplog.text


def test_data_list_pushed_before_and_after_push(simulated, tmp_path, tmp_path_factory):
    cfg, _ = simulated
    repo = tmp_path
    remote = tmp_path_factory.mktemp("remote")
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "config", "core.analytics", "false"], repo)
    entries, reason = list_datasets(cfg)
    assert "no default DVC remote" in reason

    run([DVC, "remote", "add", "-d", "scratch", str(remote)], repo)
    train = Path(cfg.paths.data) / "five_well" / "one_well" / "r0" / "train.npz"
    run([DVC, "add", "-q", str(train)], repo)
    before, reason = list_datasets(cfg)
    assert reason is None
    assert {entry.pushed for entry in before} == {"no"}

    run([DVC, "push", "-q"], repo)
    after, reason = list_datasets(cfg)

    assert reason is None
    pushed = {
        Path(entry.path).relative_to(cfg.paths.data).as_posix(): entry.pushed for entry in after
    }
    assert pushed["five_well/one_well/r0/train.npz"] == "yes"
    assert pushed["five_well/one_well/r0/heldout.npz"] == "no"
    assert pushed["five_well/one_well/reference.npz"] == "no"
