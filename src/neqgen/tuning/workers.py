"""Worker processes of a study: who runs a trial, and finding trials of dead workers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

# Key of the trial user attribute that identifies the worker process running the trial.
WORKER_ATTRIBUTE = "worker"


def worker_identity() -> dict[str, Any]:
    """Return the host, boot id, process id and start time of this worker process.

    The boot id and the start time (read from Linux /proc) tell a live worker from a later
    process that reuses its id. Elsewhere both are None, and only the id is compared.
    """
    return {
        "host": socket.gethostname(),
        "boot": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
    }


def is_dead_local_worker(identity: Mapping[str, Any] | None) -> bool:
    """Return True if identity names a worker on this host whose process has ended.

    A worker of another host is never reported dead here; the heartbeat of RDB storage
    covers those.
    """
    if not identity or identity.get("host") != socket.gethostname():
        return False
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    if boot is not None and identity.get("boot") not in (None, boot):
        # The host rebooted since the worker started.
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        # A process of another user has this id. Its start time, compared below, shows
        # whether it is the worker.
        pass
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        # A zombie: the worker ended and its parent has not yet collected its status.
        return True
    start = identity.get("start")
    return start is not None and fields[19] != start


def fail_dead_local_trials(
    study: Study, on_failed: Callable[[Study, FrozenTrial], None] | None = None
) -> list[FrozenTrial]:
    """Mark the running trials of workers that died on this host as failed.

    Returns the trials it marked, after calling on_failed for each. A worker that was
    killed (even by SIGKILL) leaves its trial RUNNING; this finds it at once, while the
    heartbeat needs a grace period and works only with RDB storage.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead_local_worker(trial.user_attrs.get(WORKER_ATTRIBUTE)):
            continue
        # skip_if_finished: another worker may have marked it in the meantime.
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning(
            "Trial %d was left running by worker process %s, which has ended; marked it failed",
            trial.number,
            trial.user_attrs[WORKER_ATTRIBUTE].get("pid"),
        )
        (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == trial.number]
        if on_failed is not None:
            on_failed(study, frozen)
        failed.append(frozen)
    return failed


def _process_start(pid: int) -> str | None:
    """Return the start time of a process in clock ticks since boot (Linux), else None."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # Field 22 of /proc/<pid>/stat; the fields after the ")" that closes the command name
    # start at field 3.
    return stat.rsplit(")", 1)[1].split()[19]


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on <folder>/.tune.lock, shared by the workers of this host.

    Workers that start together on a fresh store would otherwise create the MLflow and
    Optuna tables at the same time, and one of them fails.
    """
    path = Path(folder).resolve() / ".tune.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        if fcntl is None:
            # NOTE: without fcntl (Windows) workers are not serialised; start them one by one.
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
