"""What SWD cannot see: how bright and how contrasted whole images are, generated against real.

SWD normalises each set's patch descriptors on their own (models.metrics), so a set whose every image
is shifted or flattened alike scores as if nothing were wrong: real crops at 40% of their contrast
sit at the noise floor. This compares per-image statistics instead: for each image and channel the
mean (brightness) and the standard deviation (contrast) of its pixels, on 0..255. For each statistic
the two sets' distributions are compared by the 1-D Wasserstein distance (the mean absolute
difference of their quantiles), in grey levels, and averaged over channels.
"""

import numpy as np

from models.metrics import check_images

QUANTILES = 256  # points at which two distributions of different sizes are compared


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image and channel: `brightness` (mean) and `contrast` (standard deviation), each (N, C)."""
    pixels = images.reshape(len(images), -1, images.shape[3]).astype(np.float64)
    return {"brightness": pixels.mean(axis=1), "contrast": pixels.std(axis=1)}


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two samples of one statistic: the mean absolute difference of their quantiles."""
    q = (np.arange(QUANTILES) + 0.5) / QUANTILES
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def statistics_distance(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """{"brightness", "contrast"}: W1 in grey levels between the sets' per-image statistics."""
    check_images(real, "real images")
    check_images(fake, "generated images")
    a, b = image_statistics(real), image_statistics(fake)
    channels = min(real.shape[3], fake.shape[3])
    return {
        name: float(np.mean([wasserstein_1d(a[name][:, c], b[name][:, c]) for c in range(channels)]))
        for name in ("brightness", "contrast")
    }
