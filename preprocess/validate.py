"""The validate stage: check every crop, quarantine the doubtful ones, freeze the rest as a snapshot.

Hard checks (a crop that does not decode or is not SxS RGB uint8; fewer than `min_images` accepted)
raise BadInputError listing the offenders, so the pipeline stops before training. Soft checks
quarantine a crop with its reasons; it stays in faces/ and a user can release it. Accepted crops, in
order of first collection, become datasets/<id>/ (see preprocess.snapshot) and datasets/latest.
"""

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2

from common.layout import DataRoot
from common.report import BadInputError, StageReport
from preprocess import snapshot
from preprocess.checks import (
    MEASURE_VERSION,
    REASONS,
    FaceRechecker,
    Measures,
    NearDuplicateIndex,
    measure,
    quality_reasons,
)
from preprocess.config import ValidateConfig
from preprocess.validate_store import (
    Crop,
    Sources,
    as_root,
    get_state,
    load_measures,
    load_releases,
    now_iso,
    open_store,
    read_crops,
    read_sources,
    save_measures,
    set_state,
    store_path,
)

Progress = Callable[[int, int, str], None]
MEASURE_BATCH = 128  # crops per worker task and per cache transaction
PARALLEL_FROM = 512  # fewer crops to measure than this: not worth starting processes
MAX_LISTED = 20  # offenders named in an error message


def validate(
    config: ValidateConfig,
    root: DataRoot | str | Path,
    *,
    force: bool = False,
    on_progress: Progress | None = None,
) -> StageReport:
    start = time.monotonic()
    root = as_root(root)
    progress = on_progress or (lambda done, total, message: None)
    snapshot.clean_leftovers(root)
    crops = read_crops(root)
    sources = read_sources(root)
    with open_store(root) as store:
        releases = load_releases(store)
        fingerprint = fingerprint_of(config, crops, sources, releases)
        last_id = get_state(store, "dataset_id")
        unchanged = last_id and get_state(store, "fingerprint") == fingerprint
        if unchanged and not force and root.dataset_dir(last_id).is_dir():
            snapshot.point_latest(root, last_id)
            return unchanged_report(root, last_id, start)

        measures = measure_all(config, crops, store, progress)
        fail_on_unusable(config, crops, measures)
        verdicts = judge(config, crops, measures, sources, releases)
        write_quarantine(store, verdicts)
        accepted = [v for v in verdicts if not v.reasons]
        fail_on_too_few(config, verdicts, accepted)

        dataset_id = snapshot.snapshot_id([v.measures.pixels_sha256 for v in accepted], config.image_size)
        made = not root.dataset_dir(dataset_id).is_dir()  # the same accepted crops: nothing to write
        if made:
            progress(len(crops), len(crops), f"writing dataset {dataset_id}")
            write_snapshot(config, root, dataset_id, fingerprint, verdicts, sources)
        snapshot.point_latest(root, dataset_id)
        pruned = snapshot.prune(root, config.retention)
        set_state(store, fingerprint=fingerprint, dataset_id=dataset_id)

    return stage_report(config, root, dataset_id, verdicts, made, pruned, start)


def input_fingerprint(config: ValidateConfig, root: DataRoot | str | Path) -> str:
    """A hash of what validation reads: crop ids and file hashes, opt-outs, releases, the settings."""
    root = as_root(root)
    crops, sources = read_crops(root), read_sources(root)
    releases = {}
    if store_path(root).is_file():
        with open_store(root) as store:
            releases = load_releases(store)
    return fingerprint_of(config, crops, sources, releases)


def fingerprint_of(config: ValidateConfig, crops: list[Crop], sources: Sources, releases: dict) -> str:
    h = hashlib.sha256(f"validate measures v{MEASURE_VERSION} {config.output_hash()}\n".encode())
    for c in crops:  # in validation order, which decides the duplicate kept
        blocked = "forgotten" if c.sha256 in sources.forgotten else sources.opted_out.get(c.sha256, "")
        h.update(f"{c.crop_id} {c.file_sha256} {blocked}\n".encode())
    for crop_id, crop_sha in sorted(releases.items()):
        h.update(f"release {crop_id} {crop_sha}\n".encode())
    return h.hexdigest()


# --- measuring --------------------------------------------------------------------------------------


def measure_all(config: ValidateConfig, crops: list[Crop], store, progress: Progress) -> dict[str, Measures]:
    """Measurements for every crop file, by file hash: cached ones reused, the rest measured and cached."""
    cached = load_measures(store)
    todo = {}
    for c in crops:
        m = cached.get(c.file_sha256) if c.file_sha256 else None
        if c.file_sha256 and (m is None or (config.recheck_faces and m.face_score is None and not m.problem)):
            todo[c.file_sha256] = str(c.path)
    items = list(todo.items())
    batches = [items[i : i + MEASURE_BATCH] for i in range(0, len(items), MEASURE_BATCH)]
    done = 0
    progress(0, len(items), f"measuring {len(items)} crops ({len(crops) - len(items)} cached)")
    for results in run_batches(batches, config):
        save_measures(store, results)  # a killed run keeps what it measured
        cached.update(results)
        done += len(results)
        progress(done, len(items), f"measured {done} of {len(items)} crops")
    return cached


def run_batches(batches: list[list[tuple[str, str]]], config: ValidateConfig):
    args = (config.image_size, config.recheck_faces)
    workers = config.workers or os.cpu_count() or 1
    if workers == 1 or sum(map(len, batches)) < PARALLEL_FROM:
        for batch in batches:
            yield measure_batch(batch, *args)
        return
    # spawn, not fork: the caller (a Prefect worker) has threads, and forking those is unsafe
    context = get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(batches)), mp_context=context, initializer=one_thread) as pool:
        yield from pool.map(measure_batch, batches, *[[a] * len(batches) for a in args])


def one_thread() -> None:
    cv2.setNumThreads(1)  # one worker process per core already


_rechecker: FaceRechecker | None = None


def measure_batch(batch: list[tuple[str, str]], size: int, recheck: bool) -> list[tuple[str, Measures]]:
    """Measure crop files; keyed by the hash of the bytes actually read (a file may change meanwhile)."""
    global _rechecker
    if recheck and _rechecker is None:
        _rechecker = FaceRechecker()
    out = []
    for _, path in batch:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        out.append((hashlib.sha256(data).hexdigest(), measure(data, size, _rechecker if recheck else None)))
    return out


def fail_on_unusable(config: ValidateConfig, crops: list[Crop], measures: dict[str, Measures]) -> None:
    """Hard check: every crop is on disk, decodes and is SxS RGB uint8."""
    bad = []
    for c in crops:
        if c.file_sha256 is None:
            bad.append(f"{c.crop_id}: is missing ({c.path})")
        elif c.file_sha256 not in measures:
            raise RuntimeError(f"{c.path} changed while validating; run validate again")
        elif problem := measures[c.file_sha256].problem:
            bad.append(f"{c.crop_id}: {problem} ({c.path})")
    if bad:
        s = config.image_size
        raise BadInputError(
            f"{len(bad)} crop(s) cannot be used: {listing(bad)}. Every crop must be a {s}x{s} RGB uint8 PNG: "
            f"check that [validate] image_size = {s} matches [preprocess] crop_size, then rewrite the crops "
            "with `faces preprocess --force`, or remove their sources with `faces forget <sha256>`."
        )


def listing(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


# --- judging ----------------------------------------------------------------------------------------


@dataclass
class Verdict:
    crop: Crop
    measures: Measures
    reasons: list[tuple[str, str]]  # (reason, detail); empty: accepted
    released: bool = False  # accepted only because a user released it


def judge(
    config: ValidateConfig,
    crops: list[Crop],
    measures: dict[str, Measures],
    sources: Sources,
    releases: dict[str, str],
) -> list[Verdict]:
    """Soft checks, crop by crop in order of first collection, so the earliest of duplicates is kept.

    Duplicates are looked for only among crops that pass every other check: a sharp copy of a blurry
    crop is kept rather than thrown out for resembling a crop that was itself rejected.
    """
    near = NearDuplicateIndex(config.near_duplicate_distance)
    kept_pixels: dict[str, str] = {}  # pixels hash -> crop id kept
    kept_ids: list[str] = []  # near-duplicate index item -> crop id
    verdicts = []
    for c in crops:
        m = measures[c.file_sha256]
        reasons = blocked_reasons(c, sources)
        released = not reasons and releases.get(c.crop_id) == c.file_sha256
        if not reasons and not released:
            reasons = quality_reasons(m, config) or duplicate_reasons(m, kept_pixels, near, kept_ids)
        if not reasons:
            kept_pixels.setdefault(m.pixels_sha256, c.crop_id)
            near.add(m.phash)
            kept_ids.append(c.crop_id)
        verdicts.append(Verdict(c, m, reasons, released))
    return verdicts


def blocked_reasons(c: Crop, sources: Sources) -> list[tuple[str, str]]:
    if c.sha256 in sources.forgotten:
        return [("opted_out", "its source was taken down (faces forget)")]
    if c.sha256 in sources.opted_out:
        return [("opted_out", f"its source opted out ({sources.opted_out[c.sha256]})")]
    return []


def duplicate_reasons(
    m: Measures, kept_pixels: dict[str, str], near: NearDuplicateIndex, kept_ids: list[str]
) -> list[tuple[str, str]]:
    if first := kept_pixels.get(m.pixels_sha256):
        return [("duplicate", f"same pixels as {first}")]
    if hit := near.nearest(m.phash):
        item, distance = hit
        return [("near_duplicate", f"perceptual hash {distance} bits from {kept_ids[item]}")]
    return []


def write_quarantine(store, verdicts: list[Verdict]) -> None:
    at = now_iso()
    rows = [
        (
            v.crop.crop_id,
            v.crop.sha256,
            v.crop.file_sha256,
            str(v.crop.path),
            ",".join(r for r, _ in v.reasons),
            "; ".join(f"{r}: {d}" for r, d in v.reasons),
            at,
        )
        for v in verdicts
        if v.reasons
    ]
    with store:  # one transaction: the quarantine is always one run's whole verdict
        store.execute("DELETE FROM quarantine")
        store.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def fail_on_too_few(config: ValidateConfig, verdicts: list[Verdict], accepted: list[Verdict]) -> None:
    if len(accepted) >= config.min_images:
        return
    counts = Counter(r for v in verdicts for r, _ in v.reasons)
    why = ", ".join(f"{r} {counts[r]}" for r in REASONS if counts[r]) or "none"
    raise BadInputError(
        f"only {len(accepted)} of {len(verdicts)} crops passed validation, fewer than [validate] "
        f"min_images = {config.min_images} (quarantined: {why}). Collect more photos (`faces scrape`), "
        "release crops you trust (`faces validate --quarantine` lists them, `faces validate --release "
        "<crop_id>`), loosen the [validate] thresholds, or lower min_images."
    )


# --- snapshot and report ----------------------------------------------------------------------------


def write_snapshot(
    config: ValidateConfig,
    root: DataRoot,
    dataset_id: str,
    fingerprint: str,
    verdicts: list[Verdict],
    sources: Sources,
) -> Path:
    accepted = [
        snapshot.Accepted(
            v.crop.crop_id,
            v.crop.sha256,
            v.crop.path,
            v.measures.pixels_sha256,
            sources.provenance.get(v.crop.sha256, snapshot.Provenance()),
        )
        for v in verdicts
        if not v.reasons
    ]
    report = snapshot_report(config, dataset_id, fingerprint, verdicts)
    return snapshot.build(root, dataset_id, accepted, report, rejected_by_reason(verdicts), config.sheet_size)


def rejected_by_reason(verdicts: list[Verdict]) -> dict[str, list[tuple[str, Path]]]:
    out: dict[str, list[tuple[str, Path]]] = {}
    for v in verdicts:
        for reason, _ in v.reasons:
            out.setdefault(reason, []).append((v.crop.crop_id, v.crop.path))
    return {r: out[r] for r in REASONS if r in out}


def counts_of(verdicts: list[Verdict]) -> dict[str, int]:
    by_reason = Counter(r for v in verdicts for r, _ in v.reasons)
    quarantined = sum(1 for v in verdicts if v.reasons)
    return {
        "crops": len(verdicts),
        "accepted": len(verdicts) - quarantined,
        "quarantined": quarantined,
        "released": sum(1 for v in verdicts if v.released),
        **{r: by_reason.get(r, 0) for r in REASONS},
    }


def snapshot_report(
    config: ValidateConfig, dataset_id: str, fingerprint: str, verdicts: list[Verdict]
) -> dict:
    return {
        "dataset_id": dataset_id,
        "created_at": now_iso(),
        "image_size": config.image_size,
        "input_fingerprint": fingerprint,
        "config": config.model_dump(mode="json"),
        "counts": counts_of(verdicts),
        "quarantined": [
            {
                "crop_id": v.crop.crop_id,
                "sha256": v.crop.sha256,
                "reasons": [r for r, _ in v.reasons],
                "detail": "; ".join(f"{r}: {d}" for r, d in v.reasons),
            }
            for v in verdicts
            if v.reasons
        ],
    }


def outputs_of(folder: Path) -> dict[str, str]:
    return {
        "dataset": str(folder),
        "images": str(folder / "images.npy"),
        "report": str(folder / "report.md"),
        "contact sheet": str(folder / "accepted.png"),
        "card": str(folder / "README.md"),
    }


def checks_table(config: dict, counts: dict[str, int]) -> list[dict]:
    return [
        {"check": name, "fails when": rule, "quarantined": counts.get(name, 0)}
        for name, rule in snapshot.thresholds(config)
    ]


def stage_report(
    config: ValidateConfig,
    root: DataRoot,
    dataset_id: str,
    verdicts: list[Verdict],
    made: bool,
    pruned: list[str],
    start: float,
) -> StageReport:
    folder = root.dataset_dir(dataset_id)
    counts = counts_of(verdicts)
    notes = [
        f"new snapshot {dataset_id}"
        if made
        else f"no new snapshot: the accepted crops are unchanged, dataset {dataset_id} is still current"
    ]
    notes += [f"removed old snapshot {p} (retention)" for p in pruned]
    if counts["quarantined"]:
        notes.append("list quarantined crops with `faces validate --quarantine [reason]`")
    return StageReport(
        stage="validate",
        counts=counts,
        outputs=outputs_of(folder),
        notes=notes,
        tables={"checks": checks_table(config.model_dump(mode="json"), counts)},
        seconds=time.monotonic() - start,
    )


def unchanged_report(root: DataRoot, dataset_id: str, start: float) -> StageReport:
    folder = root.dataset_dir(dataset_id)
    report = snapshot.load_report(folder)
    return StageReport(
        stage="validate",
        counts=report["counts"],
        outputs=outputs_of(folder),
        notes=[f"inputs unchanged: dataset {dataset_id} is still current; no new snapshot"],
        tables={"checks": checks_table(report["config"], report["counts"])},
        seconds=time.monotonic() - start,
        skipped=True,
    )


# --- quarantine for the CLI ---------------------------------------------------------------------------


def list_quarantine(root: DataRoot | str | Path, reason: str | None = None) -> list[dict]:
    """Quarantined crops of the last validation run: crop_id, reasons, detail, path; by `reason` if given."""
    root = as_root(root)
    if reason is not None and reason not in REASONS:
        raise BadInputError(f"unknown quarantine reason {reason!r}; use one of: {', '.join(REASONS)}")
    if not store_path(root).is_file():
        return []
    with open_store(root) as store:
        rows = store.execute(
            "SELECT crop_id, reasons, detail, path FROM quarantine ORDER BY rowid"
        ).fetchall()
    out = [{"crop_id": c, "reasons": r, "detail": d, "path": p} for c, r, d, p in rows]
    return [q for q in out if reason is None or reason in q["reasons"].split(",")]


def release(crop_id: str, root: DataRoot | str | Path) -> dict:
    """Let a quarantined crop into the next snapshot (until its file changes). Opt-outs cannot be released."""
    root = as_root(root)
    entry = next((q for q in list_quarantine(root) if q["crop_id"] == crop_id), None)
    if entry is None:
        raise BadInputError(
            f"crop {crop_id!r} is not in quarantine; `faces validate --quarantine` lists the crops that are "
            "(run `faces validate` first if it has not run since the crop was made)"
        )
    if "opted_out" in entry["reasons"].split(","):
        raise BadInputError(
            f"crop {crop_id!r} cannot be released: its source opted out or was taken down ({entry['detail']})"
        )
    with open_store(root) as store, store:
        crop_sha = store.execute(
            "SELECT crop_sha256 FROM quarantine WHERE crop_id = ?", (crop_id,)
        ).fetchone()[0]
        store.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?)", (crop_id, crop_sha, now_iso()))
    return entry
