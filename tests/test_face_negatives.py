"""No non-face reaches the dataset: the boxes YuNet proposes on photos without a face are turned down by
the second opinion (preprocess/verify.py) and by validate's re-check, while the faces in the shared
photos are kept.

The negative set: scikit-image's sample photographs (CC0 or public domain, each one's licence is in
its skimage.data docstring): a cat, coffee, a rocket, bricks, grass, gravel, a horse, a clock, cells,
the Hubble deep field, the astronaut's suit, helmet and rocket with her face cut away, and the
cameraman's gloved hands, camera and tripod with his head cut away; and from the shared photos (CC BY
4.0), the hair above the brows, the shoulders below the chin and the background beside the head. Each at
three scales, upright, turned a quarter and upside down. (Not skimage's coins: one shows a head in
relief, which both detectors take for a face, and which is one.)
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.layout import DataRoot
from preprocess.config import PreprocessConfig
from preprocess.decode import open_image
from preprocess.detect import Face, FaceDetector
from preprocess.photo import check_face, face_crops
from preprocess.pipeline import _tools, preprocess
from tests.preprocess_data import add_raw_files
from validate.checks import FaceRechecker

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) ships the negatives")
img_as_ubyte = pytest.importorskip("skimage.util").img_as_ubyte
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
ALL_PHOTOS = sorted(PHOTOS.glob("webmorph-*/*.jpg"))
SAMPLES = [
    "chelsea",
    "coffee",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "horse",
    "clock",
    "cell",
    "hubble_deep_field",
]
LOW_THRESHOLD = 0.3  # YuNet's own threshold is 0.7: this lets it propose far more non-faces

pytestmark = pytest.mark.skipif(not ALL_PHOTOS, reason=f"the shared photos are not at {PHOTOS}")


def bgr(rgb: np.ndarray) -> np.ndarray:
    rgb = img_as_ubyte(rgb)
    rgb = rgb if rgb.ndim == 3 else np.repeat(rgb[:, :, None], 3, axis=2)
    return np.ascontiguousarray(rgb[:, :, 2::-1])


def without_faces() -> dict[str, np.ndarray]:
    """The negative set's base images, BGR."""
    images = {name: bgr(getattr(skimage_data, name)()) for name in SAMPLES}
    astronaut, camera = bgr(skimage_data.astronaut()), bgr(skimage_data.camera())
    images |= {"astronaut suit": astronaut[250:], "astronaut rocket": astronaut[:250, 340:]}
    images |= {"cameraman's hands": camera[120:400, 300:], "cameraman's coat": camera[230:, :300]}
    detector = FaceDetector(PreprocessConfig())
    for path in ALL_PHOTOS[::17]:
        photo = cv2.imread(str(path))
        x, y, w, h = (int(v) for v in detector.detect(photo)[0].box)
        images |= {
            f"{path.stem} hair": photo[: y + h // 8],
            f"{path.stem} shoulders": photo[y + h + 4 :],
            f"{path.stem} right": photo[:, x + w + 4 :],
        }
    return images


def variants(image: np.ndarray) -> list[np.ndarray]:
    """Three scales, each upright, turned a quarter and upside down."""
    out = []
    for scale in (0.5, 1.0, 2.0):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        scaled = cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation)
        if min(scaled.shape[:2]) >= 48:
            out += [scaled, cv2.rotate(scaled, cv2.ROTATE_90_CLOCKWISE), cv2.rotate(scaled, cv2.ROTATE_180)]
    return out


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


@pytest.fixture(scope="module")
def negatives() -> list[np.ndarray]:
    return [v for image in without_faces().values() for v in variants(image)]


@pytest.fixture(scope="module")
def proposals(negatives) -> list[tuple[np.ndarray, Face]]:
    """Every box YuNet proposes on the negative set at a low threshold, with its image."""
    detector = FaceDetector(PreprocessConfig(score_threshold=LOW_THRESHOLD, min_face_size=24))
    return [(image, face) for image in negatives for face in detector.detect(image)]


def test_every_box_yunet_proposes_on_the_negative_set_is_turned_down(proposals):
    assert len(proposals) >= 30, f"YuNet proposed {len(proposals)} boxes: the set no longer tests anything"
    config = PreprocessConfig(score_threshold=LOW_THRESHOLD, min_face_size=24)
    tools = _tools(config)
    accepted = [face.score for image, face in proposals if check_face(config, image, face, *tools)[2] is None]
    assert accepted == [], f"{len(accepted)} of {len(proposals)} non-faces accepted (YuNet scores {accepted})"


def test_validates_recheck_turns_them_down_too(proposals):
    """The crops the proposals would give, aligned but not second-guessed, as validate sees them."""
    config = PreprocessConfig(score_threshold=LOW_THRESHOLD, min_face_size=24)
    rechecker = FaceRechecker()
    scores = [
        rechecker.score(check_face(config, image, face, *_tools(config))[0]) for image, face in proposals
    ]
    assert max(scores) < 0.5, f"validate's re-check passes {sum(s >= 0.5 for s in scores)} non-faces"


def test_at_the_stages_own_settings_the_negative_set_gives_no_crop(tmp_path, negatives):
    root = DataRoot(tmp_path)
    add_raw_files(root, [jpeg(image) for image in negatives[::2]])
    report = preprocess(PreprocessConfig(workers=1), root)
    assert report.counts["faces"] == 0 and report.counts["errors"] == 0, report.notes


def test_the_shared_faces_are_kept_upright_and_turned():
    config = PreprocessConfig()
    tools = _tools(config)
    rechecker = FaceRechecker()
    kept = confirmed = 0
    photos = ALL_PHOTOS[::6]
    for path in photos:
        photo = cv2.imread(str(path))
        for degrees in (0, 20, -20):
            turn = cv2.getRotationMatrix2D((256, 256), degrees, 1.0)
            turned = cv2.warpAffine(photo, turn, (512, 512), borderMode=cv2.BORDER_REFLECT_101)
            found, doubts = face_crops(config, open_image(jpeg(turned)), *tools)
            assert not doubts, f"{path.name} turned {degrees}: {doubts}"
            kept += len(found)
            confirmed += sum(rechecker.score(f.crop) >= 0.5 for f in found)
    assert kept == confirmed == 3 * len(photos)
