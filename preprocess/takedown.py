"""Takedown: `faces forget <image URL | page URL | sha256>`.

Afterwards no byte of the image is left under the data root except the record of its URLs and hash
in raw/manifest.sqlite `forgotten` (which the crawler checks, so it is never fetched again):
- its raw file and crops are deleted, and its rows in both manifests and in validation's state
  (SQLite's secure_delete overwrites the freed space, and the write-ahead log is truncated);
- every snapshot whose images hold one of its crops is deleted whole. A snapshot is frozen and named
  by its content, so rewriting it without the crop would make it a different dataset under the old
  name; a new snapshot is built instead, from what is left;
- a snapshot that shows it only on a rejected contact sheet (its dataset never held it) is redacted:
  the tile is painted white and the crop is dropped from report.json, report.md and the card.

The order makes a killed takedown safe to run again: the forgotten record first, then the files,
then the rows that map the URL to the image last.
"""

import json
import math
import os
import re
import shutil
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from common.files import atomic_write_json, sha256_file
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from preprocess import snapshot
from preprocess.checks import REASONS
from preprocess.config import ValidateConfig
from preprocess.validate_store import as_root, connect, has_table, now_iso, store_path

SHA256 = re.compile(r"[0-9a-f]{64}")
FORGOTTEN_SCHEMA = "CREATE TABLE IF NOT EXISTS forgotten(key TEXT PRIMARY KEY, sha256 TEXT, at TEXT)"


@dataclass
class Target:
    key: str
    shas: set[str] = field(default_factory=set)  # source images to remove
    urls: set[str] = field(default_factory=set)  # every URL that served one of them, or the page's URLs
    crop_ids: set[str] = field(default_factory=set)
    crop_files: set[Path] = field(default_factory=set)


def forget(key: str, root: DataRoot | str | Path, validate_config: ValidateConfig) -> StageReport:
    start = time.monotonic()
    root = as_root(root)
    key = normalise_key(key)
    target = resolve(root, key)
    record_forgotten(root, target)
    if not target.shas:
        return StageReport(
            stage="forget",
            counts={"images": 0},
            notes=[f"nothing stored matches {key}; it is recorded, so the crawler will never fetch it"],
            seconds=time.monotonic() - start,
        )

    removed, redacted = purge_snapshots(root, target)
    crop_hashes = {sha256_file(p) for p in target.crop_files if p.is_file()}
    files = remove_files(root, target)
    remove_rows(root, target, crop_hashes)
    notes = snapshot_notes(removed, redacted) + runs_notes(root, removed)
    outputs = {}
    try:
        report = snapshot_after(root, validate_config)
        outputs = {k: v for k, v in report.outputs.items() if k in ("dataset", "report", "card")}
        notes += report.notes
    except BadInputError as e:
        if root.latest_dataset.is_symlink() and not root.latest_dataset.exists():
            root.latest_dataset.unlink()  # it pointed at a deleted snapshot
        notes.append(f"no new snapshot could be built from what is left: {e}")
    return StageReport(
        stage="forget",
        counts={
            "images": len(target.shas),
            "urls": len(target.urls),
            "files removed": files,
            "crops removed": len(target.crop_ids),
            "snapshots removed": len(removed),
            "snapshots redacted": len(redacted),
        },
        outputs=outputs,
        notes=notes,
        seconds=time.monotonic() - start,
    )


def normalise_key(key: str) -> str:
    key = key.strip()
    if SHA256.fullmatch(key.lower()):
        return key.lower()
    if key.startswith(("http://", "https://")):
        return key
    raise BadInputError(
        f"faces forget {key!r}: not an http(s) URL or a sha256 (64 hex digits); pass the image URL, the page "
        "URL it was found on, or its sha256 (the `sha256` column of a dataset's index.csv)"
    )


# --- finding --------------------------------------------------------------------------------------------


def resolve(root: DataRoot, key: str) -> Target:
    """Every image the key names, every URL that served one of them, and their crops."""
    target = Target(key)
    if SHA256.fullmatch(key):
        target.shas.add(key)
    if root.raw_manifest.is_file():
        with connect(root.raw_manifest) as con:
            if has_table(con, "urls"):
                rows = con.execute("SELECT url, sha256 FROM urls WHERE url = ? OR page_url = ?", (key, key))
                for url, sha in rows:
                    target.urls.add(url)
                    if sha:
                        target.shas.add(sha)
            if has_table(con, "forgotten"):  # a takedown killed after its rows went: finish it
                target.shas |= {
                    s for (s,) in con.execute("SELECT sha256 FROM forgotten WHERE key = ?", (key,)) if s
                }
            if has_table(con, "urls") and target.shas:
                marks = ",".join("?" * len(target.shas))
                rows = con.execute(f"SELECT url FROM urls WHERE sha256 IN ({marks})", sorted(target.shas))
                target.urls |= {url for (url,) in rows}
    if root.faces_manifest.is_file() and target.shas:
        with connect(root.faces_manifest) as con:
            if has_table(con, "crops"):
                marks = ",".join("?" * len(target.shas))
                for crop_id, path in con.execute(
                    f"SELECT crop_id, path FROM crops WHERE sha256 IN ({marks})", sorted(target.shas)
                ):
                    target.crop_ids.add(crop_id)
                    target.crop_files.add(root.root / path)
    for sha in target.shas:  # crops on disk that no row names (a run killed mid-write)
        for path in root.faces_dir.glob(f"{sha}-*.png"):
            target.crop_ids.add(path.stem)
            target.crop_files.add(path)
    return target


def record_forgotten(root: DataRoot, target: Target) -> None:
    """The record that outlives the image: the key, every URL and every hash, in one transaction."""
    root.raw_dir.mkdir(parents=True, exist_ok=True)
    at = now_iso()
    only = next(iter(target.shas)) if len(target.shas) == 1 else None
    rows = [(target.key, only, at)]
    rows += [(url, sha_of_url(root, url, target), at) for url in sorted(target.urls)]
    rows += [(sha, sha, at) for sha in sorted(target.shas)]
    with connect(root.raw_manifest) as con, con:
        con.execute(FORGOTTEN_SCHEMA)
        con.executemany("INSERT OR IGNORE INTO forgotten(key, sha256, at) VALUES (?, ?, ?)", rows)


def sha_of_url(root: DataRoot, url: str, target: Target) -> str | None:
    with connect(root.raw_manifest) as con:
        row = con.execute("SELECT sha256 FROM urls WHERE url = ?", (url,)).fetchone()
    return row[0] if row and row[0] in target.shas else None


# --- snapshots --------------------------------------------------------------------------------------------


def purge_snapshots(root: DataRoot, target: Target) -> tuple[list[str], list[str]]:
    """Delete snapshots whose images hold the image; redact those that only show it as rejected."""
    if not root.datasets_dir.is_dir():
        return [], []
    for p in root.datasets_dir.iterdir():  # half-built or half-deleted snapshots may hold it too
        if p.is_dir() and p.name.startswith((snapshot.TMP_PREFIX, snapshot.TRASH_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)
    removed, redacted = [], []
    for folder in snapshot.list_snapshots(root):
        if any(row["sha256"] in target.shas for row in snapshot.read_index(folder)):
            snapshot.remove_snapshot(folder)
            removed.append(folder.name)
        elif redact(folder, target):
            redacted.append(folder.name)
    return removed, redacted


def redact(folder: Path, target: Target) -> bool:
    report = snapshot.load_report(folder)
    gone = [q for q in report["quarantined"] if q["sha256"] in target.shas or q["crop_id"] in target.crop_ids]
    if not gone:  # (duplicates name only accepted crops, and a snapshot holding those is deleted)
        return False
    stat = folder.stat()
    gone_ids = {q["crop_id"] for q in gone}
    for name, ids in report.get("sheets", {}).items():
        if name.startswith("rejected-") and gone_ids.intersection(ids):
            blank_tiles(folder / name, ids, gone_ids, report["image_size"])
            report["sheets"][name] = ["" if i in gone_ids else i for i in ids]
    report["quarantined"] = [q for q in report["quarantined"] if q["crop_id"] not in gone_ids]
    counts = report["counts"]
    counts["crops"] -= len(gone)
    counts["quarantined"] -= len(gone)
    counts.update({r: sum(r in q["reasons"] for q in report["quarantined"]) for r in REASONS})
    report.setdefault("redactions", []).append({"at": now_iso(), "crops": len(gone)})
    atomic_write_json(folder / "report.json", report)
    snapshot.render(folder, report, snapshot.read_index(folder))
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # redaction does not make it newer
    return True


def blank_tiles(sheet_path: Path, ids: list[str], gone: set[str], size: int) -> None:
    """Paint the tiles of the given crops white, in the grid snapshot.contact_sheet laid out."""
    sheet = cv2.imread(str(sheet_path))
    cols = math.ceil(math.sqrt(len(ids)))
    step = size + snapshot.SHEET_GAP
    for i, crop_id in enumerate(ids):
        if crop_id in gone:
            y, x = snapshot.SHEET_GAP + (i // cols) * step, snapshot.SHEET_GAP + (i % cols) * step
            sheet[y : y + size, x : x + size] = 255
    snapshot.write_png(sheet_path, sheet)


def snapshot_after(root: DataRoot, config: ValidateConfig) -> StageReport:
    from preprocess.validate import validate  # validate imports snapshot too; keep the graph simple

    return validate(config, root)


def snapshot_notes(removed: list[str], redacted: list[str]) -> list[str]:
    notes = []
    if removed:
        notes.append(f"snapshots that contained it, deleted: {', '.join(removed)}")
    if redacted:
        notes.append(f"snapshots that showed it as rejected, redacted: {', '.join(redacted)}")
    if not removed and not redacted:
        notes.append("no snapshot contained it")
    return notes


def runs_notes(root: DataRoot, removed: list[str]) -> list[str]:
    """Training runs made from a deleted snapshot: their models learned from the image."""
    runs = []
    for run_json in sorted(root.runs_dir.glob("*/run.json")) if root.runs_dir.is_dir() else []:
        try:
            dataset = json.loads(run_json.read_text()).get("dataset_id", "")
        except (OSError, ValueError):
            continue
        if dataset in removed:
            runs.append(run_json.parent.name)
    if not runs:
        return []
    return [
        f"runs trained on a deleted snapshot (retrain, or delete them, to forget it fully): {', '.join(runs)}"
    ]


# --- files and rows -----------------------------------------------------------------------------------------


def remove_files(root: DataRoot, target: Target) -> int:
    paths = set(target.crop_files)
    for sha in target.shas:
        folder = root.raw_dir / sha[:2]
        paths |= set(folder.glob(f"{sha}.*")) | set(folder.glob(f".{sha}.*"))  # and atomic-write leftovers
        paths |= set(root.faces_dir.glob(f".{sha}-*"))
    removed = 0
    for p in paths:
        if p.is_file():
            p.unlink()
            removed += 1
    return removed


def remove_rows(root: DataRoot, target: Target, crop_hashes: set[str]) -> None:
    shas, urls, ids = sorted(target.shas), sorted(target.urls), sorted(target.crop_ids)
    if store_path(root).is_file():
        delete(
            store_path(root),
            [
                ("measures", "crop_sha256", sorted(crop_hashes)),
                ("quarantine", "sha256", shas),
                ("releases", "crop_id", ids),
            ],
        )
    if root.faces_manifest.is_file():
        delete(root.faces_manifest, [("crops", "sha256", shas), ("processed", "sha256", shas)])
    if root.raw_manifest.is_file():  # last: these rows map the URL to the image
        delete(
            root.raw_manifest, [("files", "sha256", shas), ("urls", "sha256", shas), ("urls", "url", urls)]
        )


def delete(db: Path, where: list[tuple[str, str, list[str]]]) -> None:
    """Delete rows in one transaction, zeroing the freed space, then truncate the write-ahead log."""
    with connect(db, secure_delete=True) as con:
        with con:
            for table, column, values in where:
                if values and has_table(con, table):
                    marks = ",".join("?" * len(values))
                    con.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", values)
        with suppress(sqlite3.OperationalError):  # another process is writing: its checkpoint does it
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
