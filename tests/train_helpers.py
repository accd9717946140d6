"""Tiny training runs for the training tests: small configs, synthetic datasets, a run's outputs."""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from common.files import atomic_symlink
from common.layout import DataRoot
from models.config import TrainConfig

TINY = dict(
    image_size=32,
    ngf=4,
    ndf=4,
    nz=8,
    batch_size=8,
    log_every=2,
    checkpoint_every=4,
    sample_every=4,
    eval_every=4,
    eval_samples=16,
    progress_bar=False,
    tensorboard=False,
)


def tiny(**overrides) -> TrainConfig:
    return TrainConfig(**(TINY | overrides))


def make_dataset(root: DataRoot, images: np.ndarray) -> str:
    """A dataset snapshot as the validate stage leaves it: datasets/<id>/images.npy and datasets/latest."""
    dataset_id = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    folder = root.dataset_dir(dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    atomic_symlink(dataset_id, root.latest_dataset)
    return dataset_id


def blobs(n: int = 24, size: int = 64, seed: int = 0) -> np.ndarray:
    """Soft coloured discs on a background: images with structure, different for each seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)[..., None]
        out[i] = np.where(disc, rng.integers(120, 255, 3), rng.integers(0, 100, 3))
    return out


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path, key: str = "generator") -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]
