"""Export's figures do not flatter: random real references, what SWD cannot see, the run's true step count."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.layout import DataRoot
from export.config import ExportConfig
from export.evaluation import FittedImages, evaluate, metrics_rows
from export.stage import export
from models.config import TrainConfig
from models.image_stats import statistics_distance
from models.metrics import sliced_wasserstein, split_halves
from models.ms_ssim import ms_ssim_diversity
from models.train import train
from tests.export_data import make_dataset, small_export
from tests.photo_crops import face_crops
from tests.train_helpers import tiny


def lower_contrast(images: np.ndarray, factor: float) -> np.ndarray:
    """The whole set pulled towards its mean grey: every image alike, so SWD's per-set scaling undoes it."""
    mean = images.mean()
    return ((images.astype(np.float64) - mean) * factor + mean).round().clip(0, 255).astype(np.uint8)


def sampler(images: np.ndarray):
    """A 'generator' that draws dataset images: the latent picks which one."""
    pictures = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    def generate(z: torch.Tensor) -> torch.Tensor:
        rows = (z[:, 0].abs() * 1e4).long() % len(pictures)
        return pictures[rows]

    return generate


def run_evaluation(real: np.ndarray, fake_source: np.ndarray, tmp_path: Path, **settings) -> dict:
    config = ExportConfig(**({"eval_samples": 64, "diversity_samples": 16, "device": "cpu"} | settings))
    fitted = FittedImages(real, TrainConfig(image_size=real.shape[1], channels=3))
    return evaluate(
        sampler(fake_source), 8, fitted, config, torch.device("cpu"), tmp_path, progress=lambda _: None
    )


def test_a_set_at_40_percent_contrast_fools_swd_but_not_the_image_statistics():
    a, b = split_halves(face_crops(32), seed=0)
    flat = lower_contrast(b, 0.4)
    floor, swd = sliced_wasserstein(a, b, seed=0)["mean"], sliced_wasserstein(a, flat, seed=0)["mean"]
    assert swd < 1.1 * floor  # SWD is blind to it ...
    stats_floor, stats = statistics_distance(a, b), statistics_distance(a, flat)
    assert stats["contrast"] > 5 * stats_floor["contrast"]  # ... the per-image statistics are not
    assert stats["brightness"] > 2 * stats_floor["brightness"]


def test_export_reports_image_statistics_beside_the_real_floor(tmp_path):
    real = face_crops(32)
    result = run_evaluation(real, lower_contrast(real, 0.4), tmp_path)
    rows = {r["metric"].split(",")[0]: r for r in metrics_rows(result)}
    contrast = rows["image contrast distance"]
    assert contrast["generated"] > 5 * contrast["real"]
    honest = run_evaluation(real, real, tmp_path)["image_statistics"]
    assert honest["generated"]["contrast"] < 3 * honest["real"]["contrast"]


def test_real_diversity_figure_comes_from_a_random_sample_not_the_earliest_rows(tmp_path):
    faces = face_crops(32)
    # The earliest-collected third of the dataset: one face, over and over (one source, one sitter).
    repeated = np.repeat(faces[:1], 100, axis=0)
    dataset = np.concatenate([repeated, faces])
    result = run_evaluation(dataset, faces, tmp_path)
    real_figure = result["ms_ssim_diversity"]["real"]["mean"]
    rows = np.random.default_rng(5).choice(len(dataset), 16, replace=False)
    typical = ms_ssim_diversity(dataset[rows], seed=0)["mean"]
    assert real_figure < 0.8  # 16 of the first rows would all be the one face: MS-SSIM near 1
    assert real_figure == pytest.approx(typical, abs=0.25)


def test_model_card_of_a_resumed_run_counts_every_step_it_trained(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root)
    config = tiny(steps=8, eval_every=4, checkpoint_every=4)
    train(config, root)
    train(config.model_copy(update={"steps": 14}), root)  # raised steps: the run resumes from step 8
    card = Path(export(small_export(onnx=False), root).outputs["model_card"]).read_text()
    assert "| steps trained | 14 (112 images seen) |" in card
    assert '"steps": 14' in card  # the settings it last trained with
    assert "| exported checkpoint | step " in card
    assert "204 images, trained at 32x32 px RGB, from 204 distinct source images" in card
