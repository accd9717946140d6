"""A second opinion on every face, from a detector that does not share the first one's blind spots.

YuNet, a small convolutional network, now and then takes a hand, a tuft of hair or wood grain for a
face, and a second look with the same network agrees with it. Two checks of other kinds follow:

- Geometry (YuNet faces): the five landmarks must sit the way a face's do, measured in eye distances
  from the eyes' midpoint along and across the eye line: nose and mouth below the eyes and between
  them, the mouth about as wide as the eyes are apart and level with them. The bounds are far wider
  than the 204 webmorph faces need (a face turned 45 degrees still passes); the boxes YuNet proposes on
  hair, cats and textures often fail them.
- The other detector, on the aligned face (the 64x64 crop, where the face's place and size are known):
  for a YuNet face, OpenCV's Haar cascade `haarcascade_frontalface_alt2` (boosted Haar-like features,
  not a neural network) must find a face of the expected size at the expected place; for a Haar face,
  YuNet must. Looking at one place and a few sizes costs about a millisecond.

tests/test_face_negatives.py holds the measurements: every webmorph face is kept, none of the boxes
YuNet proposes on the negative set (scikit-image's sample photographs, and hair, shoulders and
background cut from the webmorph photos) is.
"""

import cv2
import numpy as np

from preprocess.config import PreprocessConfig
from preprocess.detect import FaceDetector
from preprocess.haar import load_cascade

VIEW = 64  # side of the aligned view the detectors look at (the crop itself at crop_size 64)
CONFIRM_CASCADE = "haarcascade_frontalface_alt2.xml"
# On aligned views the cascade's face is 0.66 of the square wide, centred 0.03 below its middle.
HAAR_SIZES = (0.55, 0.8)  # face sizes looked for, in square sides
HAAR_CENTRE = (0.5, 0.53)  # where the face's centre should be, in square sides
HAAR_OFF_CENTRE = 0.15  # and how far from there it may be
HAAR_NEIGHBOURS = 2
YUNET_BORDER = 8  # YuNet wants a little room around a face: the view gets a replicated border
# Landmark geometry, in eye distances from the eyes' midpoint (x along the eye line, y towards the chin).
GEOMETRY = {
    "nose x": (-0.6, 0.6),
    "nose y": (0.25, 1.1),
    "mouth x": (-0.45, 0.45),
    "mouth y": (0.6, 1.7),
    "mouth width": (0.45, 1.3),
    "mouth tilt": (-20.0, 20.0),  # degrees against the eye line
}


def landmark_geometry(landmarks: np.ndarray) -> dict[str, float]:
    """The measures GEOMETRY bounds, for landmarks (5, 2) in YuNet's order."""
    right_eye, left_eye, nose, mouth_right, mouth_left = np.asarray(landmarks, dtype=np.float64)
    along = left_eye - right_eye
    distance = max(float(np.hypot(*along)), 1e-6)
    ex = along / distance
    ey = np.array([-ex[1], ex[0]])
    centre = (right_eye + left_eye) / 2
    mouth = (mouth_right + mouth_left) / 2
    mouth_line = mouth_left - mouth_right
    return {
        "nose x": float((nose - centre) @ ex) / distance,
        "nose y": float((nose - centre) @ ey) / distance,
        "mouth x": float((mouth - centre) @ ex) / distance,
        "mouth y": float((mouth - centre) @ ey) / distance,
        "mouth width": float(np.hypot(*mouth_line)) / distance,
        "mouth tilt": float(np.degrees(np.arctan2(mouth_line @ ey, mouth_line @ ex))),
    }


def implausible_geometry(landmarks: np.ndarray) -> str | None:
    """What about the landmarks no face has, or None."""
    for name, value in landmark_geometry(landmarks).items():
        low, high = GEOMETRY[name]
        if not low <= value <= high:
            return f"landmarks unlike a face ({name} {value:.2f}, faces have {low} to {high})"
    return None


class HaarCheck:
    """OpenCV's Haar cascade (alt2) on a square crop: is there a face where the alignment put one?

    By default the crop is FFHQ-aligned (the face's place and size are known, so few windows are
    looked at); `HaarCheck.any_framing()` accepts any square from a tight one (2.4 pupil distances
    wide) to FFHQ's (4), given a replicated border, for crops that were cut some other way."""

    def __init__(
        self,
        sizes: tuple[float, float] = HAAR_SIZES,
        centre: tuple[float, float] = HAAR_CENTRE,
        off_centre: float = HAAR_OFF_CENTRE,
        border: float = 0.0,
    ) -> None:
        self._cascade = load_cascade(CONFIRM_CASCADE)
        self.sizes, self.centre, self.off_centre, self.border = sizes, centre, off_centre, border

    @classmethod
    def any_framing(cls) -> "HaarCheck":
        return cls(sizes=(0.45, 1.2), centre=(0.5, 0.5), off_centre=0.2, border=0.125)

    def confirms(self, view: np.ndarray) -> bool:
        """`view`: a square crop (BGR uint8), any size; looked at as VIEW x VIEW."""
        if view.shape[0] != VIEW:
            interpolation = cv2.INTER_AREA if view.shape[0] > VIEW else cv2.INTER_LINEAR
            view = cv2.resize(view, (VIEW, VIEW), interpolation=interpolation)
        b = int(round(self.border * VIEW))
        if b:
            view = cv2.copyMakeBorder(view, b, b, b, b, cv2.BORDER_REPLICATE)
        grey = cv2.equalizeHist(cv2.cvtColor(view, cv2.COLOR_BGR2GRAY))
        smallest, largest = (int(round(s * VIEW)) for s in self.sizes)
        boxes, _ = self._cascade.detectMultiScale2(
            grey, 1.1, HAAR_NEIGHBOURS, minSize=(smallest, smallest), maxSize=(largest, largest)
        )
        centre = np.array(self.centre) * VIEW + b
        return any(
            np.abs(np.array([x + w / 2, y + h / 2]) - centre).max() <= self.off_centre * VIEW
            for x, y, w, h in np.asarray(boxes).reshape(-1, 4)
        )


class SecondOpinion:
    """The checks above for the faces of one detector configuration. Not thread-safe."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.detector = config.detector
        self._haar = HaarCheck() if config.detector == "yunet" else None
        self._yunet = None
        if config.detector == "haar":
            side = VIEW + 2 * YUNET_BORDER
            yunet = config.model_copy(
                update={"detector": "yunet", "working_size": side, "min_face_size": 1, "max_faces": 1}
            )
            self._yunet = FaceDetector(yunet)

    def doubt(self, view: np.ndarray, landmarks: np.ndarray) -> str | None:
        """Why the aligned view (and for YuNet faces the landmarks it was aligned by) is not a face,
        or None."""
        if self._haar is not None:
            if problem := implausible_geometry(landmarks):
                return problem
            return None if self._haar.confirms(view) else "the Haar cascade finds no face there"
        b = YUNET_BORDER
        framed = cv2.copyMakeBorder(cv2.resize(view, (VIEW, VIEW)), b, b, b, b, cv2.BORDER_REPLICATE)
        return None if self._yunet.detect(framed) else "YuNet finds no face there"
