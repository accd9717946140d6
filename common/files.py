"""Atomic file writes and content hashing.

Every file a stage produces appears whole or not at all: it is written to a temporary file in the
same directory, flushed to disk, then renamed over the target (rename is atomic on POSIX).
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_CHUNK = 1 << 20
# mkstemp makes private (0600) files; outputs should get the usual permissions. Read the umask once,
# at import, while no other thread can be changing it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed onto `target`.

    For writers that want a path (np.save, torch.save, cv2.imwrite). `suffix` keeps the extension
    for writers that pick the format from it. On error the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_with(target: str | Path, write: Callable[[Path], Any], suffix: str = "") -> Path:
    """Call `write(tmp_path)` and move the result onto `target` atomically."""
    with atomic_path(target, suffix=suffix) as tmp:
        write(tmp)
    return Path(target)


def atomic_symlink(target: str | Path, link: str | Path) -> None:
    """Point `link` at `target` (relative paths work best), replacing any old link atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable: a folder swapped into place survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def config_hash(config: BaseModel | dict, length: int = 12) -> str:
    """A short, stable hash of a config: the same settings give the same hash across runs."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(canonical.encode())[:length]


def tree_fingerprint(paths: list[Path]) -> str:
    """A cheap content fingerprint of files on disk: their names, sizes and modification times.

    Used for cache keys of whole stages, where hashing every byte of every input would cost more
    than the stage itself; files that change are rewritten atomically, so their mtime changes too.
    """
    h = hashlib.sha256()
    for p in sorted(paths):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_json(path: str | Path) -> dict:
    """A JSON object from disk, or {} when the file is missing or unreadable (a record not yet written)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def pid_alive(pid: int | str) -> bool:
    """Whether process `pid` still runs: temporary folders named after a dead process are leftovers."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# --- whole folders: built beside their final place, then swapped in -----------------------------------

FOLDER_TMP, FOLDER_OLD = ".tmp-", ".old-"


def temp_folder_for(final: Path) -> Path:
    """An empty folder beside `final` to build its next version in, named after this process."""
    tmp = final.parent / f"{FOLDER_TMP}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_folder(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`: the old folder is moved aside first and removed only after the swap.

    Temporary files are created private (0600); a finished folder is meant to be shared, so its files
    get the umask's permissions first.
    """
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~_UMASK)
    old = final.parent / f"{FOLDER_OLD}{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder_swap(final: Path) -> None:
    """Undo what a killed swap_folder left: the old folder put back, dead processes' temp folders gone."""
    old = final.parent / f"{FOLDER_OLD}{final.name}"
    if old.is_dir() and not final.exists():
        os.rename(old, final)
    for leftover in final.parent.glob(f"{FOLDER_TMP}{final.name}-*") if final.parent.is_dir() else []:
        if not pid_alive(leftover.name.rsplit("-", 1)[-1]):
            shutil.rmtree(leftover, ignore_errors=True)
