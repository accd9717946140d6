"""What validation measures on each crop, the thresholds that judge it, and the near-duplicate search.

Measuring (decode, hashes, sharpness, light, colour, a YuNet re-check) is the costly part and does not
depend on thresholds, so measurements are cached per crop content and judged afresh on every run.
"""

import hashlib
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from preprocess.config import PreprocessConfig
from preprocess.detect import FaceDetector
from preprocess.verify import HaarCheck
from validate.config import ValidateConfig

# Bump when a measurement changes meaning: cached measurements from older versions are then redone.
MEASURE_VERSION = 2  # 2: the face re-check wants the Haar cascade's word too

# Soft checks, in the order a crop's reasons are listed (the first one names its contact sheet).
REASONS = (
    "opted_out",
    "no_face",
    "blurry",
    "dark",
    "bright",
    "flat",
    "grayscale",
    "duplicate",
    "near_duplicate",
)

# YuNet wants some context around a face: the crop gets a replicated border first. Measured on 64x64
# crops of the 204 shared photos (preprocess's FFHQ-aligned ones, and squares 1.5 to 4 pupil distances
# wide): every face scores 0.87 or more, crops of necks, shirts and backgrounds 0.0 (docs/validate.md).
# Upscaling to 96 px costs twice as much and changes the scores by 0.01-0.03.
RECHECK_SIZE = 64
RECHECK_BORDER = 8
FACE_SCORE_FLOOR = 0.1  # the detector's own threshold: scores below it read as 0 (no face)


@dataclass
class Measures:
    """One crop, measured. `problem` is a hard failure (the other fields are then meaningless)."""

    problem: str | None
    pixels_sha256: str = ""
    phash: int = 0
    sharpness: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    chroma: float = 0.0
    face_score: float | None = None  # None: not re-checked

    def as_row(self) -> dict:
        return asdict(self)


def decode_crop(data: bytes, size: int) -> tuple[np.ndarray | None, str | None]:
    """The crop as a BGR uint8 (size, size, 3) array, or None and what is wrong with it."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        return None, "does not decode as an image"
    if img.dtype != np.uint8:
        return None, f"is {img.dtype}, not uint8"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels != 3:
        return None, f"has {channels} channel(s), not 3 (RGB)"
    if img.shape[:2] != (size, size):
        return None, f"is {img.shape[1]}x{img.shape[0]}, not {size}x{size}"
    return img, None


def phash(bgr: np.ndarray) -> int:
    """64-bit DCT perceptual hash: the signs of the 8x8 lowest frequencies against their median."""
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    low = cv2.dct(cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA))[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term is left out of the median: it is just the mean
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


class FaceRechecker:
    """YuNet (through preprocess.detect) on a crop given a little room around the face, confirmed by a
    detector of another kind (preprocess.verify.HaarCheck: the Haar cascade, near the crop's middle, for
    squares 2.4 to 4 pupil distances wide): YuNet alone now and then scores a hand or hair above 0.5,
    and a second look with the same network is no independent check. A crop the cascade does not
    confirm scores 0."""

    def __init__(self) -> None:
        side = RECHECK_SIZE + 2 * RECHECK_BORDER
        config = PreprocessConfig(
            detector="yunet",
            score_threshold=FACE_SCORE_FLOOR,
            working_size=side,
            min_face_size=1,
            max_faces=1,
        )
        self.detector = FaceDetector(config)
        self.haar = HaarCheck.any_framing()

    def score(self, bgr: np.ndarray) -> float:
        big = bgr if bgr.shape[0] == RECHECK_SIZE else cv2.resize(bgr, (RECHECK_SIZE, RECHECK_SIZE))
        b = RECHECK_BORDER
        padded = cv2.copyMakeBorder(big, b, b, b, b, cv2.BORDER_REPLICATE)
        faces = self.detector.detect(padded)
        return round(faces[0].score, 4) if faces and self.haar.confirms(big) else 0.0


def measure(data: bytes, size: int, rechecker: FaceRechecker | None) -> Measures:
    img, problem = decode_crop(data, size)
    if problem:
        return Measures(problem)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    chroma = (img.max(axis=2).astype(np.int16) - img.min(axis=2)).mean()
    return Measures(
        problem=None,
        pixels_sha256=hashlib.sha256(img.tobytes()).hexdigest(),
        phash=phash(img),
        sharpness=round(float(cv2.Laplacian(gray, cv2.CV_64F).var()), 3),
        brightness=round(float(gray.mean()), 3),
        contrast=round(float(gray.std()), 3),
        chroma=round(float(chroma), 3),
        face_score=rechecker.score(img) if rechecker else None,
    )


def quality_reasons(m: Measures, config: ValidateConfig) -> list[tuple[str, str]]:
    """The soft checks that need only this crop: (reason, detail) for each one it fails."""
    out = []
    if config.recheck_faces and m.face_score is not None and m.face_score < config.min_face_score:
        detail = f"face score {m.face_score:.2f} < {config.min_face_score} (YuNet's; 0: Haar sees no face)"
        out.append(("no_face", detail))
    if m.sharpness < config.min_sharpness:
        out.append(("blurry", f"sharpness {m.sharpness:.1f} < {config.min_sharpness}"))
    if m.brightness < config.min_brightness:
        out.append(("dark", f"brightness {m.brightness:.1f} < {config.min_brightness}"))
    if m.brightness > config.max_brightness:
        out.append(("bright", f"brightness {m.brightness:.1f} > {config.max_brightness}"))
    if m.contrast < config.min_contrast:
        out.append(("flat", f"contrast {m.contrast:.1f} < {config.min_contrast}"))
    if config.colour and m.chroma < config.min_chroma:
        out.append(("grayscale", f"chroma {m.chroma:.1f} < {config.min_chroma}"))
    return out


class NearDuplicateIndex:
    """Multi-index hashing over 64-bit hashes: finds a stored hash within Hamming distance d.

    Split the 64 bits into d+1 blocks; two hashes within distance d differ in at most d blocks, so
    (pigeonhole) they agree exactly on at least one. Each block has a dict from its value to the
    items holding it, and only items sharing a block are compared bit by bit. Cost per query is the
    size of d+1 buckets, not of the whole set; memory is d+1 list entries per stored hash.
    """

    def __init__(self, distance: int) -> None:
        self.distance = distance
        n_blocks = distance + 1
        edges = [round(i * 64 / n_blocks) for i in range(n_blocks + 1)]
        self.blocks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.blocks]
        self.hashes: list[int] = []
        self.comparisons = 0  # for the benchmark: how far from quadratic the search stays

    def _keys(self, h: int) -> list[int]:
        return [(h >> shift) & mask for shift, mask in self.blocks]

    def nearest(self, h: int) -> tuple[int, int] | None:
        """(item, distance) of the closest stored hash within the distance (earliest on ties), or None."""
        best = None
        seen = set()
        for table, key in zip(self.tables, self._keys(h), strict=True):
            for item in table.get(key, ()):
                if item in seen:
                    continue
                seen.add(item)
                d = (self.hashes[item] ^ h).bit_count()
                if d <= self.distance and (best is None or (d, item) < (best[1], best[0])):
                    best = (item, d)
        self.comparisons += len(seen)
        return best

    def add(self, h: int) -> int:
        item = len(self.hashes)
        self.hashes.append(h)
        for table, key in zip(self.tables, self._keys(h), strict=True):
            table.setdefault(key, []).append(item)
        return item
