"""Frozen dataset snapshots: datasets/<id>/ with images, provenance, report, contact sheets, card.

A snapshot is built in a hidden temporary folder beside its final place and renamed into place, so
`datasets/<id>/` appears whole or not at all. Its id is a hash of the accepted crops' pixels, so the
same accepted set always gives the same id and is never built twice. `report.md`, `README.md` and the
contact sheets are rendered from `report.json` and `index.csv`, so a takedown can redact a snapshot
by editing those two and rendering again.
"""

import csv
import hashlib
import io
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from common.files import (
    atomic_symlink,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    pid_alive,
)
from common.layout import DataRoot
from validate.checks import REASONS
from validate.inputs import Provenance

INDEX_COLUMNS = ["row", "crop_id", "sha256", "source_url", "page_url", "licence", "fetched_at"]
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
SHEET_GAP = 2  # white pixels between tiles


@dataclass
class Accepted:
    crop_id: str
    sha256: str
    path: Path
    pixels_sha256: str
    provenance: Provenance


def snapshot_id(pixel_hashes: list[str], image_size: int) -> str:
    """A hash of the accepted crops' content as a set: same crops, same id. Sorted, since the dataset's
    order (when each source was first stored, to the second) differs between two crawls of one site."""
    h = hashlib.sha256(f"faces-dataset v2 {image_size}\n".encode())
    for p in sorted(pixel_hashes):
        h.update(p.encode() + b"\n")
    return h.hexdigest()[:16]


def list_snapshots(root: DataRoot) -> list[Path]:
    """Finished snapshot folders, most recently made or reused first."""
    if not root.datasets_dir.is_dir():
        return []
    dirs = [
        p
        for p in root.datasets_dir.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and (p / "report.json").is_file()
    ]
    return sorted(dirs, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def latest_id(root: DataRoot) -> str | None:
    link = root.latest_dataset
    if link.is_symlink() and link.resolve().is_dir():
        return link.resolve().name
    return None


# --- building ---------------------------------------------------------------------------------------


def build(
    root: DataRoot,
    dataset_id: str,
    accepted: list[Accepted],
    report: dict,
    rejected: dict[str, list[tuple[str, Path]]],
    sheet_size: int,
) -> Path:
    """Write datasets/<dataset_id>/ whole: images, index, sheets, report, card. Returns its path."""
    final = root.dataset_dir(dataset_id)
    tmp = root.datasets_dir / f"{TMP_PREFIX}{dataset_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_images(tmp / "images.npy", accepted, report["image_size"])
        index = index_rows(accepted)
        write_index(tmp / "index.csv", index)
        sheets = {"accepted.png": write_accepted_sheet(tmp, accepted, sheet_size)}
        for reason, crops in rejected.items():
            shown = [(cid, p) for cid, p in crops if p.is_file()][:sheet_size]
            if shown:
                write_png(
                    tmp / f"rejected-{reason}.png", contact_sheet([cv2.imread(str(p)) for _, p in shown])
                )
                sheets[f"rejected-{reason}.png"] = [cid for cid, _ in shown]
        report = {**report, "sheets": sheets}
        atomic_write_json(tmp / "report.json", report)
        render(tmp, report, index)
        fsync_dir(tmp)
        os.rename(tmp, final)  # atomic: the snapshot appears whole
    except OSError:
        if final.is_dir():  # another run built the same snapshot first: same id, same content
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(root.datasets_dir)
    return final


def write_images(path: Path, accepted: list[Accepted], size: int) -> None:
    """(N, S, S, 3) uint8 RGB in .npy format, appended one crop at a time: memory stays flat for any N."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(accepted), size, size, 3)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for a in accepted:
            bgr = cv2.imread(str(a.path), cv2.IMREAD_UNCHANGED)
            if bgr is None or hashlib.sha256(bgr.tobytes()).hexdigest() != a.pixels_sha256:
                raise RuntimeError(f"{a.path} changed while validating; run validate again")
            f.write(np.ascontiguousarray(bgr[:, :, ::-1]).tobytes())
        f.flush()
        os.fsync(f.fileno())


def index_rows(accepted: list[Accepted]) -> list[dict]:
    return [
        {
            "row": i,
            "crop_id": a.crop_id,
            "sha256": a.sha256,
            "source_url": a.provenance.url,
            "page_url": a.provenance.page_url,
            "licence": a.provenance.licence,
            "fetched_at": a.provenance.fetched_at,
        }
        for i, a in enumerate(accepted)
    ]


def write_index(path: Path, rows: list[dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def read_index(snapshot: Path) -> list[dict]:
    with open(snapshot / "index.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def sample_rows(n: int, k: int) -> list[int]:
    """Up to k rows spread evenly over n: the accepted sheet shows the whole set, not its start."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, k)).round()}) if n else []


def write_accepted_sheet(folder: Path, accepted: list[Accepted], sheet_size: int) -> list[str]:
    rows = sample_rows(len(accepted), sheet_size)
    images = np.load(folder / "images.npy", mmap_mode="r")
    write_png(
        folder / "accepted.png", contact_sheet([np.ascontiguousarray(images[i, :, :, ::-1]) for i in rows])
    )
    return [accepted[i].crop_id for i in rows]


def contact_sheet(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles (same size, BGR) on a white, nearly square grid."""
    if not tiles:
        return np.full((8, 8, 3), 255, np.uint8)
    s = tiles[0].shape[0]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    step = s + SHEET_GAP
    sheet = np.full((rows * step + SHEET_GAP, cols * step + SHEET_GAP, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        y, x = SHEET_GAP + (i // cols) * step, SHEET_GAP + (i % cols) * step
        sheet[y : y + s, x : x + s] = tile[:s, :s]
    return sheet


def write_png(path: Path, bgr: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, data.tobytes())


# --- rendering --------------------------------------------------------------------------------------


def render(folder: Path, report: dict, index: list[dict]) -> None:
    atomic_write_text(folder / "report.md", report_markdown(report))
    atomic_write_text(folder / "README.md", dataset_card(report, index))


def reason_counts(report: dict) -> Counter:
    return Counter(r for q in report["quarantined"] for r in q["reasons"])


def thresholds(config: dict) -> list[tuple[str, str]]:
    """(check, what fails it) for every check, in REASONS order, with the configured values; a ready-made
    set's config lists the few checks it had (`checks`)."""
    c, item = config, "image" if "checks" in config else "crop"
    pixels = (
        f" and 16x16 thumbnails within {c['near_duplicate_pixels']} grey levels"
        if "near_duplicate_pixels" in c
        else ""
    )
    rows = [
        ("opted_out", "the source opted out (noai and similar directives) or was taken down"),
        (
            "no_face",
            f"YuNet re-check score < {c['min_face_score']}"
            if c["recheck_faces"]
            else "off (recheck_faces = false)",
        ),
        ("blurry", f"variance of the Laplacian < {c['min_sharpness']}"),
        ("dark", f"mean grey level < {c['min_brightness']}"),
        ("bright", f"mean grey level > {c['max_brightness']}"),
        ("flat", f"grey-level standard deviation < {c['min_contrast']}"),
        ("grayscale", f"mean RGB chroma < {c['min_chroma']}" if c["colour"] else "off (colour = false)"),
        ("duplicate", f"same pixels as an earlier {item}"),
        (
            "near_duplicate",
            f"perceptual hash within {c['near_duplicate_distance']} bits{pixels} of an earlier {item}",
        ),
    ]
    return [row for row in rows if row[0] in c.get("checks", REASONS)]


def subject(report: dict) -> tuple[str, str, int]:
    """What the images show, what one is called, and its channels: face crops, or a ready-made set's."""
    if report.get("kind") == "ready-made":
        return f"images of {report['holds']} (`{report['name']}`)", "image", report["channels"]
    return "aligned face crops", "crop", 3


def report_markdown(report: dict) -> str:
    counts = reason_counts(report)
    c = report["counts"]
    lines = [
        f"# Validation report: dataset `{report['dataset_id']}`",
        "",
        f"Made {report['created_at']}. {c['crops']} {subject(report)[1]}s checked: "
        f"**{c['accepted']} accepted**, {c['quarantined']} quarantined, {c['released']} released by hand.",
        "",
        "| check | fails when | quarantined |",
        "|---|---|---:|",
    ]
    lines += [f"| {name} | {rule} | {counts.get(name, 0)} |" for name, rule in thresholds(report["config"])]
    lines += ["", "Contact sheets: " + ", ".join(f"[{s}]({s})" for s in report.get("sheets", {})), ""]
    by_reason: dict[str, list[dict]] = {}
    for q in report["quarantined"]:
        for reason in q["reasons"]:
            by_reason.setdefault(reason, []).append(q)
    for reason in REASONS:
        items = by_reason.get(reason, [])
        if not items:
            continue
        lines += [f"## {reason} ({len(items)})", ""]
        lines += [f"- `{q['crop_id']}`: {q['detail']}" for q in items[:20]]
        if len(items) > 20:
            lines.append(f"- … and {len(items) - 20} more (`faces validate --quarantine {reason}`)")
        lines.append("")
    lines.append(
        "Quarantined images are left out of `images.npy`; their source files are untouched."
        if report.get("kind") == "ready-made"
        else "Quarantined crops stay in `faces/`. Release one with `faces validate --release <crop_id>` "
        "and run `faces validate` again."
    )
    for r in report.get("redactions", []):
        lines.append(f"\nRedacted {r['at']}: {r['crops']} crop(s) removed by a takedown.")
    return "\n".join(lines).rstrip() + "\n"


def dataset_card(report: dict, index: list[dict]) -> str:
    c = report["counts"]
    hosts = Counter(
        urlsplit(r["source_url"]).hostname or urlsplit(r["page_url"]).hostname or "(local)" for r in index
    )
    licences = Counter(r["licence"] or "(unknown)" for r in index)
    dates = sorted(r["fetched_at"] for r in index if r["fetched_at"])
    size, (holds, item, channels) = report["image_size"], subject(report)
    colour = "RGB" if channels == 3 else "grey"
    labelled = (
        " Labels: " + ", ".join(f"{k} ({n})" for k, n in report["labels"].items()) + "."
        if report.get("labels")
        else ""
    )
    lines = [
        f"# Dataset card: `{report['dataset_id']}`",
        "",
        f"{c['accepted']} {holds}, {size}x{size} {colour}, made {report['created_at']} from "
        f"{c['crops']} candidate {item}s ({c['quarantined']} quarantined).{labelled}",
        "",
        "## Files",
        "",
        f"- `images.npy`: uint8 array ({c['accepted']}, {size}, {size}, {channels}), {colour}; "
        "`np.load(path, mmap_mode='r')`; train on `x / 127.5 - 1`.",
        "- `index.csv`: one row per image: crop id, source sha256, source URL, page, licence, fetch time"
        + (", label." if report.get("labels") else "."),
        "- `report.json`, `report.md`: every check, threshold and quarantined crop with its reason.",
        "- `accepted.png`: a sample of the images; `rejected-<reason>.png`: quarantined crops by reason.",
        "",
        "## Sources by host",
        "",
        "| host | images |",
        "|---|---:|",
    ]
    lines += [f"| {h} | {n} |" for h, n in hosts.most_common()]
    lines += ["", "## Licences", "", "| licence | images |", "|---|---:|"]
    lines += [f"| {lic} | {n} |" for lic, n in licences.most_common()]
    span = f"{dates[0]} to {dates[-1]}" if dates else "unknown (no crawl records)"
    lines += ["", "## Collected", "", f"Fetched {span}.", "", "## Checks and thresholds", ""]
    lines += ["| check | fails when | quarantined |", "|---|---|---:|"]
    counts = reason_counts(report)
    lines += [f"| {name} | {rule} | {counts.get(name, 0)} |" for name, rule in thresholds(report["config"])]
    lines += [
        "",
        f"Hard checks (stop the pipeline): at least {report['config']['min_images']} accepted {item}s; "
        f"every {item} decodes and is {size}x{size}, {colour}, uint8.",
        "",
        "## Takedown",
        "",
        "`faces forget <image URL | page URL | sha256>` removes an image, its crops and every snapshot "
        "that holds it, and builds a new snapshot without it.",
    ]
    return "\n".join(lines) + "\n"


def load_report(snapshot: Path) -> dict:
    return json.loads((snapshot / "report.json").read_text())


# --- keeping --------------------------------------------------------------------------------------


def point_latest(root: DataRoot, dataset_id: str) -> None:
    """datasets/latest -> <dataset_id>; its folder's mtime is bumped, since retention keeps the newest."""
    os.utime(root.dataset_dir(dataset_id))
    atomic_symlink(dataset_id, root.latest_dataset)


def remove_snapshot(path: Path) -> None:
    """Gone at once (a rename), then deleted: no half-removed snapshot is ever listed."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def prune(root: DataRoot, retention: int) -> list[str]:
    """Delete snapshots beyond the `retention` newest; the one `latest` points to always stays."""
    keep = latest_id(root)
    removed = []
    for i, path in enumerate(list_snapshots(root)):
        if i >= retention and path.name != keep:
            remove_snapshot(path)
            removed.append(path.name)
    return removed


def clean_leftovers(root: DataRoot) -> None:
    """Remove temporary and trash folders of runs that were killed (their process is gone)."""
    if not root.datasets_dir.is_dir():
        return
    for p in root.datasets_dir.iterdir():
        if (
            p.name.startswith((TMP_PREFIX, TRASH_PREFIX))
            and p.is_dir()
            and not pid_alive(p.name.rsplit("-", 1)[-1])
        ):
            shutil.rmtree(p, ignore_errors=True)
