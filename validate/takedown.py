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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from common.clock import now_iso
from common.files import atomic_write_json, sha256_file
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from preprocess import manifest as faces_manifest
from scraper import manifest as raw_manifest
from validate import snapshot
from validate.checks import REASONS
from validate.config import ValidateConfig
from validate.inputs import as_root
from validate.stage import validate
from validate.store import connect, delete_crops

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Target:
    key: str
    shas: set[str] = field(default_factory=set)  # source images to remove
    # every URL that served one of them, or the page's URLs -> the hash it served (None: nothing stored)
    urls: dict[str, str | None] = field(default_factory=dict)
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
        report = validate(validate_config, root)
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
    target.urls = raw_manifest.urls_found_at(root.raw_manifest, key)
    target.shas |= {sha for sha in target.urls.values() if sha}
    # a takedown killed after its rows went: its record still names the hashes, so finish it
    target.shas |= raw_manifest.forgotten_hashes(root.raw_manifest, key)
    target.urls |= raw_manifest.urls_serving(root.raw_manifest, target.shas)
    for crop_id, path in faces_manifest.crops_of_sources(root.faces_manifest, target.shas):
        target.crop_ids.add(crop_id)
        target.crop_files.add(root.root / path)
    for sha in target.shas:  # crops on disk that no row names (a run killed mid-write)
        for path in root.faces_dir.glob(f"{sha}-*.png"):
            target.crop_ids.add(path.stem)
            target.crop_files.add(path)
    return target


def record_forgotten(root: DataRoot, target: Target) -> None:
    """The record that outlives the image: the key, every URL and every hash, in one transaction."""
    at = now_iso()
    only = next(iter(target.shas)) if len(target.shas) == 1 else None
    rows = [(target.key, only, at)]
    rows += [(url, sha if sha in target.shas else None, at) for url, sha in sorted(target.urls.items())]
    rows += [(sha, sha, at) for sha in sorted(target.shas)]
    raw_manifest.record_forgotten(root.raw_manifest, rows)


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
    """Each database's rows of the image, each owner's SQL; the raw manifest's last: they map the URL
    to the image."""
    if root.validate_store.is_file():
        with erasing(root.validate_store) as con:
            delete_crops(con, crop_hashes, target.shas, target.crop_ids)
    if root.faces_manifest.is_file():
        with erasing(root.faces_manifest) as con:
            faces_manifest.delete_sources(con, target.shas)
    if root.raw_manifest.is_file():
        with erasing(root.raw_manifest) as con:
            raw_manifest.delete_images(con, target.shas, target.urls)


@contextmanager
def erasing(db: Path) -> Iterator[sqlite3.Connection]:
    """One transaction whose deletions zero the freed space; then the write-ahead log is truncated."""
    with connect(db, secure_delete=True) as con:
        with con:
            yield con
        with suppress(sqlite3.OperationalError):  # another process is writing: its checkpoint does it
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
