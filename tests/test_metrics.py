"""Quality metrics on real face crops: SWD against its noise floor, MS-SSIM diversity, memorisation."""

import numpy as np
import pytest

from common.report import BadInputError
from models.fid_kid import fid_kid
from models.memorisation import memorisation
from models.metrics import sliced_wasserstein, split_halves, swd_noise_floor
from models.ms_ssim import ms_ssim, ms_ssim_diversity, ms_ssim_scales
from tests.photo_crops import face_crops


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
    a, b = a[:50], b[:50]
    shifted = np.clip(b.astype(int) + [40, -20, -20], 0, 255).astype(np.uint8)
    assert sliced_wasserstein(a, shifted, seed=1)["mean"] == pytest.approx(
        sliced_wasserstein(a, b, seed=1)["mean"], rel=0.15
    )


def test_swd_is_reproducible_for_a_seed_and_uses_equal_counts(halves):
    a, b = halves
    first = sliced_wasserstein(a, b[:40], seed=4)
    assert first == sliced_wasserstein(a, b[:40], seed=4)
    assert first["images"] == 40


def test_swd_on_a_torch_device_gives_the_numpy_figures(halves):
    a, b = halves
    numpy_result = sliced_wasserstein(a[:8], b[:8], seed=6)
    torch_result = sliced_wasserstein(a[:8], b[:8], seed=6, device="cpu")  # the path CUDA takes
    assert torch_result["levels"] == pytest.approx(numpy_result["levels"], rel=1e-4)


def test_swd_rejects_images_that_are_not_uint8_nhwc():
    floats = face_crops(32)[:8].astype(np.float32) / 255
    with pytest.raises(BadInputError, match="uint8"):
        sliced_wasserstein(floats, floats)
    with pytest.raises(BadInputError, match="generated"):
        sliced_wasserstein(face_crops(32)[:8], face_crops(64)[:8])


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    crops = face_crops()[:6]
    rng = np.random.default_rng(0)
    noisy = np.clip(crops.astype(int) + rng.normal(0, 25, crops.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(crops, crops) == pytest.approx(np.ones(6), abs=1e-5)
    scores = ms_ssim(crops, noisy)
    assert np.all(scores < 0.95) and np.all(scores > 0.3)
    assert ms_ssim(crops, crops[::-1].copy())[0] < scores[0]  # another face is further than a noisy copy


def test_ms_ssim_keeps_as_many_standard_scales_as_the_image_allows():
    assert [ms_ssim_scales(s) for s in (32, 64, 128, 256)] == [2, 3, 4, 5]
    with pytest.raises(BadInputError, match="at least 11 px"):
        ms_ssim_scales(8)


def test_diversity_is_one_for_a_collapsed_set_lower_for_real_faces_lowest_for_noise():
    crops = face_crops()
    collapsed = ms_ssim_diversity(np.repeat(crops[:1], 32, axis=0))
    faces = ms_ssim_diversity(crops[::6])  # 34 different portraits
    noise = ms_ssim_diversity(np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8))
    assert collapsed["mean"] == pytest.approx(1.0, abs=1e-5)
    assert noise["mean"] < faces["mean"] < 0.9
    assert faces["pairs"] == 34 * 33 // 2 and faces["scales"] == 3
    assert ms_ssim_diversity(crops, max_pairs=100)["pairs"] == 100


def test_memorisation_finds_copied_training_crops_and_gives_the_real_baseline():
    crops = face_crops()
    copied = np.clip(crops[[5, 50, 150]].astype(int) + 2, 0, 255).astype(np.uint8)  # near-copies
    result = memorisation(copied, crops)
    assert result["nearest_index"] == [5, 50, 150]
    assert max(result["nearest_rms"]) < 3
    assert result["real_to_real_rms"] > 10 * max(result["nearest_rms"])
    # Unseen faces: as far from the training crops as real crops are from each other.
    unseen = memorisation(crops[:16], crops[16:])
    assert unseen["median_rms"] > 0.5 * unseen["real_to_real_rms"]


def test_fid_needs_an_existing_weights_file_and_says_which(tmp_path):
    crops = face_crops(32)[:4]
    with pytest.raises(BadInputError, match="no such file"):
        fid_kid(crops, crops, tmp_path / "missing.pth")
    garbage = tmp_path / "inception.pth"
    garbage.write_bytes(b"not a checkpoint")
    # Without torchmetrics: says to install it; with it: says the file is not Inception weights.
    with pytest.raises(BadInputError, match="torchmetrics|torch-fidelity|could not load"):
        fid_kid(crops, crops, garbage)
