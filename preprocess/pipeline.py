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
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from multiprocessing import get_context

import cv2
import numpy as np

from common.clock import now_iso
from common.files import atomic_write_bytes
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from preprocess import manifest as faces_manifest
from preprocess.align import blur_score
from preprocess.config import PreprocessConfig
from preprocess.decode import ImageDecodeError, open_image
from preprocess.detect import FaceDetector
from preprocess.manifest import Crop, Outcome
from preprocess.photo import FaceCrop, face_crops
from preprocess.photo import align_face as align_face  # where the tests and older callers find it
from preprocess.verify import SecondOpinion
from scraper import manifest as raw_manifest


@dataclass(frozen=True)
class Source:
    sha256: str
    path: str  # relative to the data root, as in raw/manifest.sqlite


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

RAW_PAGE = 500  # raw files read per query while looking for pending ones


def _open_faces_manifest(root: DataRoot) -> sqlite3.Connection:
    if not root.raw_manifest.is_file():
        raise BadInputError(
            f"no raw manifest at {root.raw_manifest}: run the scrape stage first, or point data_dir at a "
            "data root that has one"
        )
    return faces_manifest.open_manifest(root.faces_manifest)


def _pending(db: sqlite3.Connection, root: DataRoot, config_hash: str, force: bool) -> Iterator[Source]:
    """Stored files, not taken down, not yet processed with this configuration (all with force), by
    sha256; read a page at a time (constant memory)."""
    after = ""
    while page := raw_manifest.stored_files(root.raw_manifest, after=after, limit=RAW_PAGE):
        after = page[-1][0]
        done = set() if force else faces_manifest.processed_among(db, config_hash, [sha for sha, _ in page])
        yield from (Source(sha, path) for sha, path in page if sha not in done)


def pending_sources(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> list[Source]:
    """Raw files not yet processed with this configuration (all of them with force), by sha256."""
    with closing(_open_faces_manifest(root)) as db:
        return list(_pending(db, root, config.output_hash(), force))


def iter_batches(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> Iterator[list[Source]]:
    """The pending sources in batches of `batch_size` (constant memory).

    Each batch is claimed as it is yielded: its older records (other configurations) are dropped, so a
    batch cut short by a kill is redone by the next run, whatever configuration that run has.
    """
    _detector(config)  # a missing or broken model is bad input before any record is dropped
    with closing(_open_faces_manifest(root)) as db:
        batch: list[Source] = []
        for source in _pending(db, root, config.output_hash(), force):
            batch.append(source)
            if len(batch) == config.batch_size:
                faces_manifest.claim(db, [s.sha256 for s in batch])
                yield batch
                batch = []
        if batch:
            faces_manifest.claim(db, [s.sha256 for s in batch])
            yield batch


def count_sources(config: PreprocessConfig, root: DataRoot, *, force: bool = False) -> tuple[int, int]:
    """(raw files, of which pending)."""
    with closing(_open_faces_manifest(root)) as db:
        pending = sum(1 for _ in _pending(db, root, config.output_hash(), force))
    return raw_manifest.count_stored_files(root.raw_manifest), pending


def record_batch(config: PreprocessConfig, root: DataRoot, result: BatchResult) -> None:
    """Commit a batch's outcomes in one transaction; each source's crops replace its old ones."""
    done = [o for o in result.outcomes if o.status != "missing"]
    with closing(_open_faces_manifest(root)) as db:
        faces_manifest.record(db, result.config_hash, done, now_iso())
    for o in done:  # crop files of faces an earlier configuration found and this one did not
        for stale in root.faces_dir.glob(f"{o.sha256}-*.png"):
            if int(stale.stem.rsplit("-", 1)[1]) >= len(o.crops):
                stale.unlink(missing_ok=True)


# --- the work (any process) -------------------------------------------------------------------------

_workers: dict[str, tuple[FaceDetector, SecondOpinion]] = {}


def _detector(config: PreprocessConfig) -> FaceDetector:
    return _tools(config)[0]


def _tools(config: PreprocessConfig) -> tuple[FaceDetector, SecondOpinion]:
    """One detector and second opinion per process and configuration (loading them takes milliseconds).
    OpenCV runs single-threaded wherever the work runs: one process per core already, and in a Dask
    or Prefect worker as much as in ours."""
    key = config.output_hash()
    if key not in _workers:
        cv2.setNumThreads(1)
        _workers[key] = (FaceDetector(config), SecondOpinion(config))
    return _workers[key]


def process_batch(config: PreprocessConfig, root: DataRoot, batch: list[Source]) -> BatchResult:
    """Decode, detect, align and write the crops of each source; return what the manifest should say.

    Writes no manifest, so it can run in a worker process, a Prefect task or on a Dask worker that
    sees the same data root.
    """
    tools = _tools(config)
    return BatchResult(config.output_hash(), [process_source(config, root, s, *tools) for s in batch])


def process_source(
    config: PreprocessConfig, root: DataRoot, source: Source, detector: FaceDetector, opinion: SecondOpinion
) -> Outcome:
    path = root.root / source.path
    if not path.is_file():
        return Outcome(source.sha256, "missing", error=f"missing file {source.path}")
    try:
        found, doubts = face_crops(config, open_image(path, max_pixels=config.max_pixels), detector, opinion)
        crops = [_write_crop(config, root, source.sha256, k, face) for k, face in enumerate(found)]
    except ImageDecodeError as e:
        return Outcome(source.sha256, "error", error=e.reason)
    except cv2.error as e:  # an image OpenCV cannot work on (e.g. 1 px wide): recorded, not retried
        return Outcome(source.sha256, "error", error=f"opencv: {str(e).strip().splitlines()[-1]}")
    note = f"{len(doubts)} face candidate(s) turned down: {'; '.join(doubts)}" if doubts else None
    return Outcome(source.sha256, "ok" if crops else "no_face", crops, error=note)


def _write_crop(config: PreprocessConfig, root: DataRoot, sha256: str, k: int, found: FaceCrop) -> Crop:
    ok, png = cv2.imencode(".png", found.crop)  # BGR in memory, RGB in the file
    assert ok, "PNG encoding of a uint8 image cannot fail"
    target = atomic_write_bytes(root.crop_path(sha256, k), png.tobytes())
    face = found.face
    return Crop(
        crop_id=target.stem,
        sha256=sha256,
        face_index=k,
        path=target.relative_to(root.root).as_posix(),
        box=[round(float(v), 2) for v in face.box],
        # Haar's landmarks are an average face's, placed by the box and the pupils: only the box is recorded.
        landmarks=None if config.detector == "haar" else np.round(face.landmarks, 2).tolist(),
        score=round(face.score, 4),
        blur=round(blur_score(found.crop), 2),
        detector=config.detector,
        config_hash=config.output_hash(),
        size=config.crop_size,
    )


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
    _detector(config)  # checked first: a bad model file fails the run before anything changes
    sources, pending = count_sources(config, root, force=force)  # BadInputError without a raw manifest
    _remove_orphan_temp_files(root)
    counts = {
        "sources": sources,
        "processed": 0,
        "skipped": sources - pending,
        "faces": 0,
        "no_face": 0,
        "errors": 0,
    }
    batches = iter_batches(config, root, force=force)
    done = 0
    for result in (run_batches or run_batches_locally)(config, root, batches):
        record_batch(config, root, result)
        for key, n in result.counts.items():
            counts[key] += n
        done += len(result.outcomes)  # each photo once, whatever became of it
        if on_progress:  # a photo stored after the count was taken may make `done` outgrow it
            on_progress(done, max(pending, done), f"{counts['faces']} faces")
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
    if workers == 1:  # in this process; process_batch makes OpenCV single-threaded here too
        for batch in batches:
            yield process_batch(config, root, batch)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
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
    after = ""
    while page := raw_manifest.stored_files(
        root.raw_manifest, after=after, limit=10_000, skip_forgotten=False
    ):
        after = page[-1][0]
        h.update(b"".join(sha.encode() + b"\n" for sha, _ in page))
    return h.hexdigest()
