"""Quality metrics on real face crops: SWD against its noise floor, MS-SSIM diversity, memorisation."""

import csv
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.report import BadInputError
from models.metrics import sliced_wasserstein, split_halves, swd_noise_floor

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"


@cache
def _face_crops(size: int) -> np.ndarray:
    """Eye-aligned crops of the 204 shared portraits (both expressions share one pupil table)."""
    pupils = {}
    with open(PHOTOS / "webmorph-neutral" / "pupils.csv") as f:
        for row in csv.DictReader(f):
            keys = ("pupil1_x", "pupil1_y", "pupil2_x", "pupil2_y")
            pupils[row["file"].split("_")[0]] = [float(row[k]) for k in keys]
    crops = []
    for path in sorted(PHOTOS.glob("webmorph-*/*.jpg")):
        x1, y1, x2, y2 = pupils[path.name.split("_")[0]]
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 2.4 * abs(x2 - x1)
        box = (cx - side / 2, cy - 0.4 * side, cx + side / 2, cy + 0.6 * side)
        with Image.open(path) as im:
            crops.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR, box=box)))
    return np.stack(crops)


def face_crops(size: int = 64) -> np.ndarray:
    """(204, size, size, 3) uint8 real face crops; a fresh copy so tests cannot spoil each other's."""
    return _face_crops(size).copy()


def colour_cast(images: np.ndarray, strength: int, seed: int) -> np.ndarray:
    """A random colour cast per image, as a set shot under mixed lighting would have."""
    shift = np.random.default_rng(seed).integers(-strength, strength + 1, (len(images), 1, 1, 3))
    return np.clip(images.astype(int) + shift, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def halves() -> tuple[np.ndarray, np.ndarray]:
    return split_halves(face_crops(), seed=0)


def test_swd_orders_same_set_colour_cast_and_noise_against_the_noise_floor(halves):
    a, b = halves
    floor = swd_noise_floor(face_crops(), seed=0)
    same = sliced_wasserstein(a, a, seed=1)  # same images, other random patches and directions
    cast = sliced_wasserstein(a, colour_cast(b, 80, seed=2), seed=1)
    noise = sliced_wasserstein(a, np.random.default_rng(3).integers(0, 256, b.shape, dtype=np.uint8), seed=1)

    assert floor["resolutions"] == [64, 32, 16] and len(floor["levels"]) == 3
    assert floor["images"] == 102
    assert same["mean"] < 1.25 * floor["mean"]
    assert cast["mean"] > 2 * floor["mean"]
    assert noise["mean"] > 2 * cast["mean"]
    # Noise is far off at every scale, not only on average.
    assert all(n > 2 * f for n, f in zip(noise["levels"], floor["levels"], strict=True))
    assert floor["mean"] == pytest.approx(np.mean(floor["levels"]))


def test_swd_ignores_a_uniform_colour_shift_as_progan_does(halves):
    """Each descriptor set is normalised per channel on its own, so a shift of the whole set vanishes."""
    a, b = halves
    shifted = np.clip(b.astype(int) + [40, -20, -20], 0, 255).astype(np.uint8)
    assert sliced_wasserstein(a, shifted, seed=1)["mean"] == pytest.approx(
        sliced_wasserstein(a, b, seed=1)["mean"], rel=0.15
    )


def test_swd_is_reproducible_for_a_seed_and_uses_equal_counts(halves):
    a, b = halves
    first = sliced_wasserstein(a, b[:40], seed=4)
    assert first == sliced_wasserstein(a, b[:40], seed=4)
    assert first["images"] == 40


def test_swd_rejects_images_that_are_not_uint8_nhwc():
    floats = face_crops(32)[:8].astype(np.float32) / 255
    with pytest.raises(BadInputError, match="uint8"):
        sliced_wasserstein(floats, floats)
    with pytest.raises(BadInputError, match="generated"):
        sliced_wasserstein(face_crops(32)[:8], face_crops(64)[:8])
