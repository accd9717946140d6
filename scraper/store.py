"""Content-addressed raw files: raw/<aa>/<sha256>.<ext>, written atomically, each stored once; the
lock that lets one writer at a time (a crawl) work there, and the clean-up of what a killed one left."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.clock import now_iso
from common.files import atomic_write_bytes, sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError
from scraper.images import EXTENSIONS, ImageInfo

LOCK_NAME = ".lock"
LEFTOVERS = "??/.*.tmp"  # common.files.atomic_path's temporary files, beside their targets


class RawStore:
    def __init__(self, root: DataRoot) -> None:
        self.root = root

    def put(self, data: bytes, info: ImageInfo, sha256: str | None = None) -> dict:
        """Write `data` unless the same bytes are already there; return its `files` row.

        A file left by a crawl killed before its manifest row was written is simply reused.
        """
        sha256 = sha256 or sha256_bytes(data)
        path = self.root.raw_path(sha256, EXTENSIONS[info.type])
        if not path.is_file() or path.stat().st_size != len(data):
            atomic_write_bytes(path, data)
        return {
            "sha256": sha256,
            "path": path.relative_to(self.root.root).as_posix(),
            "type": info.type,
            "bytes": len(data),
            "width": info.width,
            "height": info.height,
            "first_seen": now_iso(),
        }

    def remove_leftovers(self) -> int:
        """Delete the temporary files of writes that never finished (the writer was killed); how
        many. Call it only while holding `raw_lock`: then nobody else is writing."""
        removed = 0
        for tmp in self.root.raw_dir.glob(LEFTOVERS):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed


@contextmanager
def raw_lock(raw_dir: Path) -> Iterator[None]:
    """Hold raw/.lock while writing to the raw store (a crawl does); BadInputError while another
    process holds it. The system lets go of it when the holder ends, however it ends."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    with open(raw_dir / LOCK_NAME, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise BadInputError(
                f"another crawl or import (process {holder}) is writing to {raw_dir}; wait for it to finish, "
                "or give this one another data directory"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
