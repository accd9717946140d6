"""Quality metrics that need no pretrained network: SWD, MS-SSIM diversity, nearest-neighbour memorisation.

Sliced Wasserstein distance follows ProGAN (Karras et al. 2018, `metrics/sliced_wasserstein.py`):
a Laplacian pyramid of each image down to 16 px; at every level 128 random 7x7 neighbourhoods per
image; each level's set of descriptors is normalised per channel on its own (mean 0, std 1 over all
its descriptors and pixels); then 4 x 128 = 512 random unit directions, the sorted projections of the
two sets compared point by point. Each level is reported x1000, and their mean beside them.
Lower is better; two samples of the same distribution give a small but non-zero "noise floor".

FID/KID, which need Inception weights, live in `fid_kid` and are optional.
"""

import math
from functools import cache
from pathlib import Path

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


def _check_images(images: np.ndarray, name: str) -> None:
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
    _check_images(real, "real images")
    _check_images(fake, "generated images")
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
    _check_images(real, "real images")
    a, b = split_halves(real, seed)
    return sliced_wasserstein(a, b, seed=seed + 1, device=device)


# --- MS-SSIM diversity -------------------------------------------------------------------------------

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def ms_ssim_scales(image_size: int) -> int:
    """How many of the 5 standard scales fit: the coarsest must still hold an 11x11 window.

    256 px and up get all 5; 128 px 4, 64 px 3 (64, 32, 16), 32 px 2. The weights of the scales
    kept are renormalised to sum to 1. A smaller window would keep more scales but make every
    scale's statistics noisier; keeping the window keeps each scale comparable with the literature.
    """
    if image_size < SSIM_WINDOW:
        raise BadInputError(f"MS-SSIM needs images of at least {SSIM_WINDOW} px, got {image_size}")
    return min(5, 1 + int(math.log2(image_size / SSIM_WINDOW)))


def _gaussian_window() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


@cache
def _band(size: int) -> torch.Tensor:
    """The 'valid' 1-D Gaussian filter as a (size - 10, size) matrix, so blurring is two matmuls."""
    g = _gaussian_window()
    rows = size - SSIM_WINDOW + 1
    band = torch.zeros(rows, size)
    for r in range(rows):
        band[r, r : r + SSIM_WINDOW] = g
    return band


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian with 'valid' borders, as in Wang et al.'s reference code, per channel."""
    band_h, band_w = _band(x.shape[2]), _band(x.shape[3])
    return band_h @ x @ band_w.T


def _pyramid_stats(images: np.ndarray, scales: int) -> list[tuple[torch.Tensor, ...]]:
    """Per scale, each image with its local mean and mean square: shared by every pair it is in."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    stats = []
    for _ in range(scales):
        stats.append((x, _blur(x), _blur(x * x)))
        x = F.avg_pool2d(x, 2)
    return stats


def _ms_ssim_pairs(stats: list[tuple[torch.Tensor, ...]], i: np.ndarray, j: np.ndarray) -> torch.Tensor:
    """MS-SSIM of images i[k] and j[k] from their pyramid stats, averaged over channels: (K,)."""
    scales = len(stats)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales])
    weights /= weights.sum()
    terms = []
    for scale, (x, mu, sq) in enumerate(stats):
        mu_x, mu_y = mu[i], mu[j]
        var_x, var_y = sq[i] - mu_x**2, sq[j] - mu_y**2
        cov = _blur(x[i] * x[j]) - mu_x * mu_y
        term = (2 * cov + _C2) / (var_x + var_y + _C2)  # contrast and structure
        if scale == scales - 1:  # the coarsest scale adds luminance
            term = term * (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
        # Negative terms would make fractional powers undefined; clamp at 0 as common implementations do.
        terms.append(term.mean(dim=(2, 3)).clamp_min(0))
    return torch.prod(torch.stack(terms) ** weights.view(-1, 1, 1), dim=0).mean(dim=1)


def ms_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MS-SSIM of image pairs x[k], y[k] (uint8 (N, H, W, C), data range 255), averaged over channels."""
    _check_images(x, "first images")
    _check_images(y, "second images")
    if x.shape != y.shape:
        raise BadInputError(f"MS-SSIM compares images pairwise: shapes {x.shape} and {y.shape} differ")
    stats = _pyramid_stats(np.concatenate([x, y]), ms_ssim_scales(x.shape[1]))
    k = np.arange(len(x))
    with torch.no_grad():
        return _ms_ssim_pairs(stats, k, k + len(x)).numpy()


def _pairs(n: int, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """All i < j pairs when there are at most max_pairs of them, else max_pairs distinct random ones."""
    i, j = np.triu_indices(n, k=1)
    pairs = np.stack([i, j], axis=1)
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    return pairs


def ms_ssim_diversity(images: np.ndarray, max_pairs: int = 2016, seed: int = 0) -> dict:
    """Mean pairwise MS-SSIM of a set: near 1 when the images are alike (mode collapse), lower when varied.

    Compare a generator's figure with the same figure for real crops: higher than the real one means
    less diverse than the data. Up to `max_pairs` pairs (all 2016 pairs of 64 images by default).
    """
    _check_images(images, "images")
    if len(images) < 2:
        raise BadInputError(f"MS-SSIM diversity needs at least 2 images, got {len(images)}")
    pairs = _pairs(len(images), max_pairs, np.random.default_rng(seed))
    stats = _pyramid_stats(images, ms_ssim_scales(images.shape[1]))
    with torch.no_grad():
        scores = torch.cat(
            [_ms_ssim_pairs(stats, p[:, 0], p[:, 1]) for p in np.array_split(pairs, -(-len(pairs) // 256))]
        )
    scores = scores.numpy()
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "pairs": len(pairs),
        "images": len(images),
        "scales": ms_ssim_scales(images.shape[1]),
    }


# --- Memorisation ------------------------------------------------------------------------------------


def nearest_neighbours(
    queries: np.ndarray, reference: np.ndarray, skip: np.ndarray | None = None, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the index of the nearest reference image by pixel distance and that distance.

    The distance is the root mean square pixel difference on the 0..255 scale (0: identical).
    `reference` may be a memory-mapped images.npy; it is read in chunks. `skip[k]` is a reference row
    that query k must not match (itself, when the queries are taken from the reference).
    """
    q = torch.from_numpy(np.ascontiguousarray(queries)).reshape(len(queries), -1).double()
    q_sq = (q * q).sum(1, keepdim=True)
    best_d = torch.full((len(q),), float("inf"), dtype=torch.float64)
    best_i = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(reference), chunk):
        r = torch.from_numpy(np.ascontiguousarray(reference[start : start + chunk]))
        r = r.reshape(len(r), -1).double()
        d2 = q_sq + (r * r).sum(1) - 2 * q @ r.T  # float64 keeps near-duplicates exact
        if skip is not None:
            inside = (skip >= start) & (skip < start + len(r))
            d2[np.flatnonzero(inside), skip[inside] - start] = float("inf")
        d, i = d2.min(dim=1)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    rms = torch.sqrt(best_d.clamp_min(0) / q.shape[1])
    return best_i.numpy(), rms.numpy()


def memorisation(samples: np.ndarray, training: np.ndarray, seed: int = 0) -> dict:
    """Nearest training crop of each sample, beside the same distance for real crops to the others.

    A generator that copies its data gives samples much closer to a training crop than real crops
    are to one another (`real_to_real_rms`, the median over as many random real crops).
    """
    _check_images(samples, "generated images")
    _check_images(np.asarray(training[:1]), "training images")  # may be a memmap or a lazy view
    if training[:1].shape[1:] != samples.shape[1:]:
        raise BadInputError(
            f"training images are {training[:1].shape[1:]} but generated ones {samples.shape[1:]}"
        )
    index, distance = nearest_neighbours(samples, training)
    result = {
        "nearest_index": index.tolist(),
        "nearest_rms": distance.tolist(),
        "median_rms": float(np.median(distance)),
        "real_to_real_rms": None,
    }
    n_ref = min(len(samples), len(training) - 1)
    if n_ref >= 1:
        picked = np.sort(np.random.default_rng(seed).choice(len(training), n_ref, replace=False))
        _, real_d = nearest_neighbours(training[picked], training, skip=picked)
        result["real_to_real_rms"] = float(np.median(real_d))
    return result


# --- Optional: FID and KID from a local Inception file -----------------------------------------------


def check_fid_setup(weights: str | Path) -> None:
    """Fail fast, before any work, when FID/KID are asked for but cannot be computed."""
    _inception_metrics(Path(weights).expanduser())


def _inception_metrics(weights: Path):
    """torchmetrics' FID and KID classes, or a BadInputError that says how to get them."""
    if not weights.is_file():
        raise BadInputError(
            f"[export] inception_weights = {weights}: no such file. Point it at the FID Inception weights "
            "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth, downloaded once by hand), "
            "or remove the key to skip FID/KID"
        )
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as e:
        raise BadInputError(
            f"[export] inception_weights is set but torchmetrics is not installed ({e}); "
            "pip install 'faces-pipeline[fid]' (torchmetrics and torch-fidelity), or remove the key"
        ) from e
    if not _TORCH_FIDELITY_AVAILABLE:
        raise BadInputError(
            "[export] inception_weights is set but torch-fidelity is not installed; "
            "pip install 'faces-pipeline[fid]' (torchmetrics and torch-fidelity), or remove the key"
        )
    return FrechetInceptionDistance, KernelInceptionDistance


def fid_kid(
    real: np.ndarray, fake: np.ndarray, weights: str | Path, device: str = "cpu", batch: int = 64
) -> dict:
    """FID and KID (x1000) of generated against real images with Inception weights from a local file.

    Nothing is downloaded: the file must be there. Images are resized to 299 px inside the metric.
    """
    _check_images(real, "real images")
    _check_images(fake, "generated images")
    fid_cls, kid_cls = _inception_metrics(Path(weights).expanduser())
    try:
        fid = fid_cls(feature=2048, feature_extractor_weights_path=str(Path(weights).expanduser()))
    except Exception as e:  # a wrong or truncated file fails inside torch.load / load_state_dict
        raise BadInputError(
            f"[export] inception_weights = {weights}: could not load it as FID Inception weights ({e}); "
            "use torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
        ) from e
    subset = min(1000, len(real), len(fake))
    kid = kid_cls(feature=fid.inception, subsets=100, subset_size=subset)
    fid, kid = fid.to(device), kid.to(device)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for start in range(0, len(images), batch):
                x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).permute(0, 3, 1, 2)
                x = x.expand(-1, 3, -1, -1).to(device)  # grey images as RGB
                fid.update(x, real=is_real)
                kid.update(x, real=is_real)
        kid_mean, kid_std = kid.compute()
        return {
            "fid": float(fid.compute()),
            "kid_x1000": float(kid_mean) * 1e3,
            "kid_std_x1000": float(kid_std) * 1e3,
            "real_images": len(real),
            "generated_images": len(fake),
        }
