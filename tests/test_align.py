"""Alignment on real photos: the pupils (hand-placed ground truth) land where canonical_eyes says, level,
within 1 px upright and 2 px when the photo is turned by 20 degrees either way, with YuNet and with
Haar."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess.align import canonical_eyes, crop_square, face_square, map_points, square_to_crop
from preprocess.config import PreprocessConfig
from preprocess.decode import load_image
from preprocess.detect import FaceDetector
from preprocess.pipeline import align_face

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
NEUTRAL = PHOTOS / "webmorph-neutral"
SIZE = 64
TOLERANCE = 2.0  # pixels at 64 x 64
UPRIGHT_TOLERANCE = 1.0  # for upright photos

pytestmark = pytest.mark.skipif(not NEUTRAL.is_dir(), reason=f"the shared photos are not at {PHOTOS}")


def pupil_truth() -> list[tuple[Path, np.ndarray]]:
    """(photo, its two pupils (2, 2), viewer's left first) for the 102 neutral photos."""
    with open(NEUTRAL / "pupils.csv") as f:
        rows = list(csv.DictReader(f))
    truth = []
    for r in rows:
        pupils = np.array(
            [[float(r["pupil1_x"]), float(r["pupil1_y"])], [float(r["pupil2_x"]), float(r["pupil2_y"])]]
        )
        truth.append((NEUTRAL / r["file"], pupils[np.argsort(pupils[:, 0])]))
    return truth


def rotate(bgr: np.ndarray, points: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = bgr.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(bgr, turn, (w, h), borderMode=cv2.BORDER_REFLECT_101), map_points(turn, points)


def pupils_in_crops(photos: list[tuple[Path, np.ndarray]], degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth pupils mapped into each photo's crop, (N, 2, 2): aligned with the refined eyes, and
    with YuNet's eye centres as they come."""
    config = PreprocessConfig(crop_size=SIZE)
    detector = FaceDetector(config)
    refined, plain = [], []
    for path, pupils in photos:
        bgr, pupils = rotate(load_image(path), pupils, degrees) if degrees else (load_image(path), pupils)
        faces = detector.detect(bgr)
        assert len(faces) == 1, f"{path.name} turned {degrees} degrees: {len(faces)} faces"
        _, aligned = align_face(config, bgr, faces[0], detector)
        refined.append(map_points(square_to_crop(face_square(aligned, 0), SIZE), pupils))
        plain.append(map_points(square_to_crop(face_square(faces[0], 0), SIZE), pupils))
    return np.array(refined), np.array(plain)


@pytest.fixture(scope="module")
def upright() -> tuple[np.ndarray, np.ndarray]:
    return pupils_in_crops(pupil_truth(), 0)


def check_pupils(mapped: np.ndarray, label: str, tolerance: float = TOLERANCE) -> None:
    off = np.linalg.norm(mapped - canonical_eyes(SIZE), axis=2)
    worst = off.max(axis=1)
    assert worst.max() <= tolerance, (
        f"{label}: {(worst > tolerance).sum()} photos off by up to {worst.max():.2f} px"
    )
    tilt = np.degrees(np.arctan2(mapped[:, 1, 1] - mapped[:, 0, 1], mapped[:, 1, 0] - mapped[:, 0, 0]))
    assert np.abs(tilt).max() <= 5, f"{label}: pupils tilted by up to {np.abs(tilt).max():.1f} degrees"
    summary = f"pupil offset mean {off.mean():.2f} px, p95 {np.percentile(off, 95):.2f}, max {off.max():.2f}"
    print(f"\n{label}: {summary}; tilt max {np.abs(tilt).max():.1f} deg")


def test_pupils_land_within_1px_of_the_canonical_positions_and_level(upright):
    refined, _ = upright
    assert len(refined) == 102
    check_pupils(refined, "upright", UPRIGHT_TOLERANCE)


@pytest.mark.parametrize("degrees", [20, -20])
def test_turned_photos_align_to_the_same_positions(degrees):
    # Every third photo keeps the test short; the upright test covers them all.
    refined, _ = pupils_in_crops(pupil_truth()[::3], degrees)
    check_pupils(refined, f"turned {degrees:+d} deg")


def test_refined_eyes_beat_yunets_eye_centres(upright):
    refined, plain = (np.linalg.norm(m - canonical_eyes(SIZE), axis=2) for m in upright)
    print(f"\nmean pupil offset: refined {refined.mean():.2f} px, YuNet eye centres {plain.mean():.2f} px")
    assert refined.mean() < plain.mean() and refined.max() < plain.max()


def test_haar_crops_put_the_pupils_at_the_canonical_positions_too():
    """Haar's boxes carry no landmarks: the eyes are placed in the box and the pupils found near them."""
    config = PreprocessConfig(crop_size=SIZE, detector="haar")
    detector = FaceDetector(config)
    mapped = []
    for path, pupils in pupil_truth()[::2]:
        bgr = load_image(path)
        faces = detector.detect(bgr)
        assert len(faces) == 1, f"{path.name}: {len(faces)} Haar faces"
        _, aligned = align_face(config, bgr, faces[0], detector)
        mapped.append(map_points(square_to_crop(face_square(aligned), SIZE), pupils))
    check_pupils(np.array(mapped), "Haar, upright")


@pytest.mark.parametrize("size", [32, 128])
def test_other_crop_sizes_keep_the_same_geometry(size):
    path, pupils = pupil_truth()[1]
    config = PreprocessConfig(crop_size=size)
    detector = FaceDetector(config)
    bgr = load_image(path)
    crop, aligned = align_face(config, bgr, detector.detect(bgr)[0], detector)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    mapped = map_points(square_to_crop(face_square(aligned, 0), size), pupils)
    assert np.linalg.norm(mapped - canonical_eyes(size), axis=1).max() <= TOLERANCE * size / SIZE


def test_crop_is_the_squares_content_resized_with_inter_area():
    """An axis-aligned square at 4x the crop size: the crop equals OpenCV's INTER_AREA of that region."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    # Pixel edges: pixel i spans i - 0.5 .. i + 0.5, so this square covers pixels 100..355 and 60..315.
    square = np.array([[99.5, 59.5], [355.5, 59.5], [355.5, 315.5], [99.5, 315.5]])
    crop = crop_square(bgr, square, 64)
    expected = cv2.resize(bgr[60:316, 100:356], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - expected).max() <= 1


def test_a_big_square_wholly_outside_the_photo_gives_a_padded_crop_not_an_error():
    """A square far larger than the crop (shrunk before warping) that misses the photo altogether: all
    padding, which the stage then turns down for its photo share, instead of failing the photo."""
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (256, 56, 3), dtype=np.uint8)
    square = np.array([[400.0, 300.0], [1000.0, 300.0], [1000.0, 900.0], [400.0, 900.0]])
    crop = crop_square(bgr, square, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
