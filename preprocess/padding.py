"""What a crop shows where its square runs past the photo's edge: FFHQ's padding.

Reflection alone leaves mirror ghosts there: an upside-down chin under a face cut at the bottom, a
mirrored head beside one cut at the side. FFHQ (`recreate_aligned_images`) padded by reflection too,
then blurred the padded band and blended it towards the image's median colour, more the further from
the edge. Here, for every crop pixel, d is how far outside the photo its source point lies, in parts
of PAD (0.3 of the square's side, FFHQ's padding): the blurred crop replaces the sharp one from a
third of PAD inside the edge outwards, and the median colour of the photo's part of the crop takes
over linearly, fully at d = FADE. FFHQ blurred by 2% of the square and faded over the whole PAD; its
ghosts still show mirrored eyes close to the edge, so the blur here is stronger and the fade shorter
(tests/test_padding.py measures both).
"""

import cv2
import numpy as np

PAD = 0.3  # FFHQ's padding, in square sides: the unit of distance outside the photo
FADE = 0.5  # in PADs: the median colour is complete this far outside the photo
BLUR = 0.06  # Gaussian sigma of the padding's blur, in square sides (FFHQ: 0.02)


def photo_share(square: np.ndarray, height: int, width: int, samples: int = 16) -> float:
    """The part of the square that shows the photo (the rest is padding), from a grid of points."""
    t = (np.arange(samples) + 0.5) / samples
    a, b = np.meshgrid(t, t)
    points = square[0] + a[..., None] * (square[1] - square[0]) + b[..., None] * (square[3] - square[0])
    x, y = points[..., 0], points[..., 1]
    return float(((x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)).mean())


def runs_past(square: np.ndarray, height: int, width: int) -> bool:
    """Does the square reach outside the photo (whose pixels span -0.5 .. size - 0.5)?"""
    return bool((square.min(axis=0) < -0.5).any() or (square.max(axis=0) > (width - 0.5, height - 0.5)).any())


def fade_padding(crop: np.ndarray, to_crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """The crop (BGR uint8) with its padding blurred and faded to the median colour. `to_crop` is the
    2x3 matrix from photo pixels to crop pixels; the photo is height x width."""
    size = crop.shape[0]
    outside = _outside_distance(cv2.invertAffineTransform(to_crop), size, height, width)
    side_in_photo = 1.0 / float(np.hypot(*to_crop[0, :2])) * size  # the square's side, photo pixels
    d = outside / (PAD * side_in_photo)  # in PADs: < 0 inside the photo
    if d.max() <= 0:
        return crop
    image = crop.astype(np.float32)
    blurred = cv2.GaussianBlur(image, (0, 0), BLUR * size, borderType=cv2.BORDER_REFLECT_101)
    inside = d <= 0
    median = np.median(image[inside] if inside.any() else image.reshape(-1, 3), axis=0)
    blur_weight = np.clip(3.0 * d + 1.0, 0.0, 1.0)[:, :, None]
    median_weight = np.clip(d / FADE, 0.0, 1.0)[:, :, None]
    image += (blurred - image) * blur_weight
    image += (median - image) * median_weight
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _outside_distance(to_photo: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """For each crop pixel (size x size), how far outside the photo its source point lies, in photo
    pixels along the nearer axis (negative inside: the distance to the nearest edge)."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    x = to_photo[0, 0] * u + to_photo[0, 1] * v + to_photo[0, 2]
    y = to_photo[1, 0] * u + to_photo[1, 1] * v + to_photo[1, 2]
    return np.maximum.reduce([-0.5 - x, x - (width - 0.5), -0.5 - y, y - (height - 0.5)])
