"""Training throughput: images per second of our trainer next to a reference-style trainer built the way
pytorch/examples' dcgan/main.py trains (ImageFolder of PNG files, a DataLoader with 2 workers, float32,
Sigmoid + BCELoss, `.item()` read-backs every step), with the same DCGAN width, batch size, data and
device, in one run. Data: face crops of the shared photos (cut around the eyes), repeated with small
shifts up to --images, written once as PNG files (for the reference) and as images.npy (for ours).

    python bench/train.py                              # CPU here: widths 32 and 64, batch 64, 64x64
    python bench/train.py --device cuda --batch 128 --widths 64 --steps 200 --warmup 20 [--compile] [--swd]
    python bench/train.py ... --set augment_target=0 --set augment_p=1    # our settings changed (here:
                                                                          # augmentation always on)

Both trainers run --warmup steps first (cuDNN autotuning, compilation, our CUDA graph capture,
worker start-up), then --steps timed steps, in alternating --rounds so that a shared machine's
changing load falls on both. The reference's time includes its data loading, as that is part of how
it trains; ours includes its on-device batching. Beside images per second (wall time) it prints CPU
milliseconds per image, of this process and its children (the reference's DataLoader workers): on a
shared machine the load moves wall time far more than CPU time. `--swd` also prints the SWD of both trainers'
samples after those steps (models.metrics), so speed is not bought with quality.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

# Run as `python bench/train.py`, this folder comes first on sys.path and would hide the packages:
# the project's root takes its place.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from bench.photos import PHOTOS, face_crops  # noqa: E402
from bench.timing import cpu_seconds  # noqa: E402
from common.config import parse_setting  # noqa: E402
from common.files import atomic_symlink  # noqa: E402
from common.layout import DataRoot  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.data import to_uint8  # noqa: E402
from models.dcgan import build_discriminator, build_generator  # noqa: E402
from models.trainer import Trainer  # noqa: E402

# --- data ------------------------------------------------------------------------------------------


class BenchData(NamedTuple):
    images: np.ndarray
    npy: Path  # images.npy in a data root, for ours
    folder: Path  # PNG files for ImageFolder, for the reference
    where: Path  # the temporary folder the trainers write into


def write_datasets(images: np.ndarray, where: Path) -> BenchData:
    """images.npy in a data root (ours) and a folder of PNG files for ImageFolder (the reference)."""
    root = DataRoot(where / "data")
    dataset = root.dataset_dir("bench")
    dataset.mkdir(parents=True)
    np.save(dataset / "images.npy", images)
    atomic_symlink("bench", root.latest_dataset)
    pngs = where / "png" / "faces"
    pngs.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(pngs / f"{i:05d}.png")
    return BenchData(images, dataset / "images.npy", pngs.parent, where)


# --- the reference-style trainer (pytorch/examples dcgan/main.py) -----------------------------------


class Reference:
    """main.py's loop: D on a real batch, D on a fake batch, G; BCELoss after a Sigmoid; float32."""

    def __init__(self, config: TrainConfig, image_folder: Path, device: torch.device) -> None:
        import torchvision.datasets as dset
        import torchvision.transforms as transforms

        size = config.image_size
        dataset = dset.ImageFolder(
            root=str(image_folder),
            transform=transforms.Compose(
                [
                    transforms.Resize(size),
                    transforms.CenterCrop(size),
                    transforms.ToTensor(),
                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                ]
            ),
        )
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, num_workers=2
        )
        self.batches = iter(self.loader)
        torch.manual_seed(config.seed)
        self.netG = build_generator(config).to(device)
        self.netD = nn.Sequential(build_discriminator(config), nn.Sigmoid()).to(device)
        self.criterion = nn.BCELoss()
        self.optD = torch.optim.Adam(
            self.netD.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2)
        )
        self.optG = torch.optim.Adam(
            self.netG.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2)
        )
        self.nz, self.device = config.nz, device

    def next_batch(self) -> torch.Tensor:
        try:
            return next(self.batches)[0]
        except StopIteration:  # a new epoch: main.py's `for i, data in enumerate(dataloader)` restarts
            self.batches = iter(self.loader)
            return next(self.batches)[0]

    def train_step(self) -> None:
        real = self.next_batch().to(self.device)
        b = real.size(0)
        self.netD.zero_grad()
        label = torch.full((b,), 1.0, device=self.device)
        output = self.netD(real)
        errD_real = self.criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        noise = torch.randn(b, self.nz, 1, 1, device=self.device)
        fake = self.netG(noise)
        label.fill_(0.0)
        output = self.netD(fake.detach())
        errD_fake = self.criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        self.optD.step()
        self.netG.zero_grad()
        label.fill_(1.0)
        output = self.netD(fake)
        errG = self.criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        self.optG.step()
        self.last = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)  # main.py prints these every step

    @torch.no_grad()
    def samples(self, n: int) -> np.ndarray:
        return to_uint8(
            torch.cat(
                [self.netG(torch.randn(64, self.nz, 1, 1, device=self.device)) for _ in range(-(-n // 64))]
            )[:n]
        )


# --- measuring ------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_for(step, device: torch.device, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds of `steps` steps."""
    sync(device)
    started, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - started, cpu_seconds() - cpu


def race(steps: dict, device: torch.device, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Each trainer's images per second (wall) and CPU milliseconds per image, timed in alternating
    rounds so that a change in the load of a shared machine falls on both alike."""
    for step in steps.values():
        seconds_for(step, device, args.warmup)
    wall, cpu = dict.fromkeys(steps, 0.0), dict.fromkeys(steps, 0.0)
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for name, step in steps.items():
            w, c = seconds_for(step, device, per_round)
            wall[name] += w
            cpu[name] += c
    images = per_round * args.rounds * args.batch
    return {name: (images / wall[name], 1000 * cpu[name] / images) for name in steps}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64], help="ngf = ndf values")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer, over all rounds")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per trainer")
    parser.add_argument("--images", type=int, default=1024, help="dataset size (photos repeated with shifts)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our networks (CUDA)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--swd", action="store_true", help="also compare sample quality (SWD) after training")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for our [train] settings")
    return parser.parse_args()


def describe(device: torch.device, args: argparse.Namespace) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    return (
        f"device: {name}; batch {args.batch}; {args.image_size}x{args.image_size}; {args.images} images; "
        f"{args.warmup} warm-up + {args.steps} timed steps; our settings: {args.set or 'defaults'}"
    )


def bench_width(width: int, data: BenchData, device: torch.device, args: argparse.Namespace) -> dict:
    """Both trainers at one network width: images per second, and with --swd their samples' SWD."""
    config = TrainConfig(
        image_size=args.image_size,
        ngf=width,
        ndf=width,
        batch_size=args.batch,
        device=str(device),
        compile=args.compile,
        progress_bar=False,
        tensorboard=False,
        eval_samples=min(1024, args.images),
        **dict(map(parse_setting, args.set)),
    )
    trainer = Trainer(config, data.npy, data.where / f"ours-{width}", "bench")
    steps = {"ours": trainer.train_step}
    if not args.skip_reference:
        reference = Reference(config, data.folder, device)
        steps["reference"] = reference.train_step
    mode = trainer.precision + (", CUDA graph" if trainer.use_graphs else "")
    row: dict = {"width": width, "precision": mode}
    for name, (per_second, cpu_ms) in race(steps, device, args).items():
        row |= {name: per_second, f"{name}_cpu": cpu_ms}
        print(f"width {width}: {name} {per_second:.1f} img/s, {cpu_ms:.2f} CPU ms per image")
    if args.swd:
        real = data.images[: min(1024, len(data.images))]
        row["swd_ours"] = swd(real, to_uint8(trainer.sample(trainer.eval_noise)))
        if "reference" in row:
            row["swd_reference"] = swd(real, reference.samples(len(real)))
    return row


def swd(real: np.ndarray, fake: np.ndarray) -> float:
    from models.metrics import sliced_wasserstein

    return sliced_wasserstein(real, fake)["mean"]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = write_datasets(face_crops(args.photos, args.image_size, args.images), Path(tmp))
        print(describe(device, args))
        table = [bench_width(width, data, device, args) for width in args.widths]
        print_table(table, args.swd)


def print_table(table: list[dict], swd: bool) -> None:
    columns = ["ngf = ndf", "ours (img/s)", "reference (img/s)", "speed-up", "CPU ms/image ours", "reference"]
    columns += ["SWD ours", "SWD reference"] if swd else []
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for row in table:
        ref = row.get("reference")
        cells = [str(row["width"]), f"{row['ours']:.1f} ({row['precision']})"]
        cells += [f"{ref:.1f}", f"{row['ours'] / ref:.2f}x"] if ref else ["-", "-"]
        cells += [f"{row['ours_cpu']:.2f}", f"{row['reference_cpu']:.2f}" if ref else "-"]
        if swd:
            cells += [f"{row[k]:.1f}" if k in row else "-" for k in ("swd_ours", "swd_reference")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
