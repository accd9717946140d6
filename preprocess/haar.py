"""OpenCV's Haar frontal-face cascade as a detector: one box per face, and eyes placed in the box.

The cascade reports one face at several scales now and then (two nested boxes); boxes that overlap by
more than half of the smaller one are merged into the one with the most raw windows. It gives no
landmarks, but on frontal faces its boxes sit at a steady place around the eyes: over the 102 neutral
webmorph photos the pupils lie at 0.302 and 0.703 of the box's width and 0.396 of its height, each with
a spread (standard deviation) of 0.017 box widths. `box_landmarks` puts the eyes there, and the nose
and mouth where an average face has them, so a Haar face is aligned like a YuNet one (and its eyes
are refined the same way, preprocess/landmarks.py).
"""

from pathlib import Path

import cv2
import numpy as np

from common.report import BadInputError

HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_MIN_SIZE = 24  # the cascade's own window: smaller faces cannot be found on the working copy
SAME_FACE_OVERLAP = 0.5  # boxes sharing more than this part of the smaller one are one face
EYE_X = (0.302, 0.703)  # pupils, as parts of the box's width (the person's right eye first)
EYE_Y = 0.396  # and of its height
NOSE_DROP, MOUTH_DROP, MOUTH_HALF_WIDTH = 0.6, 1.0, 0.42  # in eye distances, for FFHQ's square


def load_cascade(name: str = HAAR_FILE) -> cv2.CascadeClassifier:
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / name))
    if cascade.empty():
        raise BadInputError(f"OpenCV's {name} failed to load: reinstall opencv-python-headless")
    return cascade


def haar_boxes(
    cascade: cv2.CascadeClassifier, bgr: np.ndarray, min_side: int, min_neighbors: int
) -> list[tuple[tuple[float, float, float, float], int]]:
    """(box, raw windows merged into it) for each face, nested and overlapping boxes merged."""
    grey = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    boxes, neighbours = cascade.detectMultiScale2(
        grey, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(min_side, min_side)
    )
    boxes = [tuple(map(float, b)) for b in np.asarray(boxes).reshape(-1, 4)]
    found = sorted(zip(boxes, np.asarray(neighbours).ravel(), strict=True), key=lambda item: -item[1])
    kept: list[tuple[tuple[float, float, float, float], int]] = []
    for box, n in found:
        if all(_overlap(box, other) <= SAME_FACE_OVERLAP for other, _ in kept):
            kept.append((box, int(n)))
    return kept


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return 0.0 if w <= 0 or h <= 0 else w * h / min(a[2] * a[3], b[2] * b[3])


def box_landmarks(box: tuple[float, float, float, float]) -> np.ndarray:
    """Five landmarks in YuNet's order for an upright frontal face in a Haar box: the eyes where the
    cascade's boxes put them, the nose and mouth corners where an average face has them."""
    x, y, w, h = box
    right_eye = np.array([x + EYE_X[0] * w, y + EYE_Y * h])
    left_eye = np.array([x + EYE_X[1] * w, y + EYE_Y * h])
    return landmarks_from_eyes(right_eye, left_eye)


def landmarks_from_eyes(right_eye: np.ndarray, left_eye: np.ndarray) -> np.ndarray:
    """Nose and mouth corners of an average face below two eyes: FFHQ's square then puts the eyes
    exactly at `canonical_eyes`."""
    along = left_eye - right_eye
    down = np.array([-along[1], along[0]])  # a quarter turn: towards the chin
    centre = (right_eye + left_eye) / 2
    mouth = centre + MOUTH_DROP * down
    return np.stack(
        [
            right_eye,
            left_eye,
            centre + NOSE_DROP * down,
            mouth - MOUTH_HALF_WIDTH * along,
            mouth + MOUTH_HALF_WIDTH * along,
        ]
    )
