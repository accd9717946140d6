"""datasets/validate.sqlite (DataRoot.validate_store): validation's own state, and every query on it.

Cached measurements per crop content, the quarantine of the last run with reasons, the user's
releases, and the fingerprint of the last run. A rollback journal, not WAL, and secure_delete: a
takedown must leave no stale copy of a row behind.
"""

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from common.clock import now_iso
from common.layout import DataRoot
from validate.checks import MEASURE_VERSION, Measures

SCHEMA = """
CREATE TABLE IF NOT EXISTS measures(
    crop_sha256 TEXT PRIMARY KEY, version INTEGER, problem TEXT, pixels_sha256 TEXT, phash TEXT,
    sharpness REAL, brightness REAL, contrast REAL, chroma REAL, face_score REAL);
CREATE TABLE IF NOT EXISTS quarantine(
    crop_id TEXT PRIMARY KEY, sha256 TEXT, crop_sha256 TEXT, path TEXT, reasons TEXT, detail TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS releases(crop_id TEXT PRIMARY KEY, crop_sha256 TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT);
"""

MEASURE_FIELDS = (
    "problem",
    "pixels_sha256",
    "phash",
    "sharpness",
    "brightness",
    "contrast",
    "chroma",
    "face_score",
)


@contextmanager
def connect(path: Path, secure_delete: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection whose `with con:` blocks are transactions; closed on exit."""
    with closing(sqlite3.connect(path, timeout=60)) as con:
        con.execute("PRAGMA busy_timeout = 60000")
        if secure_delete:  # deleted rows are overwritten with zeros, not left in free pages
            con.execute("PRAGMA secure_delete = ON")
        yield con


@contextmanager
def open_store(root: DataRoot) -> Iterator[sqlite3.Connection]:
    path = root.validate_store
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path, secure_delete=True) as con:
        con.executescript(SCHEMA)
        yield con


# --- measurements -------------------------------------------------------------------------------------


def load_measures(con: sqlite3.Connection) -> dict[str, Measures]:
    out = {}
    rows = con.execute(
        f"SELECT crop_sha256, {', '.join(MEASURE_FIELDS)} FROM measures WHERE version = ?", (MEASURE_VERSION,)
    )
    for crop_sha, problem, pixels, ph, *rest in rows:
        out[crop_sha] = Measures(problem, pixels or "", int(ph or "0", 16), *rest)
    return out


def save_measures(con: sqlite3.Connection, items: list[tuple[str, Measures]]) -> None:
    with con:
        con.executemany(
            f"INSERT OR REPLACE INTO measures(crop_sha256, version, {', '.join(MEASURE_FIELDS)}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    sha,
                    MEASURE_VERSION,
                    m.problem,
                    m.pixels_sha256,
                    f"{m.phash:016x}",
                    m.sharpness,
                    m.brightness,
                    m.contrast,
                    m.chroma,
                    m.face_score,
                )
                for sha, m in items
            ],
        )


# --- quarantine and releases ----------------------------------------------------------------------------


def replace_quarantine(con: sqlite3.Connection, rows: list[tuple[str, str, str, str, str, str, str]]) -> None:
    """(crop_id, sha256, crop_sha256, path, reasons, detail, at) rows become the whole quarantine, in one
    transaction: the quarantine is always one run's whole verdict."""
    with con:
        con.execute("DELETE FROM quarantine")
        con.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def quarantine_rows(con: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """(crop_id, reasons, detail, path) of every quarantined crop, in the order they were judged."""
    return con.execute("SELECT crop_id, reasons, detail, path FROM quarantine ORDER BY rowid").fetchall()


def add_release(con: sqlite3.Connection, crop_id: str) -> None:
    """Release a quarantined crop for as long as its file keeps the hash it was quarantined with."""
    with con:
        crop_sha = con.execute("SELECT crop_sha256 FROM quarantine WHERE crop_id = ?", (crop_id,)).fetchone()[
            0
        ]
        con.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?)", (crop_id, crop_sha, now_iso()))


def load_releases(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT crop_id, crop_sha256 FROM releases"))


def delete_crops(
    con: sqlite3.Connection, crop_hashes: Collection[str], sources: Collection[str], crop_ids: Collection[str]
) -> None:
    """Forget crops within the caller's transaction (a takedown's): their measurements by file hash,
    their quarantine rows by source, their releases by crop id."""
    for table, column, values in (
        ("measures", "crop_sha256", crop_hashes),
        ("quarantine", "sha256", sources),
        ("releases", "crop_id", crop_ids),
    ):
        if values:
            marks = ",".join("?" * len(values))
            con.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", sorted(values))


# --- the last run -------------------------------------------------------------------------------------


def get_state(con: sqlite3.Connection, key: str) -> str | None:
    row = con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_state(con: sqlite3.Connection, **values: str) -> None:
    with con:
        con.executemany("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", list(values.items()))
