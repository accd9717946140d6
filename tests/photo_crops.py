"""Real face crops for the metrics and export tests: the shared portraits cut around their pupils."""

import csv
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "photos"


@cache
def _face_crops(size: int) -> np.ndarray:
    """Eye-aligned crops of the 204 shared portraits (both expressions share one pupil table)."""
    pupils = {}
    with open(PHOTOS / "webmorph-neutral" / "pupils.csv") as f:
        for row in csv.DictReader(f):
            keys = ("pupil1_x", "pupil1_y", "pupil2_x", "pupil2_y")
            pupils[row["file"].split("_")[0]] = [float(row[k]) for k in keys]
    crops = []
    for path in sorted(PHOTOS.glob("webmorph-*/*.jpg")):
        x1, y1, x2, y2 = pupils[path.name.split("_")[0]]
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, 2.4 * abs(x2 - x1)
        box = (cx - side / 2, cy - 0.4 * side, cx + side / 2, cy + 0.6 * side)
        with Image.open(path) as im:
            crops.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR, box=box)))
    return np.stack(crops)


def face_crops(size: int = 64) -> np.ndarray:
    """(204, size, size, 3) uint8 real face crops; a fresh copy so tests cannot spoil each other's."""
    return _face_crops(size).copy()
