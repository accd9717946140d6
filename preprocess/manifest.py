"""faces/manifest.sqlite: its schema (docs/DESIGN.md: `processed`, `crops`) and every query on it.

Preprocess opens it with `open_manifest` (WAL, tables created) and writes it in the parent process
only, one transaction per batch. Validation and takedown read and delete through the functions at
the end, which never create the file or its tables.
"""

import json
import sqlite3
from collections.abc import Collection
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    sha256 TEXT NOT NULL, config_hash TEXT NOT NULL, status TEXT NOT NULL, faces INTEGER NOT NULL,
    error TEXT, at TEXT NOT NULL, PRIMARY KEY (sha256, config_hash));
CREATE TABLE IF NOT EXISTS crops (
    crop_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, face_index INTEGER NOT NULL, path TEXT NOT NULL,
    box TEXT NOT NULL, landmarks TEXT, score REAL NOT NULL, blur REAL NOT NULL, detector TEXT NOT NULL,
    config_hash TEXT NOT NULL, size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS crops_sha256 ON crops (sha256);
"""


@dataclass
class Crop:
    """One row of the crops table."""

    crop_id: str
    sha256: str
    face_index: int
    path: str
    box: list[float]
    landmarks: list[list[float]] | None
    score: float
    blur: float
    detector: str
    config_hash: str
    size: int


@dataclass
class Outcome:
    """What became of one source: `ok` (with crops), `no_face`, `error` (with a reason), or `missing`
    (its file is not there yet: not recorded, so the next run tries again)."""

    sha256: str
    status: str
    crops: list[Crop] = field(default_factory=list)
    error: str | None = None


def _marks(values: Collection) -> str:
    return ",".join("?" * len(values))


# --- preprocess (parent process only) --------------------------------------------------------------


def open_manifest(path: Path) -> sqlite3.Connection:
    """The manifest with its tables, in autocommit mode: each write says BEGIN IMMEDIATE itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def processed_among(db: sqlite3.Connection, config_hash: str, hashes: Collection[str]) -> set[str]:
    """Those of `hashes` already processed with this configuration."""
    if not hashes:
        return set()
    sql = f"SELECT sha256 FROM processed WHERE config_hash = ? AND sha256 IN ({_marks(hashes)})"
    return {sha for (sha,) in db.execute(sql, (config_hash, *hashes))}


def claim(db: sqlite3.Connection, hashes: Collection[str]) -> None:
    """Drop the sources' records of every configuration, so a batch cut short is redone by any next run."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM processed WHERE sha256 = ?", [(sha,) for sha in hashes])


def record(db: sqlite3.Connection, config_hash: str, outcomes: list[Outcome], at: str) -> None:
    """Record outcomes in one transaction; each source's rows replace its old ones."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        for o in outcomes:
            db.execute("DELETE FROM processed WHERE sha256 = ?", (o.sha256,))
            db.execute("DELETE FROM crops WHERE sha256 = ?", (o.sha256,))
            db.execute(
                "INSERT INTO processed VALUES (?, ?, ?, ?, ?, ?)",
                (o.sha256, config_hash, o.status, len(o.crops), o.error, at),
            )
            db.executemany(
                "INSERT INTO crops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (c.crop_id, c.sha256, c.face_index, c.path, json.dumps(c.box),
                     None if c.landmarks is None else json.dumps(c.landmarks),
                     c.score, c.blur, c.detector, c.config_hash, c.size)
                    for c in o.crops
                ],
            )  # fmt: skip


# --- validation and takedown ------------------------------------------------------------------------


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return (
        con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
        is not None
    )


def current_crops(path: Path) -> list[tuple[str, str, str]] | None:
    """(crop_id, source sha256, path relative to the data root) of every crop; None without a crops table."""
    if not path.is_file():
        return None
    with closing(sqlite3.connect(path, timeout=60)) as con:
        return (
            con.execute("SELECT crop_id, sha256, path FROM crops").fetchall()
            if _has_table(con, "crops")
            else None
        )


def crops_of_sources(path: Path, hashes: Collection[str]) -> list[tuple[str, str]]:
    """(crop_id, path relative to the data root) of the crops cut from the sources `hashes`."""
    if not hashes or not path.is_file():
        return []
    with closing(sqlite3.connect(path, timeout=60)) as con:
        if not _has_table(con, "crops"):
            return []
        sql = f"SELECT crop_id, path FROM crops WHERE sha256 IN ({_marks(hashes)})"
        return con.execute(sql, sorted(hashes)).fetchall()


def delete_sources(con: sqlite3.Connection, hashes: Collection[str]) -> None:
    """Delete the sources' crops and processed rows within the caller's transaction (a takedown's)."""
    for table in ("crops", "processed"):
        if hashes and _has_table(con, table):
            con.execute(f"DELETE FROM {table} WHERE sha256 IN ({_marks(hashes)})", sorted(hashes))
