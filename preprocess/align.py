"""Aligned square crops, the way the FFHQ dataset was made.

FFHQ (Karras et al., `ffhq-dataset/download_ffhq.py`, `recreate_aligned_images`): the eye-to-eye and
eye-to-mouth vectors define an oriented square. Its x axis is the eye-to-eye direction averaged with
the eye-to-mouth direction turned a quarter, so the face ends up level and upright; its side is the
larger of 2x the eye distance and 1.8x the eye-to-mouth distance; its centre sits a tenth of the
eye-to-mouth vector below the eyes. Every crop thus shows the face at the same place and scale.

Each crop is described by an affine matrix from original-image pixels to crop pixels (pixel centres
at integer coordinates), so boxes, landmarks and ground-truth points can be mapped exactly. The pixels
are resampled at the face's own resolution (bilinear) and then shrunk with INTER_AREA, which averages
rather than skips pixels. Where the square runs past the photo's edge, the crop is padded the way FFHQ
padded (preprocess/padding.py): no black bars, no mirrored features.
"""

import cv2
import numpy as np

from preprocess.detect import Face
from preprocess.haar import box_landmarks
from preprocess.padding import fade_padding, runs_past

# At most this many native pixels per output pixel are resampled bilinearly; bigger faces are first
# shrunk with INTER_AREA, so memory stays bounded for a face that fills a 60-megapixel photo.
MAX_OVERSAMPLE = 4


def canonical_eyes(size: int) -> np.ndarray:
    """Where the eyes of an upright frontal face land in a size x size crop, (2, 2) pixels, the person's
    right eye first. Exact while the eye-to-mouth distance is at most 1.11 eye distances (the square is
    then 4 eye distances wide, centred 0.1 eye-to-mouth distance below the eyes); faces with a longer
    eye-to-mouth distance are scaled by it instead, which moves their eyes inwards by about 0.5% of the
    crop's width per extra 10%."""
    fractions = np.array([[0.375, 0.475], [0.625, 0.475]])
    return fractions * size - 0.5  # fractions of the crop's width -> pixel centres


def ffhq_square(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ square from YuNet's five landmarks: its corners, (4, 2), top-left, top-right,
    bottom-right, bottom-left, in the image's pixel coordinates."""
    lm = np.asarray(landmarks, dtype=np.float64)
    # YuNet: 0 = person's right eye (viewer's left), 1 = left eye, 3/4 = right/left mouth corners.
    eye_left, eye_right = lm[0], lm[1]  # FFHQ names them from the viewer's side
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[3] + lm[4]) / 2
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # eye_to_mouth turned a quarter
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])  # x turned a quarter: "down" in the crop
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c + x - y, c + x + y, c - x + y])


def square_to_crop(square: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 affine matrix taking image pixels to pixels of a size x size crop of `square`.

    The square's corners are the crop's outer pixel edges, at -0.5 and size - 0.5.
    """
    src = np.float32(square[[0, 1, 3]])
    dst = np.float32([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5]])
    return cv2.getAffineTransform(src, dst).astype(np.float64)


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def face_square(face: Face, haar_margin: float = 0.0) -> np.ndarray:
    """FFHQ's square from the face's landmarks, or for a Haar face (no landmarks) from those an average
    face has in its box (`preprocess.haar.box_landmarks`). `haar_margin` is no longer used: Haar crops
    are framed like YuNet's."""
    return ffhq_square(face.landmarks if face.landmarks is not None else box_landmarks(face.box))


def crop_square(bgr: np.ndarray, square: np.ndarray, size: int) -> np.ndarray:
    """The square's pixels as a size x size BGR uint8 crop, padded FFHQ's way past the photo's edges."""
    side = float(np.hypot(*(square[1] - square[0])))
    native = max(size, int(round(side)))
    image, square = _shrink_if_huge(bgr, square, native / (MAX_OVERSAMPLE * size))
    native = min(native, MAX_OVERSAMPLE * size)
    matrix = square_to_crop(square, native)
    warped = cv2.warpAffine(
        image, matrix, (native, native), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    if native != size:
        warped = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    if runs_past(square, height, width):
        warped = fade_padding(warped, square_to_crop(square, size), height, width)
    return warped


def _shrink_if_huge(bgr: np.ndarray, square: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut out the square's surroundings and shrink them by `factor` with INTER_AREA (when factor > 1).

    Cutting at the image's edges keeps reflection there the same as on the whole image.
    """
    if factor <= 1:
        return bgr, square
    h, w = bgr.shape[:2]
    x0, y0 = np.maximum(np.floor(square.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(square.max(axis=0)).astype(int) + 3, (w, h))
    part = bgr[y0:y1, x0:x1]
    if part.size == 0:  # the square lies wholly outside the photo: it is all padding, nothing to shrink
        return bgr, square
    small = cv2.resize(
        part,
        (max(1, round(part.shape[1] / factor)), max(1, round(part.shape[0] / factor))),
        interpolation=cv2.INTER_AREA,
    )
    sx, sy = small.shape[1] / part.shape[1], small.shape[0] / part.shape[0]
    # Pixel centres: x_small + 0.5 = (x_part + 0.5) * scale.
    moved = (square - (x0, y0) + 0.5) * (sx, sy) - 0.5
    return small, moved


def blur_score(bgr: np.ndarray) -> float:
    """Variance of the Laplacian of the grey crop: low for blurry crops."""
    return float(cv2.Laplacian(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())
