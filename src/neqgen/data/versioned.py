"""Read ensemble files as DVC versioned them: from any git revision of a DVC repository.

``load_ensemble`` reads a file on disk. ``open_dataset`` fetches the same file through
``dvc.api`` from a repository (a local path or a git URL) at a revision, from the
repository's cache or its default DVC remote, and loads it with the same hash check.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from neqgen.data.dataset import DatasetError, Ensemble, load_ensemble


def open_dataset(
    path: str | os.PathLike,
    repo: str | os.PathLike | None = None,
    rev: str | None = None,
    remote: str | None = None,
    verify: bool = True,
) -> Ensemble:
    """Load the ensemble file at path as it was at a git revision of a DVC repository.

    Parameters
    ----------
    path
        The file's path relative to the repository root, as in dvc.lock, for example
        ``data/five_well/one_well/r0/train.npz``.
    repo
        A local DVC project or a git URL; None means the project containing the current
        directory.
    rev
        A git commit, branch or tag; None means the working tree for a local repo and the
        default branch for a URL.
    remote
        The DVC remote to read from when the file is not in the local cache; None means the
        repository's default remote.
    verify
        Check the file's content hash, as ``load_ensemble`` does.

    Raises
    ------
    DatasetError
        If the file is not tracked at that revision, cannot be fetched, or fails its
        content hash check.
    """
    import dvc.api
    from dvc.exceptions import DvcException

    location = f"{path} at revision {rev or 'the working tree'} of {repo or 'this project'}"
    repo = os.fspath(repo) if repo is not None else None
    with tempfile.TemporaryDirectory(prefix="neqgen-dataset-") as scratch:
        local = Path(scratch) / Path(path).name
        try:
            stream = dvc.api.open(os.fspath(path), repo=repo, rev=rev, remote=remote, mode="rb")
            with stream as source, open(local, "wb") as destination:
                shutil.copyfileobj(source, destination)
        except (FileNotFoundError, DvcException) as error:
            raise DatasetError(
                f"failed to read {location} through DVC ({type(error).__name__}: {error}); "
                f"check the path with `dvc list {repo or '.'} --rev <rev> -R` and that the "
                f"DVC remote holds the file (`dvc push` where it was produced)"
            ) from error
        try:
            ensemble = load_ensemble(local, verify=verify)
        except DatasetError as error:
            raise DatasetError(f"{location}: {error}") from error
        # load_ensemble may memory-map the positions, and the temporary file goes away on
        # return, so the positions are read into memory here.
        return dataclasses.replace(ensemble, positions=np.array(ensemble.positions))
