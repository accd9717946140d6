"""One photo -> its aligned face crops, each confirmed by a second opinion, decoded no finer than needed.

A JPEG larger than the working copy is decoded at 1/2, 1/4 or 1/8 of its size (the coarsest that
still gives the working copy all its pixels), faces are found on that, and the photo is decoded again
finer only where a face would otherwise have fewer pixels than its crop needs: twice the crop size
across the FFHQ square, and with `refine_eyes` the pupil search's 256. No photo is decoded to more
than DECODE_BUDGET pixels, so a worker's memory stays bounded whatever the photo's size.
"""

from dataclasses import dataclass

import numpy as np

from preprocess.align import crop_square, face_square
from preprocess.config import PreprocessConfig
from preprocess.decode import REDUCTIONS, EncodedImage
from preprocess.detect import Face, FaceDetector
from preprocess.landmarks import PUPIL_VIEW, box_eyes_landmarks, refine_landmarks
from preprocess.padding import photo_share
from preprocess.verify import VIEW, SecondOpinion

DECODE_BUDGET = 16_000_000  # pixels: about 64 MB in Pillow and 48 MB as a BGR array
# A square mostly outside the photo is mostly padding: no face to learn from, and where the detectors
# err (every webmorph face has all of its square in the photo; half of YuNet's boxes on hair and
# cats have less than this).
MIN_PHOTO_SHARE = 0.6


@dataclass
class FaceCrop:
    crop: np.ndarray  # BGR uint8, crop_size x crop_size
    face: Face  # box and the landmarks the alignment used, in the photo's full-size pixels


def align_face(
    config: PreprocessConfig, bgr: np.ndarray, face: Face, detector: FaceDetector
) -> tuple[np.ndarray, Face]:
    """The face's aligned BGR crop, and the face with the landmarks the alignment used."""
    if face.landmarks is None:  # Haar: eyes placed in the box, then found
        face = Face(face.box, box_eyes_landmarks(bgr, face.box, config.refine_eyes), face.score)
    elif config.refine_eyes:
        face = Face(face.box, refine_landmarks(bgr, face.landmarks, detector), face.score)
    return crop_square(bgr, face_square(face), config.crop_size), face


def face_crops(
    config: PreprocessConfig, image: EncodedImage, detector: FaceDetector, opinion: SecondOpinion
) -> tuple[list[FaceCrop], list[str]]:
    """The photo's confirmed faces, best first, and why each other candidate was turned down."""
    reduce = _detection_reduction(config, image)
    bgr = image.decode(reduce)
    faces = detector.detect(bgr)
    finer = _crop_reduction(config, image, faces, reduce)
    if finer != reduce:
        faces = [_rescaled(f, reduce / finer) for f in faces]
        bgr, reduce = image.decode(finer), finer
    crops, doubts = [], []
    for face in faces:
        crop, aligned, doubt = check_face(config, bgr, face, detector, opinion)
        if doubt:
            doubts.append(doubt)
        else:
            crops.append(FaceCrop(crop, _rescaled(aligned, reduce)))
    return crops, doubts


def check_face(
    config: PreprocessConfig, bgr: np.ndarray, face: Face, detector: FaceDetector, opinion: SecondOpinion
) -> tuple[np.ndarray, Face, str | None]:
    """The face aligned (crop and landmarks used) and why it should not become a crop, or None."""
    crop, aligned = align_face(config, bgr, face, detector)
    square = face_square(aligned)
    share = photo_share(square, *bgr.shape[:2])
    if share < MIN_PHOTO_SHARE:
        return crop, aligned, f"only {share:.0%} of the face's square lies in the photo"
    view = crop if crop.shape[0] == VIEW else crop_square(bgr, square, VIEW)
    return crop, aligned, opinion.doubt(view, aligned.landmarks)


def _budget_reduction(image: EncodedImage) -> int:
    """The finest reduction that decodes to at most DECODE_BUDGET pixels (8 if none does)."""
    fits = [r for r in REDUCTIONS if -(-image.width // r) * -(-image.height // r) <= DECODE_BUDGET]
    return fits[0] if fits else REDUCTIONS[-1]


def _detection_reduction(config: PreprocessConfig, image: EncodedImage) -> int:
    """The coarsest JPEG reduction whose longest side is still at least the working size."""
    longest = max(image.width, image.height)
    coarsest = max(r for r in REDUCTIONS if r == 1 or (image.is_jpeg and longest / r >= config.working_size))
    return max(coarsest, _budget_reduction(image))


def _crop_reduction(config: PreprocessConfig, image: EncodedImage, faces: list[Face], reduce: int) -> int:
    """The coarsest reduction at which every face's square keeps the pixels its crop needs (never
    coarser than `reduce`, never finer than the budget allows)."""
    if not faces or not image.is_jpeg:
        return reduce
    need = max(2 * config.crop_size, PUPIL_VIEW if config.refine_eyes else 0)
    sides = [float(np.hypot(*np.subtract(*face_square(f)[:2]))) * reduce for f in faces]  # full-size px
    coarsest = min(max([r for r in REDUCTIONS if side / r >= need], default=1) for side in sides)
    return max(min(coarsest, reduce), _budget_reduction(image))


def _rescaled(face: Face, factor: float) -> Face:
    """The face in pixels `factor` times finer (pixel centres: x' + 0.5 = (x + 0.5) * factor)."""
    x, y, w, h = face.box
    box = ((x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5, w * factor, h * factor)
    landmarks = None if face.landmarks is None else (face.landmarks + 0.5) * factor - 0.5
    return Face(box, landmarks, face.score)
