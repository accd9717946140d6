"""MS-SSIM (Wang et al. 2003) and the diversity of a set: mean MS-SSIM over pairs of its images.

Near 1 when the images are alike (mode collapse); a generator should sit near the real crops' figure.
"""

import math
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from common.report import BadInputError
from models.metrics import check_images

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
    check_images(x, "first images")
    check_images(y, "second images")
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
    check_images(images, "images")
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
