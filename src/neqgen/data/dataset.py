"""Ensemble files: positions at recorded frames with metadata and a content hash.

A file is an uncompressed ``.npz`` archive with three arrays, in this order:

- ``positions``: float32, shape (n_frames, n_particles, dim)
- ``times``: float64, shape (n_frames,)
- ``metadata``: a JSON string with the resolved config, seed, library versions and
  ``content_hash``, the SHA-256 of the arrays and of the rest of the metadata.

Large ensembles never need two copies in memory. :class:`EnsembleWriter` streams the
positions into the archive block of frames by block of frames, and :func:`load_ensemble`
memory-maps the stored positions member instead of reading it into memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import platform
import struct
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
    # load_ensemble returns read-only positions backed by the file (memory-mapped) for
    # archives it can map; copy them before changing them in place.

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


# Positions are hashed, checked, converted and copied in blocks of about this many bytes,
# so no step makes a full-size temporary array.
BLOCK_BYTES = 8 * 2**20


def frame_blocks(array: np.ndarray, block_bytes: int = BLOCK_BYTES):
    """Yield consecutive slices of the first axis of ``array``, each about block_bytes big."""
    frame_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    step = max(1, block_bytes // frame_bytes)
    for start in range(0, array.shape[0], step):
        yield array[start : start + step]


def _hash_array(digest, array: np.ndarray) -> None:
    """Add an array's dtype, shape and C-order bytes to a hash, one block at a time."""
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    if array.ndim == 0:
        digest.update(np.ascontiguousarray(array).tobytes())
        return
    for block in frame_blocks(array):
        digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))
        release_pages(array)


def _hash_metadata(digest, metadata: dict[str, Any]) -> None:
    rest = {key: value for key, value in metadata.items() if key != "content_hash"}
    digest.update(json.dumps(rest, sort_keys=True).encode())


def content_hash(positions: np.ndarray, times: np.ndarray, metadata: dict[str, Any]) -> str:
    """Return the SHA-256 hex digest of the arrays and of metadata without its hash."""
    digest = hashlib.sha256()
    _hash_array(digest, positions)
    _hash_array(digest, times)
    _hash_metadata(digest, metadata)
    return digest.hexdigest()


class EnsembleWriter:
    """Write an ensemble file block of frames by block of frames, then rename it into place.

    The archive is written to a temporary file in the target folder. :meth:`write` appends
    frames to the positions member (checking them for NaN and inf and adding them to the
    content hash), :meth:`finish` completes the archive, and :meth:`commit` renames it
    over ``path``. Leaving the ``with`` block without a commit deletes the temporary file,
    so an existing dataset is replaced only by a complete one. The file is byte-identical
    to what :func:`save_ensemble` writes for the same arrays.

    Parameters
    ----------
    path:
        Final location of the ensemble file.
    times:
        Recorded times, shape (n_frames,).
    n_particles, dim:
        Sizes of the positions that :meth:`write` will receive.
    metadata:
        JSON-serialisable metadata; ``content_hash`` is added by :meth:`finish`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        times: np.ndarray,
        n_particles: int,
        dim: int,
        metadata: dict[str, Any],
    ):
        self.path = Path(path)
        self.times = np.asarray(times, dtype=np.float64)
        self.shape = (int(self.times.shape[0]), int(n_particles), int(dim))
        self.metadata = dict(metadata)
        self.metadata.pop("content_hash", None)
        self.n_written = 0
        self.finished = False
        self.committed = False

        self.digest = hashlib.sha256()
        dtype = np.dtype(np.float32)
        self.digest.update(f"{dtype.str}{self.shape}".encode())

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        self.temporary = Path(temporary)
        try:
            self.stream = os.fdopen(handle, "wb")
            self.archive = zipfile.ZipFile(self.stream, mode="w", compression=zipfile.ZIP_STORED)
            self.member = self.archive.open(_member_info("positions"), mode="w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
            header["shape"] = self.shape
            # Version 1.0, as np.lib.format.write_array picks for a header this small.
            np.lib.format.write_array_header_1_0(self.member, header)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> EnsembleWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            self.abort()

    def write(self, frames) -> None:
        """Append the next frames, shape (k, n_particles, dim); converted to float32.

        Raises
        ------
        DatasetError
            If the frames contain NaN or inf, have the wrong shape, or go past n_frames.
        """
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[1:] != self.shape[1:]:
            raise DatasetError(
                f"frames for {self.path} must have shape (k, {self.shape[1]}, {self.shape[2]}), "
                f"got {frames.shape}"
            )
        if self.n_written + frames.shape[0] > self.shape[0]:
            raise DatasetError(
                f"{self.path} takes {self.shape[0]} frames, got {self.n_written + frames.shape[0]}"
            )
        for block in frame_blocks(frames):
            block = np.ascontiguousarray(block)
            if not np.isfinite(block).all():
                raise DatasetError(f"refusing to write {self.path}: positions contain NaN or inf")
            data = memoryview(block).cast("B")
            self.digest.update(data)
            self.member.write(data)
        self.n_written += frames.shape[0]

    def finish(self) -> dict[str, Any]:
        """Write the times and metadata, flush the temporary file to disk; return the metadata.

        Raises
        ------
        DatasetError
            If fewer than n_frames frames were written.
        """
        if self.finished:
            return self.metadata
        if self.n_written != self.shape[0]:
            raise DatasetError(
                f"{self.path} takes {self.shape[0]} frames, but only {self.n_written} were written"
            )
        self.member.close()
        _hash_array(self.digest, self.times)
        _hash_metadata(self.digest, self.metadata)
        self.metadata["content_hash"] = self.digest.hexdigest()
        for name, array in (
            ("times", self.times),
            ("metadata", np.array(json.dumps(self.metadata, sort_keys=True))),
        ):
            with self.archive.open(_member_info(name), mode="w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)
        self.archive.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        self.finished = True
        return self.metadata

    def commit(self) -> dict[str, Any]:
        """Finish the file if needed and rename it over ``path``; return the metadata."""
        metadata = self.finish()
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temporary, 0o666 & ~umask)
        os.replace(self.temporary, self.path)
        self.committed = True
        return metadata

    def abort(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        for closable in ("member", "archive", "stream"):
            handle = getattr(self, closable, None)
            if handle is None:
                continue
            try:
                handle.close()
            except (OSError, ValueError, zipfile.BadZipFile, struct.error):
                # A half-written archive may fail to close cleanly; it is deleted anyway.
                pass
        self.temporary.unlink(missing_ok=True)


def _member_info(name: str) -> zipfile.ZipInfo:
    # np.savez stamps each member with the current time, so the same arrays would give
    # different bytes and DVC hashes on every run. A fixed stamp keeps them identical.
    return zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))


def write_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed .npz archive, atomically and byte-reproducibly.

    Members carry a fixed time stamp, so the same arrays give the same bytes and DVC hash.
    The archive is written to a temporary file and then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream, zipfile.ZipFile(stream, "w") as archive:
            for name, array in arrays.items():
                with archive.open(_member_info(name), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_ensemble(
    path: str | os.PathLike, positions: np.ndarray, times: np.ndarray, metadata: dict[str, Any]
) -> Ensemble:
    """Write an ensemble atomically and return it with its content hash filled in.

    The file is written to a temporary name in the target folder and renamed over ``path``
    only when complete, so an existing file is never left half-written. Positions that are
    not float32 are converted one block of frames at a time.

    Raises
    ------
    DatasetError
        If positions contain NaN or inf, or the shapes disagree; nothing is written.
    """
    positions = np.asarray(positions)
    times = np.asarray(times, dtype=np.float64)
    if positions.ndim != 3 or positions.shape[0] != times.shape[0]:
        raise DatasetError(
            f"positions must have shape (n_frames, n_particles, dim) with n_frames = "
            f"{times.shape[0]}, got {positions.shape}"
        )
    with EnsembleWriter(path, times, positions.shape[1], positions.shape[2], metadata) as writer:
        for block in frame_blocks(positions):
            writer.write(block)
        metadata = writer.commit()
    if positions.dtype != np.float32:
        positions = positions.astype(np.float32)
    return Ensemble(positions, times, metadata)


def load_ensemble(path: str | os.PathLike, verify: bool = True) -> Ensemble:
    """Read an ensemble file and check its content hash.

    The positions of an archive written by neqgen (an uncompressed member) are
    memory-mapped read-only, so they are read from disk as they are used and never copied;
    other archives (a compressed one, say) are read into memory.

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
        with zipfile.ZipFile(path) as archive:
            positions = _map_member(path, archive, "positions")
            if positions is None:
                with archive.open("positions.npy") as member:
                    positions = np.lib.format.read_array(member, allow_pickle=False)
            with archive.open("times.npy") as member:
                times = np.lib.format.read_array(member, allow_pickle=False)
            with archive.open("metadata.npy") as member:
                metadata = json.loads(str(np.lib.format.read_array(member)[()]))
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


def member_data_offset(stream, info: zipfile.ZipInfo) -> int:
    """Return the file offset of a zip member's data, read from its local header.

    The local header's name and extra field can differ in length from the central
    directory's copy, so the offset must come from the local header itself.
    """
    stream.seek(info.header_offset)
    local = stream.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"invalid local header of member {info.filename}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def read_member_header(path: Path, archive: zipfile.ZipFile, name: str):
    """Return (shape, dtype, offset of the array data or None) of the .npy member ``name``.

    The offset is None unless the member is stored uncompressed and unencrypted, in C
    order, which is when its data can be memory-mapped. Only the headers are read.
    """
    info = archive.getinfo(f"{name}.npy")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
    mappable = (
        info.compress_type == zipfile.ZIP_STORED
        and not info.flag_bits & 0x1
        and not fortran_order
        and not dtype.hasobject
    )
    if not mappable:
        return shape, dtype, None
    with open(path, "rb") as stream:
        start = member_data_offset(stream, info)
        stream.seek(start)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(stream)
        else:
            np.lib.format.read_array_header_2_0(stream)
        offset = stream.tell()
    size = math.prod(shape) * dtype.itemsize
    if offset - start + size != info.file_size:
        raise zipfile.BadZipFile(
            f"invalid member {info.filename}: it has {info.file_size} bytes but its header "
            f"describes {offset - start + size}"
        )
    return shape, dtype, offset


def _map_member(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """Memory-map a stored .npy member read-only, or return None if it cannot be mapped."""
    shape, dtype, offset = read_member_header(path, archive, name)
    if offset is None:
        return None
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype)
    with open(path, "rb") as stream:
        mapping = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    # The array keeps the mapping alive; the mapping outlives the closed file descriptor.
    return np.frombuffer(mapping, dtype=dtype, count=count, offset=offset).reshape(shape)


def release_pages(array: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process's resident set.

    The data stays in the kernel's page cache and is read back on the next access, so
    this changes the resident-set size only. Arrays not backed by a mapping are ignored.
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
        if isinstance(base, memoryview):
            base = base.obj
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def select_particles(positions: np.ndarray, particles: np.ndarray) -> np.ndarray:
    """Return a float32 copy of positions[:, particles], built one block of frames at a time.

    For memory-mapped positions the pages read so far are released after every block, so
    the copy is the only full-size array the process holds.
    """
    selected = np.empty((positions.shape[0], len(particles), *positions.shape[2:]), np.float32)
    particles = np.asarray(particles, dtype=np.intp)
    start = 0
    for block in frame_blocks(positions):
        # Frame by frame, so the fancy-indexing temporary is one frame big.
        for offset, frame in enumerate(block):
            selected[start + offset] = frame[particles]
        start += len(block)
        release_pages(positions)
    return selected
