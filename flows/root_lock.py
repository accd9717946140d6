"""One flow at a time on a data root, however many `faces serve` processes or workers share it.

Each flow holds an exclusive `flock` on `<data_root>/.faces.lock` while its stages run; a second flow on
the same data root waits for it, after a log line naming the holder (from `.faces.lock.holder`, which
the holder writes). The kernel releases a flock when its process ends, so a killed run leaves no stale
lock behind. flock works across processes on one machine and, on Linux, over NFS (as a POSIX lock).
"""

import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run

from common.clock import now_iso
from common.files import atomic_write_json, read_json

LOCK_NAME = ".faces.lock"
HOLDER_NAME = ".faces.lock.holder"

# The data roots this thread's flows hold: a flow inside a flow on the same data root passes through
# instead of waiting for itself. (Flows in other threads or processes take the lock as usual.)
_this_thread = threading.local()


def _holder_text(root: Path) -> str:
    holder = read_json(root / HOLDER_NAME)
    if not holder:
        return "another flow run"
    return (
        f"flow run {holder.get('flow_run')!r} (id {holder.get('flow_run_id')}, pid {holder.get('pid')} "
        f"on {holder.get('host')}, since {holder.get('since')})"
    )


def _acquire(lock_file, root: Path) -> None:
    """Take the lock, first saying who holds it when it is taken."""
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    get_run_logger().info(
        "data root %s is in use by %s; waiting for it to finish (one flow at a time per data root)",
        root,
        _holder_text(root),
    )
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    get_run_logger().info("data root %s is free; starting", root)


def _open_lock(root: Path):
    """The lock file, or None when the data root cannot hold one: the stage's own check then names the
    problem and the fix (a file in its place, no permission, a full disk)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        return open(root / LOCK_NAME, "a+")  # noqa: SIM115 - closed by data_root_lock
    except OSError:
        return None


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    lock_file = _open_lock(root)
    if lock_file is None:
        yield
        return
    with lock_file:  # closing it releases the lock
        _acquire(lock_file, root)
        holder = {"flow_run": flow_run.get_name(), "flow_run_id": flow_run.get_id(), "pid": os.getpid()}
        atomic_write_json(root / HOLDER_NAME, {**holder, "host": socket.gethostname(), "since": now_iso()})
        yield


@contextmanager
def data_root_lock(data_dir: str) -> Iterator[None]:
    """Hold the data root's lock for the block, waiting for whichever flow holds it now."""
    root = Path(data_dir)
    held: set[Path] = _this_thread.__dict__.setdefault("roots", set())
    if root in held:
        yield
        return
    with _locked(root):
        held.add(root)
        try:
            yield
        finally:
            held.discard(root)
