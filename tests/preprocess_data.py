"""Inputs for the preprocess tests: raw files stored as the scraper stores them, a fake huge PNG."""

import hashlib
import sqlite3
import struct
import zlib
from contextlib import closing

from common.layout import DataRoot


def add_raw_files(root: DataRoot, files: list[bytes], ext: str = "jpg") -> list[str]:
    """Store files the way the scraper does (raw/<aa>/<sha256>.<ext> + a `files` row); their sha256s."""
    root.raw_dir.mkdir(parents=True, exist_ok=True)
    shas = []
    with closing(sqlite3.connect(root.raw_manifest)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS files (sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, type TEXT, "
            "bytes INTEGER, width INTEGER, height INTEGER, first_seen TEXT)"
        )
        for data in files:
            sha = hashlib.sha256(data).hexdigest()
            path = root.raw_path(sha, ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            rel = path.relative_to(root.root).as_posix()
            db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sha, rel, "jpeg", len(data), 512, 512, "2026-01-01T00:00:00Z"),
            )
            shas.append(sha)
    return shas


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header (with correct CRC) for a huge image, followed by a tiny data chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
