"""The export's quality figures (metrics.json): generated samples measured against the run's real crops.

SWD beside the real-vs-real noise floor, the per-image brightness and contrast SWD cannot see (beside
the same floor), MS-SSIM diversity beside the real figure, memorisation (with memorisation.png) and,
when configured, FID/KID. Every real reference is a random sample of the dataset: its first rows are
its earliest-collected images, often of one source, and would make the real figures unrepresentative.
`metrics_rows` turns them into the table the model card and the flows show.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.layout import DataRoot
from common.report import BadInputError
from export import inference, plots
from export.config import ExportConfig
from models.config import TrainConfig
from models.data import fit_images
from models.fid_kid import fid_kid
from models.image_stats import statistics_distance
from models.memorisation import memorisation
from models.metrics import sliced_wasserstein, split_halves, swd_noise_floor
from models.ms_ssim import ms_ssim_diversity
from models.taken_down import deleted_by_takedown


class FittedImages:
    """A dataset's images at the generator's size and channels, converted lazily a slice at a time."""

    def __init__(self, images: np.ndarray, config: TrainConfig) -> None:
        self.images, self.size, self.channels = images, config.image_size, config.channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        return fit_images(self.images[rows], self.size, self.channels).numpy()


def find_dataset(root: DataRoot, dataset_id: str, notes: list[str], run_dir: Path | None = None) -> Path:
    """The run's snapshot; when a takedown or retention removed it, the latest one (with a note)."""
    own = root.dataset_dir(dataset_id)
    if (own / "images.npy").is_file():
        return own
    latest = root.latest_dataset
    if latest.exists() and (latest.resolve() / "images.npy").is_file():
        why = f": {why_gone(run_dir, dataset_id)}" if run_dir else ""
        notes.append(
            f"dataset {dataset_id} (the run's) is gone{why}; real-image metrics use the latest snapshot "
            f"{latest.resolve().name}, and the model card says so"
        )
        return latest.resolve()
    raise BadInputError(
        f"dataset {dataset_id} is gone and there is no datasets/latest: run faces validate first"
    )


def why_gone(run_dir: Path, dataset_id: str) -> str:
    """Why the run's snapshot is gone, as far as can be told: a takedown marks the runs whose snapshot
    it deletes (models.taken_down); retention and deleting by hand leave no record."""
    taken = deleted_by_takedown(run_dir, dataset_id)
    if taken:
        return f"deleted by a takedown (faces forget) on {taken['at']}"
    return "pruned by [validate] retention, or deleted by hand (no takedown recorded)"


def evaluate(
    generator: Callable[[torch.Tensor], torch.Tensor],
    nz: int,
    real: FittedImages,
    config: ExportConfig,
    device: torch.device,
    out: Path,
    progress: Callable[[str], None],
) -> dict:
    """SWD against the noise floor, MS-SSIM diversity, memorisation (+ FID/KID when configured)."""
    rng = np.random.default_rng(config.seed)
    n = min(config.eval_samples, len(real) // 2)
    if n < 2:
        raise BadInputError(f"the dataset has {len(real)} image(s); SWD needs at least 4 (two halves of 2)")
    real_rows = np.sort(rng.choice(len(real), 2 * n, replace=False))
    real_sample = real[real_rows]
    reference, other_half = split_halves(real_sample, config.seed)
    fake = inference.generate(generator, inference.latents(n, nz, config.seed + 4), device)
    progress("SWD against the noise floor")
    sort_on = device if device.type == "cuda" else None  # numpy sorts faster on the CPU
    result: dict[str, Any] = {
        "swd": sliced_wasserstein(reference, fake, seed=config.seed, device=sort_on),
        "swd_noise_floor": swd_noise_floor(real_sample, seed=config.seed, device=sort_on),
        "image_statistics": {  # what SWD cannot see, beside the same two real halves' figure
            "generated": statistics_distance(reference, fake),
            "real": statistics_distance(reference, other_half),
        },
    }
    progress("MS-SSIM diversity")
    k = min(config.diversity_samples, len(real), n)
    real_rows = rng.permutation(len(real_sample))[:k]  # random rows, not the earliest collected
    result["ms_ssim_diversity"] = {
        "generated": ms_ssim_diversity(fake[:k], seed=config.seed),
        "real": ms_ssim_diversity(real_sample[np.sort(real_rows)], seed=config.seed),
    }
    progress("nearest training crops")
    shown = fake[: config.memorisation_samples]
    memo = memorisation(shown, real, seed=config.seed)
    nearest = real[np.asarray(memo["nearest_index"])]
    plots.save_png(out / "memorisation.png", plots.memorisation_sheet(shown, nearest, memo["nearest_rms"]))
    result["memorisation"] = memo
    if config.inception_weights:
        progress("FID and KID")
        result["fid_kid"] = fid_kid(real_sample, fake, config.inception_weights, device=str(device))
    return result


def metrics_rows(result: dict) -> list[dict]:
    """The metrics as table rows: generated beside the real-data reference."""
    swd, floor = result["swd"], result["swd_noise_floor"]
    rows = [
        {"metric": f"SWD x1000, {res} px", "generated": round(g, 2), "real": round(f, 2)}
        for res, g, f in zip(swd["resolutions"], swd["levels"], floor["levels"], strict=True)
    ]
    rows.append(
        {
            "metric": "SWD x1000, mean",
            "generated": round(swd["mean"], 2),
            "real": round(floor["mean"], 2),
        }
    )
    stats = result.get("image_statistics")  # absent from exports made before it was measured
    for name in ("brightness", "contrast") if stats else ():
        rows.append(
            {
                "metric": f"image {name} distance, grey levels (what SWD cannot see)",
                "generated": round(stats["generated"][name], 2),
                "real": round(stats["real"][name], 2),
            }
        )
    div = result["ms_ssim_diversity"]
    rows.append(
        {
            "metric": "MS-SSIM between samples (lower = more diverse)",
            "generated": round(div["generated"]["mean"], 4),
            "real": round(div["real"]["mean"], 4),
        }
    )
    memo = result["memorisation"]
    rows.append(
        {
            "metric": "nearest training crop, median RMS pixel distance",
            "generated": round(memo["median_rms"], 2),
            "real": None if memo["real_to_real_rms"] is None else round(memo["real_to_real_rms"], 2),
        }
    )
    if "fid_kid" in result:
        rows.append({"metric": "FID", "generated": round(result["fid_kid"]["fid"], 2), "real": None})
        rows.append(
            {
                "metric": "KID x1000",
                "generated": round(result["fid_kid"]["kid_x1000"], 2),
                "real": None,
            }
        )
    return rows
