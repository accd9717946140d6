"""Validation at scale: near-duplicate search on 100k crops, and a whole validate() run on disk.

    python -m bench.validate                  # 100k-crop search, 20k-crop validate run
    python -m bench.validate --n 30000 --full 0

Crops are made from the 204 shared photos (../shared/data/photos) with the small changes copies pick
up on the web: a shifted or rescaled crop, brightness, a mirror image, JPEG re-encoding. So many are
true near-duplicates of each other, and all are faces, which makes their hashes far less uniform
than random bits: the hard case for multi-index hashing.
"""

import argparse
import csv
import os
import resource
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np

from validate.checks import NearDuplicateIndex, phash
from validate.config import ValidateConfig
from validate.stage import validate

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"
BASE = 96  # faces are cut at this size, then jittered crops of them are scaled to 64


def base_faces() -> list[np.ndarray]:
    """One square per photo around the face, a little wider than a crop so jitter has room."""
    faces = []
    with open(PHOTOS / "webmorph-neutral" / "pupils.csv", newline="") as f:
        for row in csv.DictReader(f):
            x1, y1, x2, y2 = (float(row[k]) for k in ("pupil1_x", "pupil1_y", "pupil2_x", "pupil2_y"))
            ipd = float(np.hypot(x2 - x1, y2 - y1))
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2 + 0.45 * ipd, int(2.9 * ipd)
            faces.append(square(cv2.imread(str(PHOTOS / "webmorph-neutral" / row["file"])), cx, cy, side))
    for path in sorted((PHOTOS / "webmorph-smiling").glob("*.jpg")):
        faces.append(square(cv2.imread(str(path)), 256, 265, 320))
    return faces


def square(image: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    return cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (BASE, BASE), interpolation=cv2.INTER_AREA)


def synth_crop(faces: list[np.ndarray], i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    face = faces[i % len(faces)]
    side = int(rng.integers(76, 88))
    x, y = (int(v) for v in rng.integers(0, BASE - side + 1, 2))
    crop = cv2.resize(face[y : y + side, x : x + side], (64, 64), interpolation=cv2.INTER_AREA)
    crop = cv2.convertScaleAbs(crop, alpha=float(rng.uniform(0.85, 1.15)), beta=float(rng.uniform(-20, 20)))
    if rng.random() < 0.5:
        crop = np.ascontiguousarray(crop[:, ::-1])
    if rng.random() < 0.3:
        crop = cv2.imdecode(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_COLOR)
    return crop


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def greedy_index(hashes: list[int], distance: int) -> tuple[int, float, float]:
    """Keep each hash unless a kept one is near (as validate does): (kept, seconds, comparisons/query)."""
    index = NearDuplicateIndex(distance)
    t = time.perf_counter()
    for h in hashes:
        if index.nearest(h) is None:
            index.add(h)
    return len(index.hashes), time.perf_counter() - t, index.comparisons / len(hashes)


def greedy_brute(hashes: list[int], distance: int) -> tuple[int, float]:
    """The same, comparing against every kept hash (numpy, vectorised): the quadratic baseline."""
    kept = np.zeros(len(hashes), np.uint64)
    n = 0
    t = time.perf_counter()
    for h in hashes:
        if n == 0 or np.bitwise_count(kept[:n] ^ np.uint64(h)).min() > distance:
            kept[n] = h
            n += 1
    return n, time.perf_counter() - t


def bench_search(n: int, distance: int) -> None:
    faces = base_faces()
    t = time.perf_counter()
    hashes = [phash(synth_crop(faces, i)) for i in range(n)]
    made = time.perf_counter() - t
    print(
        f"made and hashed {n} crops in {made:.1f} s ({1e6 * made / n:.0f} us each, crop synthesis included)"
    )
    print(
        f"near-duplicate search, distance {distance}, {distance + 1} blocks of ~{64 // (distance + 1)} bits:"
    )
    print("| crops | kept | index s | comparisons/query | brute-force s |")
    print("|---:|---:|---:|---:|---:|")
    sizes = sorted({s for s in (n // 10, n // 3, n) if s})
    brute_at = sizes[0]
    brute_kept, brute_s = greedy_brute(hashes[:brute_at], distance)
    for size in sizes:
        kept, seconds, per_query = greedy_index(hashes[:size], distance)
        if size == brute_at:
            assert kept == brute_kept, "index and brute force disagree"
            brute = f"{brute_s:.1f}"
        else:
            brute = f"~{brute_s * (size / brute_at) ** 2:.0f} (extrapolated)"
        print(f"| {size} | {kept} | {seconds:.1f} | {per_query:.0f} | {brute} |")
    print(f"at 1M crops brute force would take ~{brute_s * (1e6 / brute_at) ** 2 / 3600:.1f} h")
    rng = np.random.default_rng(1)
    uniform = [int(h) for h in rng.integers(0, 2**64, n, dtype=np.uint64)]
    kept, seconds, per_query = greedy_index(uniform, distance)
    print(f"uniform random hashes for contrast: {n} in {seconds:.1f} s, {per_query:.1f} comparisons/query")
    print(f"peak RSS so far {peak_rss_mb():.0f} MB")


def build_root(path: Path, n: int) -> None:
    """A data root as preprocess leaves it: n crop PNGs and the crops table (no raw manifest needed)."""
    faces = base_faces()
    (path / "faces").mkdir(parents=True)
    rows = []
    for i in range(n):
        sha = f"{i:064x}"
        rel = f"faces/{sha}-0.png"
        cv2.imwrite(str(path / rel), synth_crop(faces, i))
        rows.append((f"{sha}-0", sha, 0, rel))
    with closing(sqlite3.connect(path / "faces" / "manifest.sqlite")) as con, con:
        con.execute(
            "CREATE TABLE crops(crop_id TEXT PRIMARY KEY, sha256 TEXT, face_index INTEGER, path TEXT, "
            "box TEXT, landmarks TEXT, score REAL, blur REAL, detector TEXT, config_hash TEXT, size INTEGER)"
        )
        con.executemany("INSERT INTO crops(crop_id, sha256, face_index, path) VALUES (?, ?, ?, ?)", rows)


def bench_full(n: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp) / "data"
        t = time.perf_counter()
        build_root(root, n)
        print(f"\nwrote {n} crop PNGs in {time.perf_counter() - t:.1f} s")
        config = ValidateConfig(workers=workers)
        t = time.perf_counter()
        report = validate(config, root)
        first = time.perf_counter() - t
        print(
            f"validate (workers={workers or os.cpu_count()}, YuNet re-check on): {first:.1f} s, "
            f"{1e3 * first / n:.2f} ms/crop; extrapolated to 100k: {first * 100_000 / n / 60:.1f} min"
        )
        print("counts:", {k: v for k, v in report.counts.items() if v})
        t = time.perf_counter()
        again = validate(config, root, force=True)  # measurements cached: hashing and judging only
        print(
            f"validate again, forced, measurements cached: {time.perf_counter() - t:.1f} s ({again.notes[0]})"
        )
        print(f"peak RSS of this process {peak_rss_mb():.0f} MB (images.npy is written crop by crop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="crops for the near-duplicate search")
    parser.add_argument("--full", type=int, default=20_000, help="crops for a whole validate() run; 0 skips")
    parser.add_argument("--distance", type=int, default=ValidateConfig().near_duplicate_distance)
    parser.add_argument("--workers", type=int, default=0, help="measuring processes; 0: one per core")
    args = parser.parse_args()
    if args.n:
        bench_search(args.n, args.distance)
    if args.full:
        bench_full(args.full, args.workers)


if __name__ == "__main__":
    main()
