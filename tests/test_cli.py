"""The neqgen command and config composition."""

from __future__ import annotations

import socket

import pytest

from neqgen.cli import COMMANDS, main
from neqgen.config import ConfigError, load_config

from .conftest import CONFIG_DIR


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])

    assert exit_info.value.code == 0
    assert "overrides" in capsys.readouterr().out


def test_config_composes_overrides():
    cfg = load_config(["model=energy", "protocol=one_well", "system.omega=3.0"], CONFIG_DIR)

    assert cfg.model.name == "energy"
    assert cfg.protocol.start.kind == "well"
    assert cfg.system.omega == 3.0
    assert cfg.tracking.experiment == "five_well"


def test_presets_keep_published_and_deeptime_settings():
    paper = load_config(["experiment=paper"], CONFIG_DIR)
    deeptime = load_config(["system=quintuple_well"], CONFIG_DIR)

    assert (paper.simulation.n_particles, paper.simulation.n_frames) == (1000, 1001)
    assert (paper.system.s, paper.system.k, paper.system.r0, paper.system.beta) == (5, 10, 0.5, 5)
    assert (deeptime.system.r0, deeptime.system.a, deeptime.system.nu) == (1.5, 0.5, 1.0)


def test_unknown_override_names_the_value():
    with pytest.raises(ConfigError, match="model=flow"):
        load_config(["model=flow"], CONFIG_DIR)


def test_missing_config_dir_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="--config-dir"):
        load_config([], tmp_path)


def test_simulate_rejects_equal_seeds(tiny_config, tmp_path, caplog):
    code = main(
        [
            "--config-dir",
            str(CONFIG_DIR),
            "simulate",
            "experiment=tiny",
            f"paths.data={tmp_path}",
            "simulation.heldout_seed=0",
        ]
    )

    assert code == 2
    assert "simulation.heldout_seed must differ from simulation.seed" in caplog.text
    assert not any(tmp_path.iterdir())


def test_simulate_blow_up_writes_nothing(tmp_path, caplog):
    code = main(
        [
            "--config-dir",
            str(CONFIG_DIR),
            "simulate",
            "experiment=tiny",
            f"paths.data={tmp_path}",
            "simulation.dt=0.5",
            "simulation.horizon=5",
            "simulation.n_frames=3",
        ]
    )

    assert code == 2
    assert "Reduce simulation.dt" in caplog.text
    assert not list(tmp_path.rglob("*.npz"))


def test_ui_reports_port_in_use(caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        code = main(["--config-dir", str(CONFIG_DIR), "ui", f"ui.port={port}", "--dry-run"])

    assert code == 2
    assert "ui.port=5001" in caplog.text


def test_ui_dry_run_prints_loopback_address(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    code = main(
        [
            "--config-dir",
            str(CONFIG_DIR),
            "ui",
            f"ui.port={port}",
            f"paths.mlruns={tmp_path / 'mlruns'}",
            "--dry-run",
        ]
    )

    assert code == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out


def test_simulate_unstable_step_fails_before_escape(tmp_path, caplog):
    # dt = 0.1 is ten times the radial stability limit; particles fly to r ~ 10 and more.
    code = main(
        [
            "--config-dir",
            str(CONFIG_DIR),
            "simulate",
            "experiment=tiny",
            f"paths.data={tmp_path}",
            "simulation.dt=0.1",
        ]
    )

    assert code == 2
    assert "ball of radius 4.5" in caplog.text


def test_train_rejects_zero_epochs(tmp_path, caplog):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "models", "mlruns")]
    main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", *paths])

    code = main(
        ["--config-dir", str(CONFIG_DIR), "train", "experiment=tiny", "trainer.max_epochs=0"]
        + paths
    )

    assert code == 2
    assert "trainer.max_epochs must be a positive integer, got 0" in caplog.text
    assert not (tmp_path / "mlruns").exists()


def test_train_rejects_data_from_other_system(tmp_path, caplog):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "models", "mlruns")]
    main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", "system.beta=3"] + paths)

    code = main(["--config-dir", str(CONFIG_DIR), "train", "experiment=tiny", *paths])

    assert code == 2
    assert "system.beta=3" in caplog.text


def test_bad_system_value_is_one_error_line(caplog):
    code = main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", "system.beta=-5"])

    assert code == 2
    assert "system.beta must be positive, got -5" in caplog.text


def test_ui_rejects_port_out_of_range(caplog):
    code = main(["--config-dir", str(CONFIG_DIR), "ui", "ui.port=99999", "--dry-run"])

    assert code == 2
    assert "ui.port must be an integer in [1, 65535], got 99999" in caplog.text


def test_train_rejects_zero_particles_per_frame(tmp_path, caplog):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "models", "mlruns")]
    main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", *paths])

    code = main(
        ["--config-dir", str(CONFIG_DIR), "train", "experiment=tiny"]
        + ["data.particles_per_frame=0", *paths]
    )

    assert code == 2
    assert "data.particles_per_frame must be a positive integer, got 0" in caplog.text
    assert not list((tmp_path / "models").rglob("model.ckpt"))


def test_evaluate_rejects_zero_histogram_bins(tmp_path, caplog):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "metrics", "plots")]
    main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", *paths])

    code = main(
        ["--config-dir", str(CONFIG_DIR), "evaluate", "--noise-floor", "experiment=tiny"]
        + ["evaluation.jsd_bins=0", *paths]
    )

    assert code == 2
    assert "evaluation.jsd_bins must be an integer >= 1, got 0" in caplog.text


def test_evaluate_names_an_unreadable_reference(tmp_path, caplog):
    paths = [f"paths.{name}={tmp_path / name}" for name in ("data", "metrics", "plots")]
    main(["--config-dir", str(CONFIG_DIR), "simulate", "experiment=tiny", *paths])
    reference = tmp_path / "data" / "five_well" / "uniform" / "reference.npz"
    reference.write_bytes(b"PK\x03\x04 truncated")

    code = main(
        ["--config-dir", str(CONFIG_DIR), "evaluate", "--noise-floor", "experiment=tiny"] + paths
    )

    assert code == 2
    assert "is not a readable reference" in caplog.text
    assert "rerun `neqgen reference`" in caplog.text


def test_report_rejects_repeated_replica(tmp_path, caplog):
    code = main(
        ["--config-dir", str(CONFIG_DIR), "report", "experiment=tiny"]
        + [f"paths.metrics={tmp_path}", "pipeline.replicas=[0,0]"]
    )

    assert code == 2
    assert "lists a replica twice" in caplog.text
