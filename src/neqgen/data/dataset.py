"""Ensemble files: positions at recorded frames with metadata and a content hash.

A file is an uncompressed ``.npz`` archive with three arrays:

- ``positions``: float32, shape (n_frames, n_particles, dim)
- ``times``: float64, shape (n_frames,)
- ``metadata``: a JSON string with the resolved config, seed, library versions and
  ``content_hash``, the SHA-256 of the arrays and of the rest of the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """Raised for a dataset file that is missing, unreadable or fails its hash check."""


@dataclass
class Ensemble:
    """A simulated ensemble: positions (n_frames, n_particles, dim) at times (n_frames,)."""

    positions: np.ndarray
    times: np.ndarray
    metadata: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.metadata["content_hash"]

    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_particles(self) -> int:
        return self.positions.shape[1]

    @property
    def dim(self) -> int:
        return self.positions.shape[2]


def library_versions() -> dict[str, str]:
    """Return the versions of Python and of the libraries that shape a simulation."""
    versions = {"python": platform.python_version()}
    for package in ("neqgen", "torch", "torchsde", "numpy"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def content_hash(positions: np.ndarray, times: np.ndarray, metadata: dict[str, Any]) -> str:
    """Return the SHA-256 hex digest of the arrays and of metadata without its hash."""
    digest = hashlib.sha256()
    for array in (positions, times):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    rest = {key: value for key, value in metadata.items() if key != "content_hash"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return digest.hexdigest()


def save_ensemble(
    path: str | os.PathLike, positions: np.ndarray, times: np.ndarray, metadata: dict[str, Any]
) -> Ensemble:
    """Write an ensemble atomically and return it with its content hash filled in.

    The file is written to a temporary name in the target folder and renamed over ``path``
    only when complete, so an existing file is never left half-written.

    Raises
    ------
    DatasetError
        If positions contain NaN or inf, or the shapes disagree; nothing is written.
    """
    positions = np.asarray(positions, dtype=np.float32)
    times = np.asarray(times, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[0] != times.shape[0]:
        raise DatasetError(
            f"positions must have shape (n_frames, n_particles, dim) with n_frames = "
            f"{times.shape[0]}, got {positions.shape}"
        )
    if not np.isfinite(positions).all():
        raise DatasetError(f"refusing to write {path}: positions contain NaN or inf")

    metadata = dict(metadata)
    metadata["content_hash"] = content_hash(positions, times, metadata)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            arrays = {
                "positions": positions,
                "times": times,
                "metadata": np.array(json.dumps(metadata, sort_keys=True)),
            }
            _write_npz(stream, arrays)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Ensemble(positions, times, metadata)


def _write_npz(stream, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed .npz archive with fixed member timestamps.

    ``np.savez`` stamps each member with the current time, so the same arrays would give
    different bytes (and different DVC hashes) on every run.
    """
    with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, mode="w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


def load_ensemble(path: str | os.PathLike, verify: bool = True) -> Ensemble:
    """Read an ensemble file and check its content hash.

    Raises
    ------
    DatasetError
        If the file is missing, is not a readable ensemble archive, or its content does not
        match the stored hash (a corrupted or edited file).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"dataset {path} not found; run `neqgen simulate` with the same system and "
            f"protocol overrides to create it"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            positions = archive["positions"]
            times = archive["times"]
            metadata = json.loads(str(archive["metadata"][()]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(
            f"dataset {path} is corrupted or not an ensemble file ({error}); delete it and "
            f"rerun `neqgen simulate` (or `dvc pull` / `dvc repro`)"
        ) from error

    if verify:
        expected = metadata.get("content_hash")
        actual = content_hash(positions, times, metadata)
        if actual != expected:
            raise DatasetError(
                f"dataset {path} failed its content hash check (stored {expected}, computed "
                f"{actual}); the file is corrupted. Delete it and rerun `neqgen simulate` "
                f"(or `dvc pull` / `dvc repro`)"
            )
    return Ensemble(positions, times, metadata)
