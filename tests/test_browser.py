"""The MLflow UI of a real pipeline's store, driven in headless Chromium.

Needs Debian's `chromium` package (or another Chromium on PATH) and the Python package
`playwright`. `.ci/run` installs the browser, and the test is skipped without it. Playwright
drives the system browser, so `playwright install` (which downloads browsers) is not needed.

With NEQGEN_SCREENSHOT_DIR set, the screenshots are also copied to
$NEQGEN_SCREENSHOT_DIR/screenshots/.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SYSTEM = "five_well"
FIGURE = "figures/snapshots.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SERVER_START_TIMEOUT_S = 180
# Per browser step, in place of Playwright's 30 s default. The whole browser part took 25 to
# 40 s on a two-core machine busy with other jobs, so this leaves a wide margin.
PAGE_TIMEOUT_MS = 120_000


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
# Checked when the module is collected, so that a skip does not first build the pipeline.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium executable on PATH (looked for "
        + ", ".join(CHROMIUM_NAMES)
        + "); install Debian's chromium with `apt-get install chromium`, as .ci/run does",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None,
        reason="the Python package playwright is missing; install the dev extra with "
        "`pip install -e '.[dev]'`",
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll url until it returns HTTP 200, and fail if the server exits or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"neqgen ui exited with code {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(
        f"neqgen ui did not answer {url} within {timeout_s} s; its output:\n{log_path.read_text()}"
    )


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (MLflow starts worker processes of its own)."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def ui_url(pipeline_repo, tmp_path_factory):
    """Start `neqgen ui` on a free loopback port over the tiny pipeline's store."""
    repo, env = pipeline_repo
    port = free_port()
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    neqgen = Path(sys.executable).parent / "neqgen"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [str(neqgen), "--config-dir", str(repo / "conf"), "ui", f"ui.port={port}"],
            cwd=repo,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/", server, log_path, SERVER_START_TIMEOUT_S)
        yield url
    finally:
        stop_server(server)


@pytest.fixture
def browser_page():
    """A page in headless Chromium, closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium starts as root (as CI runs it) only without its sandbox. The disabled
        # background services would otherwise keep connecting to Google's hosts.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save a screenshot under tmp_path and, if NEQGEN_SCREENSHOT_DIR is set, copy it there."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    target_dir = os.environ.get("NEQGEN_SCREENSHOT_DIR")
    if target_dir:
        target = Path(target_dir) / "screenshots" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def test_ui_shows_runs_and_figure(pipeline_repo, ui_url, browser_page, tmp_path):
    repo, _ = pipeline_repo
    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(SYSTEM)
    assert experiment is not None, f"the pipeline made no MLflow experiment {SYSTEM!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    # The run table lists top-level runs, and the nested evaluation runs stay folded under them.
    top_level = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    training = sorted(
        (run for run in top_level if "model" in run.data.tags and "kind" not in run.data.tags),
        key=lambda run: run.info.run_name,
    )
    assert training, f"no training runs in experiment {SYSTEM!r}"
    figure_run = next(
        (
            run
            for run in training
            if any(
                item.path == FIGURE for item in client.list_artifacts(run.info.run_id, "figures")
            )
        ),
        None,
    )
    assert figure_run is not None, f"no training run of {SYSTEM!r} has the artifact {FIGURE}"

    from playwright.sync_api import expect

    page = browser_page
    # workflowType=machine_learning opens the run table, because MLflow 3 otherwise opens an
    # experiment on its GenAI overview.
    page.goto(
        f"{ui_url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    )
    for run in top_level:
        link = page.get_by_role("link", name=run.info.run_name, exact=True)
        link.first.wait_for()
        assert link.count() == 1, f"run {run.info.run_name} is listed {link.count()} times"
    close_assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close_assistant.count():
        # The assistant panel takes a quarter of the page, so close it for a wider screenshot.
        close_assistant.first.click()
    save_screenshot(page, tmp_path, "mlflow_runs.png")

    # The README's filter example leaves only the runs of one model in the table.
    model = figure_run.data.tags["model"]
    others = [run for run in training if run.data.tags["model"] != model]
    search = page.locator('[data-testid="search-box"]')
    search.fill(f'tags.model = "{model}"')
    search.press("Enter")
    for run in others:
        expect(page.get_by_role("link", name=run.info.run_name, exact=True)).to_have_count(
            0, timeout=PAGE_TIMEOUT_MS
        )
    expect(page.get_by_role("link", name=figure_run.info.run_name, exact=True)).to_have_count(
        1, timeout=PAGE_TIMEOUT_MS
    )

    # The README's way to compare runs: tick the filtered runs, then press Compare.
    compared = [run for run in training if run.data.tags["model"] == model]
    checkboxes = page.locator(".ag-selection-checkbox:visible")
    expect(checkboxes).to_have_count(len(compared), timeout=PAGE_TIMEOUT_MS)
    for index in range(len(compared)):
        checkboxes.nth(index).click()
    page.get_by_role("button", name="Compare").first.click()
    page.get_by_text(f"Comparing {len(compared)} Runs").wait_for()
    compare_url = page.url
    for run in compared:
        expect(page.get_by_text(run.info.run_name, exact=True).first).to_be_visible(
            timeout=PAGE_TIMEOUT_MS
        )
    save_screenshot(page, tmp_path, "mlflow_compare.png")

    page.go_back()
    page.get_by_role("link", name=figure_run.info.run_name, exact=True).click()
    page.get_by_role("tab", name="Artifacts").click()
    folder, filename = FIGURE.split("/")
    page.locator(f'[data-testid="artifact-tree-node"][aria-label="{folder}"]').click()
    page.locator(f'[data-testid="artifact-tree-node"][aria-label="{filename}"]').click()
    image = page.locator(f'img[alt="{FIGURE}"]')
    image.wait_for()
    # The preview counts as shown once the browser has decoded the PNG, not only inserted
    # the element.
    page.wait_for_function(
        "image => image.complete && image.naturalWidth > 0", arg=image.element_handle()
    )
    width = image.evaluate("image => image.naturalWidth")
    screenshot = save_screenshot(page, tmp_path, "mlflow_ui.png")

    assert "compare-runs" in compare_url
    for run in compared:
        assert run.info.run_id in compare_url, f"Compare left out run {run.info.run_name}"
    assert figure_run.info.run_id in page.url
    assert width > 100, f"{FIGURE} of run {figure_run.info.run_name} decoded to {width} px wide"
    assert screenshot.stat().st_size > 10_000, f"{screenshot} is nearly empty"
