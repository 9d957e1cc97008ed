"""The notebooks in notebooks/: stored without outputs, and run on the tiny pipeline."""

from __future__ import annotations

import re

import nbformat
import pytest

from .conftest import MODELS, REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Per cell. On the tiny pipeline's store a whole notebook ran in 15 to 40 s on a busy two-core
# machine, most of it in the first imports of torch and MLflow.
CELL_TIMEOUT_S = 300
# The model that sample_model.ipynb loads: its default, or the first one when
# NEQGEN_TEST_MODELS leaves it out of the tiny pipeline.
SAMPLED_MODEL = "diffusion" if "diffusion" in MODELS else MODELS[0]


def test_notebooks_exist():
    names = {path.name for path in NOTEBOOKS}

    assert "walkthrough.ipynb" in names
    assert "sample_model.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with_outputs = [index for index, cell in enumerate(code_cells) if cell.outputs]
    executed = [index for index, cell in enumerate(code_cells) if cell.execution_count]

    nbformat.validate(notebook)
    assert not with_outputs, (
        f"{path.name}: code cells {with_outputs} keep outputs; clear all outputs before "
        f"committing (in Jupyter: Edit > Clear Outputs of All Cells)"
    )
    assert not executed, f"{path.name}: code cells {executed} keep an execution count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_on_pipeline(path, pipeline_repo, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    repo, env = pipeline_repo
    # The kernel inherits this process's environment.
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("NEQGEN_PROJECT", str(repo))
    monkeypatch.setenv("NEQGEN_SYSTEM", "five_well")
    monkeypatch.setenv("NEQGEN_PROTOCOL", "one_well")
    monkeypatch.setenv("NEQGEN_MODEL", SAMPLED_MODEL)
    # The kernel draws inline (PNG outputs) only while no other backend is forced.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(repo)}},
    )

    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        # The kernel's traceback comes with terminal colour codes.
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        pytest.fail(f"{path.name} failed in {repo}:\n{message}", pytrace=False)

    figures = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert figures, f"{path.name} drew no figure"
