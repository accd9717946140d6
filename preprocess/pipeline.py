"""The preprocess stage: every raw photo not yet processed with this configuration -> aligned face crops.

Work comes in batches so it can be spread over processes here, or over Prefect tasks or a Dask cluster
by the flows:

    for batch in iter_batches(config, root):          # parent: reads the manifests
        result = process_batch(config, root, batch)   # anywhere: decodes, detects, writes crop PNGs
        record_batch(config, root, result)            # parent: one manifest transaction

Crop PNGs are written atomically by the workers before their records are committed by the parent, so a
killed run leaves no half-written crop, and a source whose records are missing is simply done again.
"""

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context

import cv2
import numpy as np

from common.files import atomic_write_bytes
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from preprocess.align import blur_score, crop_square, face_square
from preprocess.config import PreprocessConfig
from preprocess.decode import ImageDecodeError, load_image
from preprocess.detect import Face, FaceDetector
from preprocess.landmarks import refine_landmarks

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


@dataclass(frozen=True)
class Source:
    sha256: str
    path: str  # relative to the data root, as in raw/manifest.sqlite


@dataclass
class Crop:
    """One row of faces/manifest.sqlite's crops table."""

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


@dataclass
class BatchResult:
    config_hash: str
    outcomes: list[Outcome]

    @property
    def counts(self) -> dict[str, int]:
        statuses = [o.status for o in self.outcomes]
        return {
            "processed": sum(s != "missing" for s in statuses),
            "faces": sum(len(o.crops) for o in self.outcomes),
            "no_face": statuses.count("no_face"),
            "errors": statuses.count("error") + statuses.count("missing"),
        }


# --- manifests (parent process only) ---------------------------------------------------------------


def open_manifest(root: DataRoot) -> sqlite3.Connection:
    """faces/manifest.sqlite with its tables, the raw manifest attached read-only as `raw`."""
    if not root.raw_manifest.is_file():
        raise BadInputError(
            f"no raw manifest at {root.raw_manifest}: run the scrape stage first, or point data_dir at a "
            "data root that has one"
        )
    root.faces_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root.faces_manifest.as_uri(), uri=True, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.execute("ATTACH DATABASE ? AS raw", (f"{root.raw_manifest.as_uri()}?mode=ro",))
    return db


def _pending_sql(db: sqlite3.Connection, force: bool, what: str) -> str:
    where = ["f.sha256 > :after"]
    if not force:
        where.append(
            "NOT EXISTS (SELECT 1 FROM processed p WHERE p.sha256 = f.sha256 AND p.config_hash = :hash)"
        )
    has_forgotten = db.execute(
        "SELECT 1 FROM raw.sqlite_master WHERE type='table' AND name='forgotten'"
    ).fetchone()
    if has_forgotten:  # taken down: never processed again
        where.append("f.sha256 NOT IN (SELECT sha256 FROM raw.forgotten WHERE sha256 IS NOT NULL)")
    return f"SELECT {what} FROM raw.files f WHERE {' AND '.join(where)}"


def pending_sources(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> list[Source]:
    """Raw files not yet processed with this configuration (all of them with force), by sha256."""
    return [s for batch in _pending_pages(config, root, force, claim=False) for s in batch]


def iter_batches(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> Iterator[list[Source]]:
    """The pending sources in batches of `batch_size`, read page by page (constant memory).

    Each batch is claimed as it is yielded: its older records (other configurations) are dropped, so a
    batch cut short by a kill is redone by the next run, whatever configuration that run has.
    """
    return _pending_pages(config, root, force, claim=True)


def _pending_pages(
    config: PreprocessConfig, root: DataRoot, force: bool, claim: bool
) -> Iterator[list[Source]]:
    with closing(open_manifest(root)) as db:
        sql = _pending_sql(db, force, "f.sha256, f.path") + " ORDER BY f.sha256 LIMIT :limit"
        after = ""
        while True:
            params = {"after": after, "hash": config.output_hash(), "limit": config.batch_size}
            batch = [Source(sha, path) for sha, path in db.execute(sql, params).fetchall()]
            if not batch:
                return
            after = batch[-1].sha256
            if claim:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("DELETE FROM processed WHERE sha256 = ?", [(s.sha256,) for s in batch])
            yield batch


def count_sources(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> tuple[int, int]:
    """(raw files, of which pending)."""
    with closing(open_manifest(root)) as db:
        total = db.execute("SELECT COUNT(*) FROM raw.files").fetchone()[0]
        pending = db.execute(_pending_sql(db, force, "COUNT(*)"), {"after": "", "hash": config.output_hash()})
        return total, pending.fetchone()[0]


def record_batch(config: PreprocessConfig, root: DataRoot, result: BatchResult) -> None:
    """Commit a batch's outcomes in one transaction; each source's crops replace its old ones."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    done = [o for o in result.outcomes if o.status != "missing"]
    with closing(open_manifest(root)) as db, db:
        db.execute("BEGIN IMMEDIATE")
        for o in done:
            db.execute("DELETE FROM processed WHERE sha256 = ?", (o.sha256,))
            db.execute("DELETE FROM crops WHERE sha256 = ?", (o.sha256,))
            db.execute(
                "INSERT INTO processed VALUES (?, ?, ?, ?, ?, ?)",
                (o.sha256, result.config_hash, o.status, len(o.crops), o.error, now),
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
    for o in done:  # crop files of faces an earlier configuration found and this one did not
        for stale in root.faces_dir.glob(f"{o.sha256}-*.png"):
            if int(stale.stem.rsplit("-", 1)[1]) >= len(o.crops):
                stale.unlink(missing_ok=True)


# --- the work (any process) -------------------------------------------------------------------------

_detectors: dict[str, FaceDetector] = {}


def _detector(config: PreprocessConfig) -> FaceDetector:
    """One detector per process and configuration (loading YuNet takes a few milliseconds)."""
    key = config.output_hash()
    if key not in _detectors:
        _detectors[key] = FaceDetector(config)
    return _detectors[key]


def process_batch(config: PreprocessConfig, root: DataRoot, batch: list[Source]) -> BatchResult:
    """Decode, detect, align and write the crops of each source; return what the manifest should say.

    Writes no manifest, so it can run in a worker process, a Prefect task or on a Dask worker that
    sees the same data root.
    """
    detector = _detector(config)
    return BatchResult(config.output_hash(), [process_source(config, root, s, detector) for s in batch])


def process_source(
    config: PreprocessConfig, root: DataRoot, source: Source, detector: FaceDetector
) -> Outcome:
    path = root.root / source.path
    if not path.is_file():
        return Outcome(source.sha256, "missing", error=f"missing file {source.path}")
    try:
        bgr = load_image(path, max_pixels=config.max_pixels)
        faces = detector.detect(bgr)
        crops = [
            _write_crop(config, root, source.sha256, k, bgr, face, detector) for k, face in enumerate(faces)
        ]
    except ImageDecodeError as e:
        return Outcome(source.sha256, "error", error=e.reason)
    except cv2.error as e:  # an image OpenCV cannot work on (e.g. 1 px wide): recorded, not retried
        return Outcome(source.sha256, "error", error=f"opencv: {str(e).strip().splitlines()[-1]}")
    return Outcome(source.sha256, "ok" if crops else "no_face", crops)


def align_face(
    config: PreprocessConfig, bgr: np.ndarray, face: Face, detector: FaceDetector
) -> tuple[np.ndarray, Face]:
    """The face's aligned BGR crop, and the face with the landmarks the alignment used."""
    if face.landmarks is not None and config.refine_eyes:
        face = Face(face.box, refine_landmarks(bgr, face.landmarks, detector), face.score)
    return crop_square(bgr, face_square(face, config.haar_margin), config.crop_size), face


def _write_crop(
    config: PreprocessConfig,
    root: DataRoot,
    sha256: str,
    k: int,
    bgr: np.ndarray,
    face: Face,
    detector: FaceDetector,
) -> Crop:
    crop, face = align_face(config, bgr, face, detector)
    ok, png = cv2.imencode(".png", crop)  # BGR in memory, RGB in the file
    assert ok, "PNG encoding of a uint8 image cannot fail"
    target = atomic_write_bytes(root.crop_path(sha256, k), png.tobytes())
    return Crop(
        crop_id=target.stem,
        sha256=sha256,
        face_index=k,
        path=target.relative_to(root.root).as_posix(),
        box=[round(float(v), 2) for v in face.box],
        landmarks=None if face.landmarks is None else np.round(face.landmarks, 2).tolist(),
        score=round(face.score, 4),
        blur=round(blur_score(crop), 2),
        detector=config.detector,
        config_hash=config.output_hash(),
        size=config.crop_size,
    )


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already: OpenCV's own threads would only compete


# --- the stage -------------------------------------------------------------------------------------


def worker_count(config: PreprocessConfig) -> int:
    return config.workers or os.cpu_count() or 1


BatchRunner = Callable[[PreprocessConfig, DataRoot, Iterator[list[Source]]], Iterator[BatchResult]]


def preprocess(
    config: PreprocessConfig,
    root: DataRoot,
    *,
    force: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
    run_batches: BatchRunner | None = None,
) -> StageReport:
    """Crop every pending photo. `run_batches` spreads the batches elsewhere (the flows pass one that
    runs them as Prefect tasks on a Dask cluster); by default they go to local worker processes."""
    started = time.monotonic()
    _remove_orphan_temp_files(root)
    sources, pending = count_sources(config, root, force=force)
    counts = {
        "sources": sources,
        "processed": 0,
        "skipped": sources - pending,
        "faces": 0,
        "no_face": 0,
        "errors": 0,
    }
    batches = iter_batches(config, root, force=force)
    for result in (run_batches or run_batches_locally)(config, root, batches):
        record_batch(config, root, result)
        for key, n in result.counts.items():
            counts[key] += n
        if on_progress:
            on_progress(counts["processed"] + counts["errors"], pending, f"{counts['faces']} faces")
    return StageReport(
        stage="preprocess",
        counts=counts,
        outputs={"faces": str(root.faces_dir), "manifest": str(root.faces_manifest)},
        notes=[
            f"detector {config.detector}, config hash {config.output_hash()}, {worker_count(config)} workers"
        ],
        seconds=time.monotonic() - started,
        skipped=pending == 0,
    )


def run_batches_locally(
    config: PreprocessConfig, root: DataRoot, batches: Iterator[list[Source]]
) -> Iterator[BatchResult]:
    """Batch results as they finish; at most two batches per worker in flight, so memory stays flat."""
    workers = worker_count(config)
    if workers == 1:
        for batch in batches:
            yield process_batch(config, root, batch)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        in_flight: set[Future] = set()
        for batch in batches:
            in_flight.add(pool.submit(process_batch, config, root, batch))
            if len(in_flight) >= 2 * workers:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for future in in_flight:
            yield future.result()


def _remove_orphan_temp_files(root: DataRoot) -> None:
    """Temporary files of crops a killed run was writing (the crops themselves were never renamed in)."""
    for tmp in root.faces_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def input_fingerprint(config: PreprocessConfig, root: DataRoot) -> str:
    """Hash of the raw files' sha256 list and the crop-shaping config: equal means nothing new to do."""
    h = hashlib.sha256(config.output_hash().encode())
    if root.raw_manifest.is_file():
        with closing(sqlite3.connect(f"{root.raw_manifest.as_uri()}?mode=ro", uri=True)) as db:
            for (sha,) in db.execute("SELECT sha256 FROM files ORDER BY sha256"):
                h.update(sha.encode() + b"\n")
    return h.hexdigest()
