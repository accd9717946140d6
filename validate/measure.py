"""Measuring crops for validation: in batches, in worker processes when there are many, cached per file.

Measurements do not depend on thresholds (validate.checks), so each crop file is measured once and
its measurements are cached in datasets/validate.sqlite by the hash of the bytes read.
"""

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2

from validate.checks import FaceRechecker, Measures, measure
from validate.config import ValidateConfig
from validate.inputs import Crop
from validate.store import load_measures, save_measures

Progress = Callable[[int, int, str], None]
MEASURE_BATCH = 128  # crops per worker task and per cache transaction
PARALLEL_FROM = 512  # fewer crops to measure than this: not worth starting processes


def measure_all(
    config: ValidateConfig, crops: list[Crop], store: sqlite3.Connection, progress: Progress
) -> dict[str, Measures]:
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


def run_batches(
    batches: list[list[tuple[str, str]]], config: ValidateConfig
) -> Iterator[list[tuple[str, Measures]]]:
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
