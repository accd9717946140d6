"""Validation's inputs and its own state.

Inputs (read only): the crops preprocess wrote (faces/manifest.sqlite `crops` and the PNGs) and their
provenance in raw/manifest.sqlite (`files`, `urls`, `forgotten`).

State (datasets/validate.sqlite, owned by validation): cached measurements per crop content, the
current quarantine with reasons, the user's releases, and the fingerprint of the last run.
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.files import sha256_file
from common.layout import DataRoot
from common.report import BadInputError
from preprocess.checks import MEASURE_VERSION, Measures

SCHEMA = """
CREATE TABLE IF NOT EXISTS measures(
    crop_sha256 TEXT PRIMARY KEY, version INTEGER, problem TEXT, pixels_sha256 TEXT, phash TEXT,
    sharpness REAL, brightness REAL, contrast REAL, chroma REAL, face_score REAL);
CREATE TABLE IF NOT EXISTS quarantine(
    crop_id TEXT PRIMARY KEY, sha256 TEXT, crop_sha256 TEXT, path TEXT, reasons TEXT, detail TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS releases(crop_id TEXT PRIMARY KEY, crop_sha256 TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT);
"""


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def as_root(root: DataRoot | str | Path) -> DataRoot:
    return root if isinstance(root, DataRoot) else DataRoot(root)


def store_path(root: DataRoot) -> Path:
    return root.datasets_dir / "validate.sqlite"


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
    path = store_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Rollback journal, not WAL, and secure_delete: a takedown must leave no stale copy of a row behind.
    with connect(path, secure_delete=True) as con:
        con.executescript(SCHEMA)
        yield con


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return (
        con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
        is not None
    )


# --- inputs ---------------------------------------------------------------------------------------


@dataclass
class Crop:
    crop_id: str
    sha256: str  # the source image
    path: Path  # absolute
    file_sha256: str | None  # None: the file is missing
    first_seen: str | None  # when its source was first stored; orders "earliest" for duplicates


def read_crops(root: DataRoot) -> list[Crop]:
    """Every crop in faces/manifest.sqlite with the hash of its file, earliest source first."""
    if not root.faces_manifest.is_file():
        raise BadInputError(
            f"no crops to validate: {root.faces_manifest} does not exist; run the preprocess stage first "
            "(`faces preprocess`)"
        )
    with connect(root.faces_manifest) as con:
        if not has_table(con, "crops"):
            raise BadInputError(f"{root.faces_manifest} has no crops table; rerun `faces preprocess`")
        rows = con.execute("SELECT crop_id, sha256, path FROM crops").fetchall()
    first_seen = read_first_seen(root)
    crops = []
    for crop_id, sha, rel in rows:
        path = root.root / rel
        file_sha = sha256_file(path) if path.is_file() else None
        crops.append(Crop(crop_id, sha, path, file_sha, first_seen.get(sha)))
    crops.sort(key=lambda c: (c.first_seen is None, c.first_seen or "", c.crop_id))
    return crops


def read_first_seen(root: DataRoot) -> dict[str, str]:
    if not root.raw_manifest.is_file():
        return {}
    with connect(root.raw_manifest) as con:
        if not has_table(con, "files"):
            return {}
        return {sha: str(at) for sha, at in con.execute("SELECT sha256, first_seen FROM files") if at}


@dataclass
class Provenance:
    url: str = ""
    page_url: str = ""
    host: str = ""
    licence: str = ""
    fetched_at: str = ""


@dataclass
class Sources:
    provenance: dict[str, Provenance]  # source sha256 -> its earliest fetched URL
    opted_out: dict[str, str]  # source sha256 -> the directive (or status) that opted it out
    forgotten: set[str]  # source sha256s taken down


def read_sources(root: DataRoot) -> Sources:
    sources = Sources({}, {}, set())
    if not root.raw_manifest.is_file():
        return sources
    with connect(root.raw_manifest) as con:
        if has_table(con, "urls"):
            rows = con.execute(
                "SELECT sha256, url, page_url, host, licence, fetched_at, status, opt_out FROM urls "
                "WHERE sha256 IS NOT NULL ORDER BY fetched_at IS NULL, fetched_at, url"
            )
            for sha, url, page, host, licence, fetched_at, status, opt_out in rows:
                sources.provenance.setdefault(
                    sha, Provenance(url, page or "", host or "", licence or "", fetched_at or "")
                )
                if opt_out or status == "opted_out":
                    sources.opted_out.setdefault(sha, opt_out or status)
        if has_table(con, "forgotten"):
            sources.forgotten = {s for (s,) in con.execute("SELECT sha256 FROM forgotten") if s}
    return sources


# --- state ----------------------------------------------------------------------------------------

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


def load_releases(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT crop_id, crop_sha256 FROM releases"))


def get_state(con: sqlite3.Connection, key: str) -> str | None:
    row = con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_state(con: sqlite3.Connection, **values: str) -> None:
    with con:
        con.executemany("INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)", list(values.items()))
