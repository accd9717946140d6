"""Preprocess cost: CPU milliseconds per photo and photos per second, ours beside autocrop's Cropper and
command-line tool, in the same run, on the shared photos and on the same photos enlarged to 4000x3000
JPEGs (what a Wikimedia Commons original looks like), and the peak memory of a worker that meets a
64-megapixel photo.

    python bench/preprocess.py [--photos ../shared/data/photos] [--limit N] [--big N] [--skip-autocrop]

CPU time is what the run used on all cores together (its own and its child processes'), so it holds
on a machine shared with other jobs; "per core" divides photos by CPU seconds. OpenCV runs
single-threaded here and in our workers (autocrop's command-line processes use OpenCV's default).
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import cv2

# Run as `python bench/preprocess.py`, this folder comes first on sys.path, and this file would hide the
# preprocess package.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from common.layout import DataRoot  # noqa: E402
from preprocess.config import PreprocessConfig  # noqa: E402
from preprocess.pipeline import preprocess  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
REPO = Path(__file__).resolve().parents[1]
BIG = (4000, 3000)


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


def enlarged(photos: list[Path], folder: Path, size: tuple[int, int] = BIG) -> list[Path]:
    """Each photo scaled to the target's height and widened with its own edge colours, as a JPEG."""
    folder.mkdir(parents=True)
    out = []
    for photo in photos:
        bgr = cv2.imread(str(photo))
        height = size[1]
        scaled = cv2.resize(
            bgr, (bgr.shape[1] * height // bgr.shape[0], height), interpolation=cv2.INTER_CUBIC
        )
        side = max(0, size[0] - scaled.shape[1])
        wide = cv2.copyMakeBorder(scaled, 0, 0, side // 2, side - side // 2, cv2.BORDER_REPLICATE)
        target = folder / f"{photo.parent.name}-{photo.stem}.jpg"
        cv2.imwrite(str(target), wide, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(target)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(label: str, count: int, run: Callable[[], int]) -> None:
    cpu, wall = cpu_seconds(), time.perf_counter()
    crops = run()
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    print(
        f"  {label:<46} {1000 * cpu / count:7.1f} ms CPU/photo {count / cpu:6.1f} photos/s per core "
        f"{count / wall:6.1f} photos/s  ({crops} crops of {count})",
        flush=True,
    )


def ours(root: DataRoot, **settings) -> Callable[[], int]:
    def run() -> int:
        return preprocess(PreprocessConfig(**settings), root, force=True).counts["faces"]

    return run


def autocrop_api(photos: list[Path], align: bool = False) -> Callable[[], int]:
    from autocrop import Cropper

    def run() -> int:
        cropper = Cropper(64, 64, align=align)
        return sum(cropper.crop(str(p)).image is not None for p in photos)

    return run


def autocrop_cli(photos: list[Path], out: Path) -> Callable[[], int]:
    exe = shutil.which("autocrop") or str(Path(sys.executable).with_name("autocrop"))

    def run() -> int:
        out.mkdir(exist_ok=True)
        done = 0
        for photo in photos:
            target = out / f"{photo.stem}.jpg"
            result = subprocess.run(
                [exe, str(photo), "-o", str(target), "-w", "64", "-H", "64"], capture_output=True
            )
            done += int(result.returncode == 0 and target.is_file())
        return done

    return run


WORKER_PEAK = """
import json, resource, sys
from common.layout import DataRoot
from preprocess.config import PreprocessConfig
from preprocess.pipeline import preprocess
report = preprocess(PreprocessConfig(workers=2, batch_size=4), DataRoot(sys.argv[1]))
print(json.dumps({"faces": report.counts["faces"],
                  "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def worker_peak(photos: list[Path], tmp: Path) -> dict:
    """The largest worker's peak memory over a batch holding a 64-megapixel JPEG (8000x8000)."""
    huge = tmp / "huge" / "huge.jpg"
    enlarged(photos[:1], huge.parent, (8000, 8000))[0].rename(huge)
    root = raw_store([huge, *photos[1:8]], tmp / "peak")
    done = subprocess.run(
        [sys.executable, "-c", WORKER_PEAK, str(root.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(label: str, photos: list[Path], tmp: Path, skip_autocrop: bool, cli_limit: int) -> None:
    print(f"{label}: {len(photos)} photos, crops 64x64, {os.cpu_count()} cores", flush=True)
    root = raw_store(photos, tmp / "data")
    cores = os.cpu_count() or 1
    measured("faces-pipeline preprocess, 1 worker", len(photos), ours(root, workers=1))
    measured(f"faces-pipeline preprocess, {cores} workers", len(photos), ours(root, workers=0))
    measured("  same, refine_eyes = false, 1 worker", len(photos), ours(root, workers=1, refine_eyes=False))
    measured("  same, detector = haar, 1 worker", len(photos), ours(root, workers=1, detector="haar"))
    if skip_autocrop:
        return
    measured("autocrop Cropper(64, 64), 1 process", len(photos), autocrop_api(photos))
    measured("autocrop Cropper(64, 64, align=True)", len(photos), autocrop_api(photos, align=True))
    few = photos[:cli_limit]
    measured("autocrop CLI, one process per photo", len(few), autocrop_cli(few, tmp / "cli"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    parser.add_argument("--big", type=int, default=30, help="enlarge this many photos to 4000x3000")
    parser.add_argument("--cli", type=int, default=20, help="photos for autocrop's command-line tool")
    parser.add_argument("--skip-autocrop", action="store_true")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    photos = sorted(args.photos.rglob("*.jpg"))[: args.limit or None]
    if not photos:
        raise SystemExit(f"no photos under {args.photos}; pass --photos")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        compare("shared photos (512 px)", photos, tmp / "small", args.skip_autocrop, args.cli)
        big = enlarged(photos[:: max(1, len(photos) // args.big)][: args.big], tmp / "big-photos")
        compare("the same enlarged to 4000x3000 JPEGs", big, tmp / "big", args.skip_autocrop, args.cli)
        peak = worker_peak(photos, tmp)
    print(
        f"peak memory of the largest worker, a 64-megapixel JPEG in its batch: {peak['worker_mib']:.0f} MiB"
    )
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
