"""The training set, resident on the device as uint8: no DataLoader workers, no decoding per epoch.

`images.npy` (N, S, S, C) uint8 is read once (memory-mapped, only this process's shard), resized
and converted to the configured size and channels once, and kept on the device. Each batch is a
gather, a float conversion to [-1, 1] and a random flip, all on the device.

Rows come from an endless stream of per-epoch permutations that depends only on (seed, rank): the
trainer takes batch `step` as the step-th slice of it, so a resumed run draws exactly the batches
the uninterrupted run would have drawn, with no sampler state. `fixed_noise` gives the latents that
grids, evaluation and the averaged generator's statistics are measured on: fixed by the seed alone.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.files import read_json
from common.report import BadInputError
from models.config import TrainConfig

_CHUNK = 4096  # images converted at a time, so a large dataset never needs a float copy in memory


def open_images(path: Path) -> np.ndarray:
    """The dataset's images, memory-mapped and checked: (N, S, S, C) uint8 with C in (1, 3)."""
    if not path.is_file():
        raise BadInputError(f"no dataset at {path}: run the validate stage first (faces validate)")
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:  # unreadable, truncated, not .npy, pickled objects
        raise BadInputError(f"{path} is not a readable .npy file ({e}); rerun the validate stage") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise BadInputError(
            f"{path}: expected square uint8 images of shape (N, S, S, C), got {images.dtype} {images.shape}; "
            "rerun the validate stage to rebuild the dataset"
        )
    if images.shape[3] not in (1, 3) or images.shape[0] == 0:
        raise BadInputError(f"{path}: expected at least one image with 1 or 3 channels, got {images.shape}")
    return images


def dataset_flip(config: TrainConfig, dataset_dir: Path) -> TrainConfig:
    """The config with `flip` off when the snapshot's report.json says `flip: false` (digits: a
    mirrored 7 is no 7), so the run records what it did; otherwise the config unchanged."""
    if config.flip and read_json(dataset_dir / "report.json").get("flip", True) is False:
        return config.model_copy(update={"flip": False})
    return config


def check_shards(images_path: Path, images: int, batch_size: int, world_size: int) -> None:
    """Under torchrun each process trains on its shard with its part of the batch: both must exist."""
    if batch_size % world_size:
        raise BadInputError(
            f"[train] batch_size = {batch_size} is split over {world_size} processes: "
            f"make it a multiple of {world_size}"
        )
    if images < world_size:
        raise BadInputError(f"{images_path}: {images} images cannot be shared by {world_size} processes")


def fit_images(images: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """Resize (area-averaging) and convert channels once: (N, S, S, C) uint8 -> (N, size, size, channels)."""
    n, s, _, c = images.shape
    if s == image_size and c == channels:
        return torch.from_numpy(np.array(images))  # read into memory (images may be a memmap)
    out = torch.empty((n, image_size, image_size, channels), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        x = torch.from_numpy(np.array(images[start : start + _CHUNK])).permute(0, 3, 1, 2).float()
        if c == 3 and channels == 1:  # ITU-R BT.601 luma
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if s != image_size:
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        out[start : start + len(x)] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Network images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), the layout of images.npy."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def shard_seed(seed: int, rank: int, salt: int = 0) -> int:
    """A distinct, reproducible seed per (seed, rank, salt), kept inside the 63-bit range torch accepts."""
    return (seed * 1_000_003 + rank * 7_919 + salt * 104_729) % (2**63 - 1)


def fixed_noise(seed: int, nz: int, n: int, device: torch.device, *, salt: int) -> torch.Tensor:
    """`n` latents fixed by the seed and their use (`salt`): the same in every process and rerun."""
    g = torch.Generator().manual_seed(shard_seed(seed, rank=0, salt=-salt))
    return torch.randn(n, nz, 1, 1, generator=g).to(device)


class DeviceDataset:
    """This process's shard of the dataset on `device`, served as float images in [-1, 1]."""

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device,
        *,
        seed: int = 0,
        rank: int = 0,
        flip: bool = True,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.images = images.to(device)  # (N, H, W, C) uint8: a batch gather yields channels_last for free
        self.n = len(images)
        self.device = device
        self.seed, self.rank, self.flip = seed, rank, flip
        self.memory_format = memory_format
        self._perm_epoch, self._perm = -1, torch.empty(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(shard_seed(self.seed, self.rank, salt=epoch + 1))
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._perm_epoch = epoch
        return self._perm

    def rows(self, first: int, count: int) -> torch.Tensor:
        """`count` rows from position `first` of the endless concatenation of epoch permutations."""
        pos, need, parts = first, count, []
        while need:
            epoch, offset = divmod(pos, self.n)
            take = min(need, self.n - offset)
            parts.append(self._permutation(epoch)[offset : offset + take])
            pos, need = pos + take, need - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def batch(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The images at `rows`, (B, C, H, W) float in [-1, 1], each flipped at random when `flip`."""
        x = self.images[rows]  # (B, H, W, C) uint8
        if self.flip:
            flipped = torch.rand(len(x), device=self.device, generator=generator) < 0.5
            x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(2), x)
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)  # NCHW view of NHWC memory
        return x.float().mul_(1 / 127.5).sub_(1)
