"""Sharper eye landmarks, so that the pupils, not just the eyes, land at the same place in every crop.

YuNet's eye landmarks are rough eye centres, and on a tilted face they lean towards level: a face
turned 20 degrees reads as 3 to 17 degrees, the smaller the face the more level (measured on the
webmorph photos). Three steps bring the pupils to 0.4 px on average and under 1 px of the canonical
positions at 64x64 (docs/preprocess.md):

1. Pupils near YuNet's eyes, searched coarsely in a wide window: the eye line they give does not
   lean towards level.
2. Level pass: YuNet again on a level, face-sized view built from those pupils, for the nose and mouth
   (which the tilt had pulled too). YuNet places the mouth 1.2 view pixels to the right of where its
   mirror image puts it: where the view's eyes agree with the pupils (87% of the webmorph faces) that
   measured bias is taken off; elsewhere the view is looked at again mirrored and the two averaged,
   which cancels any left-right bias (at the cost of a second YuNet pass).
3. Pupils again, near the level pass's eyes, in the usual window.

Pupils: near each eye, the centre that most image gradients point away from (the dark iris against
the white of the eye), after Timm and Barth, "Accurate eye centre localisation by means of gradients"
(2011), weighted by the darkness of an iris-sized disc around it and towards the eye estimate.
"""

import cv2
import numpy as np

from preprocess.align import ffhq_square, map_points, square_to_crop
from preprocess.detect import FaceDetector
from preprocess.haar import box_landmarks, landmarks_from_eyes

LEVEL_VIEW = 192  # side of the level pass's views, in pixels
LEVEL_CONTEXT = 1.5  # the level pass sees the FFHQ square this many times wider (a detector wants context)
PUPIL_VIEW = 256  # pupils are searched at this many pixels per FFHQ square (an eye distance is 64)
EYE_WINDOW = 14  # pupil search: this many view pixels around the eye estimate, each way (3.5 px at 64)
EYE_PRIOR = 12.0  # pupil search: Gaussian weight (view pixels) towards the eye estimate
WIDE_WINDOW, WIDE_PRIOR, WIDE_STRIDE = 18, 14.0, 2  # the first search, around YuNet's own eye points
DARK_SHARE = 0.3  # the darkest part of the search window that may hold the pupil
IRIS_RADIUS = 5  # view pixels: darkness is averaged over a disc this size (an iris is about 6)
AGREE = 4.0  # level-pass eyes within this many view pixels (2 px at 64) of the pupils: no mirror pass
# YuNet's landmarks on the level views less their mirror images' (mirrored back), halved: its
# left-right bias, in view pixels, the mean over the 102 neutral webmorph photos upright and every third
# turned 20 degrees either way (the spread of each is 0.7 to 1.1 px).
LEVEL_BIAS = np.array([[0.09, 0.05], [0.25, -0.15], [-0.11, 0.06], [1.23, 0.33], [1.18, -0.46]])
MIRROR = [1, 0, 2, 4, 3]  # YuNet's landmark order seen in a mirror: the eyes and mouth corners swap


def refine_landmarks(bgr: np.ndarray, landmarks: np.ndarray, detector: FaceDetector) -> np.ndarray:
    """YuNet landmarks (5, 2) in image pixels -> the same, with better eye points (see module doc)."""
    first = np.array(landmarks, dtype=np.float64)
    first[:2] = find_pupils(bgr, first, window=WIDE_WINDOW, prior=WIDE_PRIOR, stride=WIDE_STRIDE)
    level = level_landmarks(bgr, first, detector)
    refined = level.copy()
    refined[:2] = find_pupils(bgr, level)
    return refined


def level_landmarks(bgr: np.ndarray, landmarks: np.ndarray, detector: FaceDetector) -> np.ndarray:
    """YuNet's landmarks on a level view of the face; the eyes of `landmarks` are kept where the
    view disagrees with them (the view's own eyes only serve as the next pupil search's centre)."""
    square = ffhq_square(landmarks)
    centre = square.mean(axis=0)
    to_view = square_to_crop(centre + (square - centre) * LEVEL_CONTEXT, LEVEL_VIEW)
    view = cv2.warpAffine(
        bgr, to_view, (LEVEL_VIEW, LEVEL_VIEW), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    found = _central_landmarks(view, detector)
    if found is None:
        return landmarks  # the face is hard to see level: keep the pupils and YuNet's first guess
    expected = map_points(to_view, landmarks[:2])
    mirrored = None
    if np.linalg.norm(found[:2] - expected, axis=1).max() > AGREE:
        mirrored = _central_landmarks(np.ascontiguousarray(view[:, ::-1]), detector)
    if mirrored is None:  # confident: YuNet's own left-right bias, measured, is taken off instead
        found = found - LEVEL_BIAS
    else:
        mirrored = mirrored[MIRROR]
        mirrored[:, 0] = LEVEL_VIEW - 1 - mirrored[:, 0]
        found = (found + mirrored) / 2
    return map_points(cv2.invertAffineTransform(to_view), found)


def _central_landmarks(view: np.ndarray, detector: FaceDetector) -> np.ndarray | None:
    faces = [f for f in detector.detect_as_is(view) if f.landmarks is not None]
    if not faces:
        return None
    centre = np.array(view.shape[1::-1]) / 2
    nearest = min(faces, key=lambda f: np.hypot(*(np.add(f.box[:2], np.divide(f.box[2:], 2)) - centre)))
    return nearest.landmarks


def find_pupils(
    bgr: np.ndarray,
    landmarks: np.ndarray,
    *,
    window: int = EYE_WINDOW,
    prior: float = EYE_PRIOR,
    stride: int = 1,
) -> np.ndarray:
    """The two pupil centres (2, 2) in image pixels, searched near the eye points of `landmarks`
    (at every `stride`-th view pixel each way)."""
    to_view = square_to_crop(ffhq_square(landmarks), PUPIL_VIEW)
    eyes = map_points(to_view, landmarks[:2])
    pupils = [_pupil_near(bgr, to_view, eye, window, prior, stride) for eye in eyes]
    return map_points(cv2.invertAffineTransform(to_view), np.array(pupils))


def _pupil_near(
    bgr: np.ndarray, to_view: np.ndarray, eye: np.ndarray, window: int, prior: float, stride: int
) -> np.ndarray:
    """The pupil within `window` view pixels of `eye`, in view pixels. Only the patch around the eye is
    resampled, with a margin for the darkness disc."""
    margin = IRIS_RADIUS + 1
    x0, y0 = (int(round(v)) - window - margin for v in eye)
    side = 2 * (window + margin) + 1
    to_patch = to_view - np.array([[0, 0, x0], [0, 0, y0]], dtype=np.float64)
    patch = cv2.warpAffine(
        bgr, to_patch, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float32)
    score = _gradient_centre_score(grey, margin, stride)
    n = score.shape[0]
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32)
    x0, y0 = x0 + margin, y0 + margin  # the window's corner in view pixels
    score *= np.exp(-((xs + x0 - eye[0]) ** 2 + (ys + y0 - eye[1]) ** 2) / (2 * prior**2))
    y, x = np.unravel_index(np.argmax(score), score.shape)
    return np.array([x + x0, y + y0], dtype=np.float64)


def _disc(radius: int) -> np.ndarray:
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    cv2.circle(kernel, (radius, radius), radius, 1.0, -1)
    return kernel / kernel.sum()


_IRIS = _disc(IRIS_RADIUS)


def _gradient_centre_score(grey: np.ndarray, margin: int, stride: int = 1) -> np.ndarray:
    """For every pixel c of the window (the patch less `margin`): mean over strong gradients g at x of
    max(0, (x - c)/|x - c| . g/|g|)^2, times the darkness of an iris-sized disc at c. Peaks at the
    centre of a dark disc (the iris) on a lighter background. Only the darkest DARK_SHARE of the pixels
    are candidates (a pupil is among them; fewer candidates, less work)."""
    inner = (slice(margin, -margin), slice(margin, -margin))
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)[inner]
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)[inner]
    darkness = (255.0 - cv2.filter2D(grey, -1, _IRIS, borderType=cv2.BORDER_REPLICATE))[inner]
    magnitude = np.hypot(gx, gy)
    strong = magnitude > magnitude.mean() + 0.5 * magnitude.std()
    candidates = darkness >= np.percentile(darkness, 100 * (1 - DARK_SHARE))
    if stride > 1:  # a coarse search: every stride-th pixel each way
        grid = np.zeros_like(candidates)
        grid[::stride, ::stride] = True
        candidates &= grid
    score = np.zeros_like(darkness)
    if not strong.any():
        return score + darkness
    py, px = np.nonzero(strong)
    ux, uy = gx[strong] / magnitude[strong], gy[strong] / magnitude[strong]
    cy, cx = np.nonzero(candidates)
    dx = px.astype(np.float32) - cx[:, None].astype(np.float32)
    dy = py.astype(np.float32) - cy[:, None].astype(np.float32)
    towards = np.maximum(dx * ux + dy * uy, 0)  # (x - c) . g, the part pointing away from c
    score[candidates] = (towards * towards / np.maximum(dx * dx + dy * dy, 1)).mean(axis=1) * darkness[
        candidates
    ]
    return score


def box_eyes_landmarks(bgr: np.ndarray, box: tuple[float, float, float, float], refine: bool) -> np.ndarray:
    """Landmarks for a Haar face: eyes where the box puts them (preprocess/haar.py), then, with
    `refine`, the pupils near them (a wide search, then the usual one in the square they level)."""
    landmarks = box_landmarks(box)
    if refine:
        wide = find_pupils(bgr, landmarks, window=WIDE_WINDOW, prior=WIDE_PRIOR, stride=WIDE_STRIDE)
        landmarks = landmarks_from_eyes(*wide)
        landmarks = landmarks_from_eyes(*find_pupils(bgr, landmarks))
    return landmarks
