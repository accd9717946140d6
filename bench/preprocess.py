"""Preprocess throughput: photos per second on the shared photos, with 1 worker and with every core,
next to autocrop's own command-line tool (one process per photo, as it takes one image per call) and
its Python API, on copies of the same photos, in the same run.

    python bench/preprocess.py [--photos ../shared/data/photos] [--limit N] [--skip-autocrop]
"""

import argparse
import hashlib
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

# Run as `python bench/preprocess.py`, this folder comes first on sys.path, and this file would hide the
# preprocess package.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from common.layout import DataRoot  # noqa: E402
from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.pipeline import preprocess  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def raw_store(photos: list[Path], where: Path) -> DataRoot:
    """A data root holding the photos as the scraper would store them."""
    root = DataRoot(where)
    root.raw_dir.mkdir(parents=True)
    with closing(sqlite3.connect(root.raw_manifest)) as db, db:
        db.execute(
            "CREATE TABLE files (sha256 TEXT PRIMARY KEY, path, type, bytes, width, height, first_seen)"
        )
        for photo in photos:
            data = photo.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            target = root.raw_path(sha, "jpg")
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
            db.execute(
                "INSERT OR IGNORE INTO files VALUES (?, ?, 'jpeg', ?, NULL, NULL, '')",
                (sha, target.relative_to(root.root).as_posix(), len(data)),
            )
    return root


def timed(run: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    faces = run()
    return time.perf_counter() - started, faces


def ours(root: DataRoot, **settings) -> Callable[[], int]:
    def run() -> int:
        report = preprocess(PreprocessConfig(**settings), root, force=True)
        return report.counts["faces"]

    return run


def autocrop_cli(photos: list[Path], out: Path, workers: int) -> Callable[[], int]:
    exe = shutil.which("autocrop") or str(Path(sys.executable).with_name("autocrop"))

    def crop(photo: Path) -> int:
        target = out / f"{photo.stem}.jpg"
        done = subprocess.run(
            [exe, str(photo), "-o", str(target), "-w", "64", "-H", "64", "--align"], capture_output=True
        )
        return int(done.returncode == 0 and target.is_file())

    def run() -> int:
        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(crop, photos))

    return run


def autocrop_api(photos: list[Path]) -> Callable[[], int]:
    from autocrop import Cropper

    def run() -> int:
        cropper = Cropper(64, 64, align=True)
        return sum(cropper.crop(str(p)).image is not None for p in photos)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    parser.add_argument("--skip-autocrop", action="store_true")
    args = parser.parse_args()

    photos = sorted(args.photos.rglob("*.jpg"))[: args.limit or None]
    cores = os.cpu_count() or 1
    print(f"{len(photos)} photos from {args.photos}, {cores} cores, crops 64x64")
    results: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = raw_store(photos, tmp / "data")
        copies = tmp / "copies"  # autocrop gets its own copies of the same files
        copies.mkdir()
        for p in photos:
            shutil.copy(p, copies / f"{p.parent.name}-{p.name}")
        copied = sorted(copies.iterdir())

        runs: list[tuple[str, Callable[[], int]]] = [
            ("faces-pipeline preprocess, 1 worker", ours(root, workers=1)),
            (f"faces-pipeline preprocess, {cores} workers", ours(root, workers=0)),
            ("  same, refine_eyes = false, 1 worker", ours(root, workers=1, refine_eyes=False)),
            ("  same, detector = haar, 1 worker", ours(root, workers=1, detector="haar")),
        ]
        if not args.skip_autocrop:
            (tmp / "ac1").mkdir(), (tmp / "acn").mkdir()
            runs += [
                ("autocrop CLI --align, 1 at a time", autocrop_cli(copied, tmp / "ac1", 1)),
                (f"autocrop CLI --align, {cores} at a time", autocrop_cli(copied, tmp / "acn", cores)),
                ("autocrop Cropper(align=True) API, 1 process", autocrop_api(copied)),
            ]
        for label, run in runs:
            seconds, faces = timed(run)
            results.append((label, seconds, faces))
            print(
                f"  {label:<48} {len(photos) / seconds:7.1f} photos/s  ({seconds:5.1f} s, {faces} crops)",
                flush=True,
            )

    peak_parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: this process {peak_parent:.0f} MiB, largest child {peak_child:.0f} MiB")


if __name__ == "__main__":
    main()
