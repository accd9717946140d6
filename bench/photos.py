"""Face crops of the shared photos (../shared/data/photos) for the benchmarks: real faces, no detector."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def face_crops(photos: Path = PHOTOS, size: int = 64, count: int | None = None, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 square crops around the eyes (the pupils file where it has the
    photo, else its mean). `count` beyond the number of photos repeats them with small random shifts;
    None: one crop per photo."""
    pupils = {}
    with open(photos / "webmorph-neutral" / "pupils.csv") as f:
        for row in csv.DictReader(f):
            pupils[row["file"]] = (
                (float(row["pupil1_x"]) + float(row["pupil2_x"])) / 2,
                float(row["pupil1_y"]),
            )
    mean_eye = tuple(np.mean(list(pupils.values()), axis=0))
    files = sorted(photos.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no photos under {photos}; pass --photos")
    photos_rgb = []  # each photo decoded once: a large count repeats them many times
    for path in files:
        with Image.open(path) as im:
            photos_rgb.append(im.convert("RGB"))
    count = len(files) if count is None else count
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos_rgb[i % len(files)]
        cx, cy = pupils.get(files[i % len(files)].name, mean_eye)
        side = 200 + (rng.integers(-8, 9) if i >= len(files) else 0)  # repeats: slightly other crops
        dx, dy = rng.integers(-4, 5, 2) if i >= len(files) else (0, 0)
        left, top = cx - side / 2 + dx, cy - 0.38 * side + dy
        crop = photo.crop((int(left), int(top), int(left + side), int(top + side)))
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
    return out
