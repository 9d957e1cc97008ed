"""`neqgen ui` serving a real MLflow store on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from .conftest import CONFIG_DIR


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_project_store(tmp_path):
    store = tmp_path / "mlruns"
    store.mkdir()
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("five_well", (store / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment_id, run_name="probe"):
        mlflow.log_metric("eval/jsd_mean", 0.1)
    port = free_port()
    neqgen = Path(sys.executable).parent / "neqgen"
    server = subprocess.Popen(
        [
            str(neqgen),
            "--config-dir",
            str(CONFIG_DIR),
            "ui",
            f"ui.port={port}",
            f"paths.mlruns={store}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        first_line = server.stdout.readline()
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                    "?experiment_name=five_well"
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(1)
    finally:
        # The MLflow server may start workers of its own; stop the whole process group.
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    assert f"http://127.0.0.1:{port}" in first_line
    assert body is not None, "the MLflow UI did not answer within 60 s"
    assert '"name": "five_well"' in body or '"name":"five_well"' in body
