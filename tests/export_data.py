"""A dataset of real face crops with provenance, as validate leaves it, for the export tests."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import atomic_symlink
from common.layout import DataRoot
from export.config import ExportConfig
from tests.photo_crops import face_crops

DATASET_ID = "d0tiny"
IMAGE_SIZE = 32
HOSTS = ["commons.example.org", "commons.example.org", "photos.example.net"]
LICENCES = ["CC BY 4.0", "CC BY-SA 4.0", "CC0"]


def small_export(**overrides) -> ExportConfig:
    settings = dict(n_samples=6, interpolation_steps=4, eval_samples=48, diversity_samples=12, device="cpu")
    return ExportConfig(**(settings | overrides))


def make_dataset(root: DataRoot) -> np.ndarray:
    """datasets/<id>/ with real face crops, index.csv (provenance) and a README, like validate writes."""
    images = face_crops(IMAGE_SIZE)
    folder = root.dataset_dir(DATASET_ID)
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", images)
    with open(folder / "index.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "crop_id", "sha256", "source_url", "page_url", "licence", "fetched_at"])
        for row in range(len(images)):
            host, licence = HOSTS[row % 3], LICENCES[row % 3]
            sha = f"{row:064x}"
            writer.writerow(
                [
                    row,
                    f"{sha}-0",
                    sha,
                    f"https://{host}/img/{row}.jpg",
                    f"https://{host}/p/{row}",
                    licence,
                    "",
                ]
            )
    (folder / "README.md").write_text(f"# Dataset card: `{DATASET_ID}`\n")
    atomic_symlink(DATASET_ID, root.latest_dataset)
    return images


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
