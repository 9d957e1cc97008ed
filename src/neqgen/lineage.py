"""Dataset lineage of a training run: the DVC content hash, git revision and path of its data.

A run records where its training ensemble came from so that the same file can be fetched
again later with ``dvc get``, ``dvc.api.open`` or ``dvc pull`` at the recorded revision:

- ``dvc_md5``: the MD5 of the file's bytes, which is the hash DVC 3 stores for a file in
  ``dvc.lock`` and uses as its name in the cache and the remote;
- ``git_revision`` and ``git_dirty``: the commit checked out in the project when the run
  started, and whether tracked files differed from it (untracked files are ignored);
- ``path``: the file's path relative to the project root (the folder that contains
  ``.dvc/``, else the git work tree), as DVC commands expect it.

Anything that cannot be determined, such as the revision outside a git repository, is
recorded as ``unknown``. A missing git executable, git repository or DVC project never
makes the lineage functions raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
# Read files in 1 MiB blocks, so hashing a large ensemble needs little memory.
_BLOCK_SIZE = 1 << 20
_GIT_TIMEOUT_S = 30


@dataclass(frozen=True)
class DatasetLineage:
    """Origin of a dataset file: its project-relative path, DVC hash and git state."""

    path: str
    dvc_md5: str
    git_revision: str
    git_dirty: str
    project_root: str

    def tags(self) -> dict[str, str]:
        """Return the run tags that the MLflow UI's search box can filter on.

        Besides the ``dataset.*`` and ``git.*`` tags this sets MLflow's own
        ``mlflow.source.git.commit`` when the revision is known, which the UI shows as the
        run's source version.
        """
        tags = {
            "dataset.path": self.path,
            "dataset.dvc_md5": self.dvc_md5,
            "git.revision": self.git_revision,
            "git.dirty": self.git_dirty,
        }
        if self.git_revision != UNKNOWN:
            tags[MLFLOW_GIT_COMMIT] = self.git_revision
        return tags


def file_md5(path: str | os.PathLike) -> str:
    """Return the hex MD5 of a file's bytes, the hash DVC 3 records for a file output."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        while block := stream.read(_BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def find_project_root(path: str | os.PathLike) -> Path | None:
    """Return the nearest folder above path that contains ``.dvc/``, else the git work tree.

    Returns None when path lies in neither a DVC project nor a git work tree.
    """
    start = Path(path).resolve()
    for folder in [start, *start.parents]:
        if (folder / ".dvc").is_dir():
            return folder
    toplevel = _git(["rev-parse", "--show-toplevel"], start.parent if start.is_file() else start)
    return Path(toplevel) if toplevel else None


def git_state(folder: str | os.PathLike) -> tuple[str, str]:
    """Return (revision, dirty) of the git work tree at folder, each ``unknown`` if unavailable.

    ``dirty`` is ``true`` when tracked files differ from the checked-out commit. Untracked
    files, such as outputs that a running pipeline has not yet committed, do not count.
    """
    revision = _git(["rev-parse", "HEAD"], Path(folder))
    if revision is None:
        return UNKNOWN, UNKNOWN
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(folder))
    if status is None:
        return revision, UNKNOWN
    return revision, "true" if status else "false"


def dataset_lineage(path: str | os.PathLike) -> DatasetLineage:
    """Compute the lineage of a dataset file.

    Raises
    ------
    FileNotFoundError
        If path does not exist.
    """
    path = Path(path)
    dvc_md5 = file_md5(path)
    root = find_project_root(path)
    if root is None:
        return DatasetLineage(path.as_posix(), dvc_md5, UNKNOWN, UNKNOWN, UNKNOWN)
    try:
        relative = path.resolve().relative_to(root).as_posix()
    except ValueError:
        # A dataset outside the project (paths.data pointing elsewhere) keeps its full path.
        relative = path.resolve().as_posix()
    revision, dirty = git_state(root)
    return DatasetLineage(relative, dvc_md5, revision, dirty, str(root))


class DvcDatasetSource(DatasetSource):
    """An MLflow dataset source for a file versioned by DVC: a path in a repository at a revision.

    ``load()`` fetches the file with DVC's Python API, from the project's cache or its
    default remote, so a run's training data can be pulled again from its record.
    """

    def __init__(self, path: str, rev: str | None = None, repo: str | None = None):
        self.path = path
        self.rev = rev
        self.repo = repo

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, dst_path: str | os.PathLike | None = None) -> str:
        """Download the file into dst_path (a new temporary folder if None) and return its path.

        Raises
        ------
        FileNotFoundError
            If the file is not tracked in the repository at the revision.
        """
        import dvc.api

        folder = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp())
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(self.path).name
        rev = None if self.rev in (None, UNKNOWN) else self.rev
        with dvc.api.open(self.path, repo=self.repo, rev=rev, mode="rb") as source:
            with open(target, "wb") as destination:
                shutil.copyfileobj(source, destination)
        return str(target)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        # Built explicitly from a lineage record, never guessed from a bare string.
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("DvcDatasetSource is built from a path, rev and repo")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rev": self.rev, "repo": self.repo}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["path"], source_dict.get("rev"), source_dict.get("repo"))


register_dataset_source(DvcDatasetSource)


def lineage_dataset(lineage: DatasetLineage) -> MetaDataset:
    """Return an MLflow dataset whose source is the file at its revision and digest its DVC MD5."""
    repo = None if lineage.project_root == UNKNOWN else lineage.project_root
    source = DvcDatasetSource(lineage.path, rev=lineage.git_revision, repo=repo)
    return MetaDataset(source, name=lineage.path, digest=lineage.dvc_md5)


def log_dataset_input(
    client: MlflowClient, run_id: str, lineage: DatasetLineage, context: str = "training"
) -> None:
    """Record the dataset as an input of the run, shown under "Datasets used" in the MLflow UI.

    This is what ``mlflow.log_input`` does, but for a given run id: the training run
    belongs to Lightning's MLFlowLogger and is not MLflow's active (fluent) run.
    """
    dataset = lineage_dataset(lineage)
    tags = [
        InputTag(key=MLFLOW_DATASET_CONTEXT, value=context),
        InputTag(key="dvc_md5", value=lineage.dvc_md5),
    ]
    # NOTE: _to_mlflow_entity is private in MLflow 3.x; mlflow.log_input calls it the same way.
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])


def describe(lineage: DatasetLineage) -> str:
    """Return the lineage as one line of JSON, for logs."""
    return json.dumps(lineage.__dict__, sort_keys=True)


def _git(arguments: list[str], folder: Path) -> str | None:
    """Run a git command in folder and return its stripped output, or None if it failed."""
    try:
        result = subprocess.run(
            ["git", *arguments],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.debug("git %s failed in %s: %s", " ".join(arguments), folder, error)
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip()
