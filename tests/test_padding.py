"""FFHQ-style padding: a face near the photo's edge gives a crop whose padding holds no black bars, no
second (mirrored) face and little fine detail, where plain reflection shows a mirrored face."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess.align import face_square, map_points, square_to_crop
from preprocess.config import PreprocessConfig
from preprocess.decode import load_image
from preprocess.detect import FaceDetector
from preprocess.photo import align_face
from preprocess.verify import HaarCheck

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "webmorph-neutral"
NAMES = ["001_03.jpg", "034_03.jpg", "117_03.jpg"]
SIZE = 128

pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the shared photos are not at {PHOTOS}")


def cut_near_the_face(bgr: np.ndarray, box: tuple, side: str) -> np.ndarray:
    """The photo cut so that the face's square runs well past the new edge."""
    x, y, w, h = (int(v) for v in box)
    cuts = {
        "left": bgr[:, x + w // 6 :],
        "right": bgr[:, : x + w * 5 // 6],
        "top": bgr[y + h // 10 :],
        "bottom": bgr[: y + h * 17 // 20],
    }
    return np.ascontiguousarray(cuts[side])


def padding_mask(photo: np.ndarray, to_crop: np.ndarray) -> np.ndarray:
    """Crop pixels whose source lies more than a pixel outside the photo."""
    v, u = np.mgrid[0:SIZE, 0:SIZE]
    source = map_points(cv2.invertAffineTransform(to_crop), np.stack([u.ravel(), v.ravel()], axis=1))
    h, w = photo.shape[:2]
    outside = np.maximum.reduce([-source[:, 0] - 1.5, source[:, 0] - w - 0.5, -source[:, 1] - 1.5,
                                 source[:, 1] - h - 0.5])  # fmt: skip
    return (outside > 0).reshape(SIZE, SIZE)


def fine_detail(crop: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute difference from a slightly blurred copy, over `where`."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.5))[where].mean())


def faces_in(crop: np.ndarray, detector: FaceDetector, where: np.ndarray) -> int:
    """YuNet's faces (at a low threshold) whose centre lies in `where`."""
    b = 16
    framed = cv2.copyMakeBorder(crop, b, b, b, b, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    centres = [
        (f.box[0] + f.box[2] / 2 - b, f.box[1] + f.box[3] / 2 - b) for f in detector.detect_as_is(framed)
    ]
    return sum(bool(where[int(np.clip(y, 0, SIZE - 1)), int(np.clip(x, 0, SIZE - 1))]) for x, y in centres)


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
def test_a_face_at_the_edge_has_no_ghost_in_its_padding(side):
    config = PreprocessConfig(crop_size=SIZE)
    detector = FaceDetector(config)
    loose = FaceDetector(PreprocessConfig(score_threshold=0.3))
    haar = HaarCheck.any_framing()
    for name in NAMES:
        photo = load_image(PHOTOS / name)
        cut = cut_near_the_face(photo, detector.detect(photo)[0].box, side)
        crop, aligned = align_face(config, cut, detector.detect(cut)[0], detector)
        to_crop = square_to_crop(face_square(aligned), SIZE)
        padded = padding_mask(cut, to_crop)
        assert padded.mean() > 0.1, f"{name} {side}: the square should run well past the edge"
        assert (crop[padded].max(axis=1) < 16).mean() < 0.01, "black bars where the photo ends"
        reflected = cv2.warpAffine(
            cut, to_crop, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101
        )
        photo_part = ~padding_mask(cut, to_crop)
        # Plain reflection mirrors the face's detail into the padding; FFHQ's padding smooths it away.
        assert fine_detail(crop, padded) < 0.15 * fine_detail(crop, photo_part), f"{name} {side}"
        assert fine_detail(crop, padded) < 0.2 * fine_detail(reflected, padded), f"{name} {side}"
        assert faces_in(crop, loose, padded) == 0, f"{name} {side}: a face in the padding"
        assert haar.confirms(crop), f"{name} {side}: the face itself is still a face"


def test_reflection_alone_would_show_a_mirrored_face():
    """The check above can fail: with plain reflection a face cut at its side gets a mirrored twin."""
    detector = FaceDetector(PreprocessConfig(crop_size=SIZE))
    loose = FaceDetector(PreprocessConfig(score_threshold=0.3))
    photo = load_image(PHOTOS / NAMES[0])
    cut = cut_near_the_face(photo, detector.detect(photo)[0].box, "left")
    _, aligned = align_face(PreprocessConfig(crop_size=SIZE), cut, detector.detect(cut)[0], detector)
    to_crop = square_to_crop(face_square(aligned), SIZE)
    reflected = cv2.warpAffine(
        cut, to_crop, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101
    )
    assert faces_in(reflected, loose, padding_mask(cut, to_crop)) >= 1
