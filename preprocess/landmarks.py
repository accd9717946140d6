"""Sharper eye landmarks, so that the pupils, not just the eyes, land at the same place in every crop.

YuNet's eye landmarks are rough eye centres found on a possibly tilted face; measured against
hand-placed pupils (webmorph, 102 faces) they are off by 0.8 px on average and up to 3 px in a 64 px
crop, more on faces turned 20 degrees. Two steps bring that to 0.5 px on average and under 1.5 px:

1. Upright pass: look at the face again through a level, face-sized view (the FFHQ square, twice as
   wide, at 256 px) and through its mirror image, and average the two sets of landmarks (the mirror
   cancels the detector's left-right bias; the level view removes its bias on tilted faces).
2. Pupils: near each eye, find the centre that most image gradients point away from (the dark iris
   against the white of the eye), after Timm and Barth, "Accurate eye centre localisation by means of
   gradients" (2011), weighted towards dark pixels and towards YuNet's estimate.
"""

import cv2
import numpy as np

from preprocess.align import ffhq_square, map_points, square_to_crop
from preprocess.detect import FaceDetector

VIEW = 256  # side of the upright views, in pixels
CONTEXT = 2.0  # the upright pass sees the FFHQ square this many times wider, as a detector expects
EYE_WINDOW = 14  # pupil search: this many view pixels around the eye estimate, each way (3.5 px at 64)
EYE_PRIOR = 12.0  # pupil search: Gaussian weight (view pixels) towards the eye estimate
MIRROR = [1, 0, 2, 4, 3]  # YuNet's landmark order seen in a mirror: the eyes and mouth corners swap


def refine_landmarks(bgr: np.ndarray, landmarks: np.ndarray, detector: FaceDetector) -> np.ndarray:
    """YuNet landmarks (5, 2) in image pixels -> the same, with better eye points (see module doc)."""
    landmarks = upright_landmarks(bgr, landmarks, detector)
    refined = landmarks.copy()
    refined[:2] = find_pupils(bgr, landmarks)
    return refined


def upright_landmarks(bgr: np.ndarray, landmarks: np.ndarray, detector: FaceDetector) -> np.ndarray:
    square = ffhq_square(landmarks)
    centre = square.mean(axis=0)
    to_view = square_to_crop(centre + (square - centre) * CONTEXT, VIEW)
    view = cv2.warpAffine(
        bgr, to_view, (VIEW, VIEW), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    found = _central_landmarks(view, detector)
    mirrored = _central_landmarks(np.ascontiguousarray(view[:, ::-1]), detector)
    if found is None or mirrored is None:
        return landmarks  # the face is hard to see upright: keep the first estimate
    mirrored = mirrored[MIRROR]
    mirrored[:, 0] = VIEW - 1 - mirrored[:, 0]
    return map_points(cv2.invertAffineTransform(to_view), (found + mirrored) / 2)


def _central_landmarks(view: np.ndarray, detector: FaceDetector) -> np.ndarray | None:
    faces = [f for f in detector.detect_as_is(view) if f.landmarks is not None]
    if not faces:
        return None
    centre = np.array([VIEW / 2, VIEW / 2])
    nearest = min(faces, key=lambda f: np.hypot(*(np.add(f.box[:2], np.divide(f.box[2:], 2)) - centre)))
    return nearest.landmarks


def find_pupils(bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The two pupil centres (2, 2) in image pixels, searched near YuNet's eye points."""
    to_view = square_to_crop(ffhq_square(landmarks), VIEW)
    view = cv2.warpAffine(
        bgr, to_view, (VIEW, VIEW), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    grey = cv2.cvtColor(view, cv2.COLOR_BGR2GRAY)
    pupils = [_pupil_near(grey, eye) for eye in map_points(to_view, landmarks[:2])]
    return map_points(cv2.invertAffineTransform(to_view), np.array(pupils))


def _pupil_near(grey: np.ndarray, eye: np.ndarray) -> np.ndarray:
    x0, y0 = (int(round(v)) - EYE_WINDOW for v in eye)
    x0, y0 = min(max(x0, 0), VIEW - 2 * EYE_WINDOW - 1), min(max(y0, 0), VIEW - 2 * EYE_WINDOW - 1)
    patch = grey[y0 : y0 + 2 * EYE_WINDOW + 1, x0 : x0 + 2 * EYE_WINDOW + 1]
    score = _gradient_centre_score(patch)
    ys, xs = np.mgrid[0 : patch.shape[0], 0 : patch.shape[1]]
    score *= np.exp(-((xs + x0 - eye[0]) ** 2 + (ys + y0 - eye[1]) ** 2) / (2 * EYE_PRIOR**2))
    y, x = np.unravel_index(np.argmax(score), score.shape)
    return np.array([x + x0, y + y0], dtype=np.float64)


def _gradient_centre_score(patch: np.ndarray) -> np.ndarray:
    """For every pixel c: mean over strong gradients g at x of max(0, (x - c)/|x - c| . g/|g|)^2,
    times darkness at c. Peaks at the centre of a dark disc (the iris) on a lighter background.
    Only the darker half of the pixels are candidates (a pupil is never in the lighter half)."""
    g = patch.astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.hypot(gx, gy)
    strong = magnitude > magnitude.mean() + 0.5 * magnitude.std()
    darkness = 255.0 - cv2.GaussianBlur(g, (5, 5), 0)
    candidates = darkness >= np.median(darkness)
    score = np.zeros_like(g)
    if not strong.any():
        return score + darkness
    py, px = np.nonzero(strong)
    ux, uy = gx[strong] / magnitude[strong], gy[strong] / magnitude[strong]
    cy, cx = np.nonzero(candidates)
    dx, dy = px[None, :] - cx[:, None].astype(np.float32), py[None, :] - cy[:, None].astype(np.float32)
    alignment = np.maximum((dx * ux + dy * uy) / np.maximum(np.hypot(dx, dy), 1e-6), 0)
    score[candidates] = (alignment**2).mean(axis=1) * darkness[candidates]
    return score
