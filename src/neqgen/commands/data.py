"""List the datasets in the workspace with their sizes, hashes and DVC remote status."""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from neqgen.data.dataset import read_member_header
from neqgen.lineage import file_md5

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
COLUMNS = (
    ("path", "path"),
    ("system", "system"),
    ("protocol", "protocol"),
    ("replica", "replica"),
    ("split", "split"),
    ("sizes", "sizes"),
    ("seed", "seed"),
    ("md5", "DVC md5"),
    ("content_hash", "content hash"),
    ("pushed", "pushed"),
)


@dataclass
class DatasetEntry:
    """A dataset file with its sizes, seed, hashes and whether the default DVC remote has it."""

    path: str
    system: str
    protocol: str
    replica: int | None
    split: str
    sizes: str
    seed: int | None
    md5: str
    content_hash: str | None
    pushed: str = "unknown"
    problem: str | None = None


def find_datasets(data_root: Path) -> list[tuple[Path, str, str, int | None, str]]:
    """Return (path, system, protocol, replica, split) of every dataset file under data_root.

    Ensembles are <system>/<protocol>/r<replica>/{train,heldout}.npz and references are
    <system>/<protocol>/reference.npz; other files are skipped.
    """
    found = []
    for path in sorted(data_root.glob("*/*/r*/*.npz")):
        replica_name = path.parent.name
        if path.stem not in SPLITS or not replica_name[1:].isdigit():
            continue
        system, protocol = path.parent.parent.parent.name, path.parent.parent.name
        found.append((path, system, protocol, int(replica_name[1:]), path.stem))
    for path in sorted(data_root.glob("*/*/reference.npz")):
        found.append((path, path.parent.parent.name, path.parent.name, None, "reference"))
    return sorted(found, key=lambda item: (item[1], item[2], item[3] is None, item[3], item[4]))


def describe_ensemble(path: Path) -> dict[str, Any]:
    """Read an ensemble file's sizes, seed and content hash from its headers and metadata.

    Only the .npy headers of the positions and the small metadata member are read, never
    the positions themselves.
    """
    with zipfile.ZipFile(path) as archive:
        shape, _, _ = read_member_header(path, archive, "positions")
        with archive.open("metadata.npy") as member:
            metadata = json.loads(str(np.lib.format.read_array(member)[()]))
    n_frames, n_particles, dim = shape
    return {
        "sizes": f"{n_particles} x {n_frames} x {dim}",
        "seed": metadata.get("seed"),
        "content_hash": metadata.get("content_hash"),
    }


def describe_reference(path: Path) -> dict[str, Any]:
    """Read a reference file's grid (cells per dimension) and frame count from its headers."""
    with zipfile.ZipFile(path) as archive:
        shape, _, _ = read_member_header(path, archive, "masses")
    n_frames, *cells = shape
    grid = " x ".join(str(size) for size in cells)
    return {"sizes": f"grid {grid}, {n_frames} frames", "seed": None, "content_hash": None}


def dvc_md5(path: Path, state=None) -> str:
    """Return the MD5 that DVC 3 records for a file: the MD5 of its bytes.

    With a DVC repository's ``state``, DVC's own cache of hashes (keyed by inode, size and
    mtime) is used, so a file hashed by an earlier ``dvc`` command is not read again.
    """
    if state is not None:
        from dvc.fs import localfs
        from dvc_data.hashfile.hash import hash_file

        _, hash_info = hash_file(str(path), localfs, "md5", state=state)
        return hash_info.value
    return file_md5(path)


def open_dvc_repo(data_root: Path):
    """Return (the DVC repository that contains data_root, None) or (None, the reason)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(Repo.find_root(str(data_root.resolve()))), None
    except NotDvcRepoError:
        return None, f"{data_root} is not inside a DVC repository"


def remote_status(repo, entries: list[DatasetEntry]) -> str | None:
    """Fill each entry's ``pushed`` from the default DVC remote; return why not, or None.

    The remote is asked for the objects with the entries' MD5s, the same comparison that
    ``dvc status --cloud`` makes, so a file counts as pushed when exactly its current
    content is in the remote.
    """
    from dvc.config import NoRemoteError
    from dvc.exceptions import DvcException
    from dvc_data.hashfile.hash_info import HashInfo

    hashes = {HashInfo("md5", entry.md5, obj_name=entry.path) for entry in entries}
    try:
        status = repo.cloud.status(hashes)
    except NoRemoteError:
        return "no default DVC remote; set one with `dvc remote add -d <name> <url>`"
    except (DvcException, OSError) as error:
        return f"the default DVC remote could not be checked ({error})"

    in_remote = {info.value for info in (*status.ok, *status.deleted)}
    for entry in entries:
        entry.pushed = "yes" if entry.md5 in in_remote else "no"
    return None


def list_datasets(cfg: DictConfig) -> tuple[list[DatasetEntry], str | None]:
    """Describe every dataset under cfg.paths.data; return the entries and why ``pushed``
    is unknown (None when the remote was checked).

    Raises
    ------
    FileNotFoundError
        If the data folder does not exist.
    """
    data_root = Path(cfg.paths.data)
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"data folder {data_root} not found; create datasets with `neqgen simulate` or "
            f"fetch them with `dvc pull`, or point paths.data at the folder"
        )
    repo, reason = open_dvc_repo(data_root)
    try:
        state = repo.state if repo is not None else None
        entries = []
        for path, system, protocol, replica, split in find_datasets(data_root):
            entries.append(describe_file(path, system, protocol, replica, split, state))
        if repo is not None and entries:
            reason = remote_status(repo, entries)
    finally:
        if repo is not None:
            repo.close()
    return entries, reason


def describe_file(
    path: Path, system: str, protocol: str, replica: int | None, split: str, state
) -> DatasetEntry:
    """Build the entry of one file; an unreadable archive gets its error as ``problem``."""
    describe = describe_reference if split == "reference" else describe_ensemble
    problem = None
    try:
        details = describe(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        details = {"sizes": "unreadable", "seed": None, "content_hash": None}
        problem = f"{path} is not a readable dataset archive ({error})"
    return DatasetEntry(
        path=str(path),
        system=system,
        protocol=protocol,
        replica=replica,
        split=split,
        md5=dvc_md5(path, state),
        problem=problem,
        **details,
    )


def format_table(entries: list[DatasetEntry], reason: str | None) -> str:
    """Format the entries as an aligned text table, with the reason for unknown status."""
    if not entries:
        return "no datasets found"
    rows = [[label for _, label in COLUMNS]]
    for entry in entries:
        values = asdict(entry)
        if values["content_hash"]:
            values["content_hash"] = values["content_hash"][:12]
        rows.append(["-" if values[key] is None else str(values[key]) for key, _ in COLUMNS])
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    notes = [entry.problem for entry in entries if entry.problem]
    if reason:
        notes.append(f"pushed is unknown: {reason}")
    return "\n".join(lines + notes)


def run_data_list(cfg: DictConfig, as_json: bool = False) -> str:
    """Return the dataset listing as a text table, or as JSON with ``as_json``."""
    entries, reason = list_datasets(cfg)
    if as_json:
        listing = {"datasets": [asdict(entry) for entry in entries], "pushed_unknown": reason}
        return json.dumps(listing, indent=2)
    return format_table(entries, reason)
