"""Content-addressed raw files: raw/<aa>/<sha256>.<ext>, written atomically, each stored once."""

from common.clock import now_iso
from common.files import atomic_write_bytes, sha256_bytes
from common.layout import DataRoot
from scraper.images import EXTENSIONS, ImageInfo


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
