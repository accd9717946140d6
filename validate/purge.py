"""What a takedown (validate.takedown) deletes or redacts among the stages' outputs.

- Snapshots: one whose images hold a crop of the image is deleted whole (a snapshot is named by its
  content: without the crop it would be another dataset); one that only showed it on a rejected contact
  sheet is redacted (the tile painted white, the crop dropped from report.json, report.md and the card).
- Exports: one whose memorisation.png showed a crop of the image loses that picture and is marked for
  re-export (export.redaction). Which crops it shows is read from the snapshot it drew them from; when
  that snapshot is gone it cannot be told, and the export is treated as showing it.
- Half-built snapshot and export folders are deleted: they may hold it.

Each function returns the paths it deleted and rewrote, for the takedown's report.
"""

import math
import os
import shutil
from pathlib import Path

import cv2

from common.clock import now_iso
from common.files import FOLDER_TMP, atomic_write_json
from common.layout import DataRoot
from export import redaction
from validate import snapshot
from validate.checks import REASONS

Paths = list[Path]


def purge_exports(root: DataRoot, shas: set[str]) -> tuple[Paths, Paths]:
    """(deleted, rewritten): memorisation.png of every export that showed one of `shas` (or may have),
    half-built export folders, and the marked export.json and MODEL_CARD.md files."""
    if not root.exports_dir.is_dir():
        return [], []
    deleted: Paths = []
    rewritten: Paths = []
    for folder in sorted(p for p in root.exports_dir.iterdir() if p.is_dir()):
        if folder.name.startswith(FOLDER_TMP):  # an export killed half-way, or being written now
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
        elif redaction.shows_training_crops(folder) and may_show(root, folder, shas):
            gone, marked = redaction.remove_training_crops(folder)
            deleted += gone
            rewritten += marked
    return deleted, rewritten


def may_show(root: DataRoot, export_dir: Path, shas: set[str]) -> bool:
    """Whether the export's memorisation.png shows a crop of `shas`, or cannot be told not to."""
    shown = redaction.shown_rows(export_dir)
    if shown is None or not (root.dataset_dir(shown[0]) / "index.csv").is_file():
        return True
    index = snapshot.read_index(root.dataset_dir(shown[0]))
    return any(row >= len(index) or index[row]["sha256"] in shas for row in shown[1])


def purge_snapshots(
    root: DataRoot, shas: set[str], crop_ids: set[str], holding: Paths
) -> tuple[Paths, dict[Path, Paths]]:
    """(folders deleted, redacted folder -> files rewritten): the snapshots `holding` the image (from
    snapshots_holding) are deleted, those that only show it as rejected redacted; half-built or
    half-deleted ones deleted."""
    if not root.datasets_dir.is_dir():
        return [], {}
    deleted: Paths = []
    for p in sorted(root.datasets_dir.iterdir()):
        if p.is_dir() and p.name.startswith((snapshot.TMP_PREFIX, snapshot.TRASH_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)
            deleted.append(p)
    redacted: dict[Path, Paths] = {}
    for folder in snapshot.list_snapshots(root):
        if folder in holding:
            snapshot.remove_snapshot(folder)
            deleted.append(folder)
        elif rewritten := redact(folder, shas, crop_ids):
            redacted[folder] = rewritten
    return deleted, redacted


def snapshots_holding(root: DataRoot, shas: set[str]) -> Paths:
    """The snapshots whose images hold a crop of one of `shas` (their index.csv says so)."""
    folders = snapshot.list_snapshots(root)
    return [f for f in folders if any(row["sha256"] in shas for row in snapshot.read_index(f))]


def redact(folder: Path, shas: set[str], crop_ids: set[str]) -> Paths:
    """Take the crops out of a snapshot that showed them as rejected; returns the files rewritten."""
    report = snapshot.load_report(folder)
    gone = [q for q in report["quarantined"] if q["sha256"] in shas or q["crop_id"] in crop_ids]
    if not gone:  # (duplicates name only accepted crops, and a snapshot holding those is deleted)
        return []
    stat = folder.stat()
    gone_ids = {q["crop_id"] for q in gone}
    rewritten = []
    for name, ids in report.get("sheets", {}).items():
        if name.startswith("rejected-") and gone_ids.intersection(ids):
            blank_tiles(folder / name, ids, gone_ids, report["image_size"])
            report["sheets"][name] = ["" if i in gone_ids else i for i in ids]
            rewritten.append(folder / name)
    report["quarantined"] = [q for q in report["quarantined"] if q["crop_id"] not in gone_ids]
    counts = report["counts"]
    counts["crops"] -= len(gone)
    counts["quarantined"] -= len(gone)
    counts.update({r: sum(r in q["reasons"] for q in report["quarantined"]) for r in REASONS})
    report.setdefault("redactions", []).append({"at": now_iso(), "crops": len(gone)})
    atomic_write_json(folder / "report.json", report)
    snapshot.render(folder, report, snapshot.read_index(folder))
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # redaction does not make it newer
    return rewritten + [folder / "report.json", folder / "report.md", folder / "README.md"]


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
