"""Sliced Wasserstein distance (SWD) between image sets, and its real-vs-real noise floor.

Follows ProGAN (Karras et al. 2018, `metrics/sliced_wasserstein.py`):
a Laplacian pyramid of each image down to 16 px; at every level 128 random 7x7 neighbourhoods per
image; each level's set of descriptors is normalised per channel on its own (mean 0, std 1 over all
its descriptors and pixels); then 4 x 128 = 512 random unit directions, the sorted projections of the
two sets compared point by point. Each level is reported x1000, and their mean beside them.
Lower is better; two samples of the same distribution give a small but non-zero "noise floor".

The other export metrics live beside it: MS-SSIM diversity (`models.ms_ssim`), nearest-neighbour
memorisation (`models.memorisation`) and the optional FID/KID (`models.fid_kid`). `check_images` is
the input check all of them share.
"""

import numpy as np
import torch
import torch.nn.functional as F

from common.report import BadInputError

SWD_PATCH = 7  # neighbourhood size
SWD_PATCHES_PER_IMAGE = 128
SWD_DIR_REPEATS = 4  # 4 x 128 = 512 random projections
SWD_DIRS_PER_REPEAT = 128
SWD_MIN_RESOLUTION = 16
_BATCH = 256  # images per step when building pyramids, to bound memory

# The 5x5 binomial kernel of cv2.pyrDown / pyrUp.
_GAUSS = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_GAUSS = torch.outer(_GAUSS, _GAUSS) / 256.0


def check_images(images: np.ndarray, name: str) -> None:
    """Every metric takes uint8 (N, H, W, C) arrays of square images of at least 16 px."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        raise BadInputError(
            f"{name}: expected a uint8 array of shape (N, H, W, C), got "
            f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}; "
            "pass images as loaded from images.npy or converted with (x + 1) * 127.5"
        )
    if images.shape[1] < SWD_MIN_RESOLUTION or images.shape[1] != images.shape[2]:
        raise BadInputError(f"{name}: images must be square and at least 16 px, got {images.shape[1:3]}")


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 5x5 convolution with mirrored borders (scipy 'mirror' = cv2 BORDER_REFLECT_101)."""
    c = x.shape[1]
    weight = kernel.to(x.dtype).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=c)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _filter(x, _GAUSS)[:, :, ::2, ::2]


def _pyr_up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h * 2, w * 2)
    up[:, :, ::2, ::2] = x
    return _filter(up, _GAUSS * 4.0)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels from full resolution down; the last level is the low-pass residual."""
    pyramid = [x]
    for _ in range(1, levels):
        pyramid.append(_pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _pyr_up(pyramid[-1])
    return pyramid


def swd_levels(image_size: int) -> list[int]:
    """The resolutions SWD looks at: 64 -> [64, 32, 16]."""
    levels, res = [], image_size
    while res >= SWD_MIN_RESOLUTION:
        levels.append(res)
        res //= 2
    return levels


def _patches(level: torch.Tensor, per_image: int, rng: np.random.Generator) -> torch.Tensor:
    """`per_image` random 7x7 neighbourhoods of each image, as (N * per_image, C, 7, 7)."""
    n, c, h, w = level.shape
    half = SWD_PATCH // 2
    count = n * per_image
    ys = torch.from_numpy(rng.integers(half, h - half, size=(count, 1, 1, 1)))
    xs = torch.from_numpy(rng.integers(half, w - half, size=(count, 1, 1, 1)))
    img = (torch.arange(count) // per_image).view(-1, 1, 1, 1)
    chan = torch.arange(c).view(1, -1, 1, 1)
    offsets = torch.arange(-half, half + 1)
    rows, cols = ys + offsets.view(1, 1, -1, 1), xs + offsets.view(1, 1, 1, -1)
    # One flat gather, as ProGAN does: index of (image, channel, row, col) in the contiguous level.
    return level.reshape(-1)[((img * c + chan) * h + rows) * w + cols]


def swd_descriptors(images: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
    """Normalised descriptor sets, one (N * 128, C * 49) tensor per pyramid level."""
    n_levels = len(swd_levels(images.shape[1]))
    per_level: list[list[torch.Tensor]] = [[] for _ in range(n_levels)]
    for start in range(0, len(images), _BATCH):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + _BATCH]))
        x = batch.permute(0, 3, 1, 2).float()
        for i, level in enumerate(laplacian_pyramid(x, n_levels)):
            per_level[i].append(_patches(level, SWD_PATCHES_PER_IMAGE, rng))
    descriptors = []
    for chunks in per_level:
        d = torch.cat(chunks)
        d = (d - d.mean(dim=(0, 2, 3), keepdim=True)) / d.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
        descriptors.append(d.reshape(d.shape[0], -1))
    return descriptors


def _swd_one_level(
    a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator, device: torch.device | None
) -> float:
    """Mean over 4 x 128 random directions of the distance between the sorted projections."""
    if device is not None:
        a, b = a.to(device), b.to(device)
    results = []
    for _ in range(SWD_DIR_REPEATS):
        dirs = rng.standard_normal((a.shape[1], SWD_DIRS_PER_REPEAT)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        if device is None:
            # (directions, descriptors), sorted along the contiguous axis: numpy's vectorised sort is
            # ~3x faster there than down columns, and ~15x faster than torch.sort on CPU.
            proj_a = np.sort(dirs.T @ a.numpy().T, axis=1)
            proj_b = np.sort(dirs.T @ b.numpy().T, axis=1)
            results.append(float(np.abs(proj_a - proj_b).mean()))
        else:  # on a GPU, torch's sort is the fast one
            d = torch.from_numpy(dirs.T.copy()).to(device)
            proj_a = torch.sort(d @ a.T, dim=1).values
            proj_b = torch.sort(d @ b.T, dim=1).values
            results.append(float((proj_a - proj_b).abs().mean()))
    return float(np.mean(results))


def _same_count(
    real: np.ndarray, fake: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted projections are compared point by point, so both sets need as many images."""
    n = min(len(real), len(fake))
    if len(real) > n:
        real = real[np.sort(rng.choice(len(real), n, replace=False))]
    if len(fake) > n:
        fake = fake[np.sort(rng.choice(len(fake), n, replace=False))]
    return real, fake


def sliced_wasserstein(
    real: np.ndarray, fake: np.ndarray, seed: int = 0, device: str | torch.device | None = None
) -> dict:
    """ProGAN's SWD between two uint8 (N, H, W, C) image sets; x1000 per level, finest first.

    When the sets differ in size, a random subset of the larger one is used (the counts must match).
    `device` (e.g. "cuda") projects and sorts there, several times faster than the CPU for 1000s of
    images; None uses numpy. The random choices are the same either way, so are the figures.
    Returns {"levels": [...], "resolutions": [64, 32, 16], "mean": float, "images": n}.
    """
    check_images(real, "real images")
    check_images(fake, "generated images")
    if real.shape[1:] != fake.shape[1:]:
        raise BadInputError(f"real images are {real.shape[1:]} but generated ones {fake.shape[1:]}")
    rng = np.random.default_rng(seed)
    real, fake = _same_count(real, fake, rng)
    with torch.no_grad():
        desc_real = swd_descriptors(real, rng)
        desc_fake = swd_descriptors(fake, rng)
        device = None if device is None else torch.device(device)
        levels = [_swd_one_level(a, b, rng, device) * 1e3 for a, b in zip(desc_real, desc_fake, strict=True)]
    return {
        "levels": levels,
        "resolutions": swd_levels(real.shape[1]),
        "mean": float(np.mean(levels)),
        "images": len(real),
    }


def split_halves(real: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of a set, each sorted by index (so memory-mapped reads stay sequential)."""
    if len(real) < 2:
        raise BadInputError(f"need at least 2 real images for a noise floor, got {len(real)}")
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    return real[np.sort(order[:half])], real[np.sort(order[half : 2 * half])]


def swd_noise_floor(real: np.ndarray, seed: int = 0, device: str | torch.device | None = None) -> dict:
    """SWD between two disjoint halves of the real set: what "as good as the data itself" scores.

    The figure depends on the number of images per side; compare it with an SWD of generated
    images against the same number of real ones (export uses one half as that reference).
    """
    check_images(real, "real images")
    a, b = split_halves(real, seed)
    return sliced_wasserstein(a, b, seed=seed + 1, device=device)
