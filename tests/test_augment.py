"""Differentiable augmentation (models.augment), its adaptive probability and spectral norm in D."""

import json
from pathlib import Path

import pytest
import torch

from common.layout import DataRoot
from common.report import BadInputError
from models.augment import DRAWS, Augment
from models.cli import load_train_config
from models.config import TrainConfig
from models.dcgan import build_discriminator
from models.train import train
from tests.photo_crops import face_crops
from tests.train_helpers import blobs, make_dataset, rows, tiny


def faces(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(face_crops(size)[:n]).permute(0, 3, 1, 2).float() / 127.5 - 1


def augment(policy: str, p: float = 1.0) -> Augment:
    return Augment(TrainConfig(augment=policy, augment_p=p, augment_target=None), torch.device("cpu"))


def uniforms(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, DRAWS, generator=torch.Generator().manual_seed(seed))


def test_translation_moves_each_image_by_at_most_an_eighth_and_fills_with_zeros():
    x = faces()
    out = augment("translation")(x, uniforms(len(x)))
    moved = 0
    for before, after in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.equal(after, shifted(before, dy, dx))
        ]
        assert len(matches) == 1, "each output is its input shifted by whole pixels within 32 / 8"
        moved += matches[0] != (0, 0)
    assert moved >= len(x) // 2


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved down by dy and right by dx, zeros where nothing moved in."""
    out = torch.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_cutout_zeroes_one_square_of_half_the_side_and_keeps_the_rest():
    x = faces()
    out = augment("cutout")(x, uniforms(len(x)))
    for before, after in zip(x, out, strict=True):
        hole = (after == 0).all(dim=0) & (before != 0).any(dim=0)
        rows_hit, cols_hit = hole.any(dim=1).nonzero(), hole.any(dim=0).nonzero()
        assert 0 < len(rows_hit) <= 16 and 0 < len(cols_hit) <= 16  # one square, clipped at the edge
        assert hole.sum() == len(rows_hit) * len(cols_hit)
        assert torch.equal(after[:, ~hole], before[:, ~hole])


def test_color_changes_brightness_and_contrast_and_probability_zero_changes_nothing():
    x = faces()
    out = augment("color")(x, uniforms(len(x)))
    mean_change = (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs()
    assert (mean_change > 0.01).all() and (mean_change <= 0.5 + 1e-5).all()
    assert not torch.allclose(out.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), atol=0.01)
    everything = augment("color,translation,cutout", p=0.0)
    assert torch.equal(everything(x, uniforms(len(x))), x)


def test_probability_applies_each_transform_to_about_that_share_of_images():
    x = faces(64)
    out = augment("translation", p=0.3)(x, uniforms(len(x), seed=3))
    changed = (out != x).flatten(1).any(dim=1).float().mean()
    assert 0.1 < changed < 0.5


def test_generated_images_get_gradients_through_the_augmentation():
    x = faces().requires_grad_(True)
    augment("color,translation,cutout")(x, uniforms(len(x))).square().sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).flatten(1).any(dim=1).all()


def test_adaptive_probability_rises_while_d_is_sure_of_real_images_and_falls_when_not():
    aug = Augment(TrainConfig(augment="color", augment_target=0.6, augment_speed=1000), torch.device("cpu"))
    x, u = faces(), uniforms(8)
    assert float(aug.p) == 0.0 and not aug.active  # ADA starts without augmentation,
    assert aug(x, u) is x  # and at p = 0 no transform runs
    aug.tally(torch.full((100,), 3.0), midpoint=0.0)  # every real image judged real: r_t = 1
    assert aug.adjust(aug.signs.clone()) == 1.0 and float(aug.p) == pytest.approx(0.1)
    assert aug.active and not torch.equal(aug(x, torch.zeros(8, DRAWS)), x)  # u = 0 < p: applied
    aug.tally(torch.tensor([1.0] * 50 + [-1.0] * 50), midpoint=0.0)  # r_t = 0, below the target
    aug.adjust(aug.signs.clone())
    assert float(aug.p) == pytest.approx(0.0, abs=1e-6) and not aug.active
    aug.tally(torch.tensor([-1.0] * 100), midpoint=0.0)
    aug.adjust(aug.signs.clone())
    assert float(aug.p) == 0.0  # never below 0


def test_adaptive_augmentation_is_logged_and_a_resumed_run_keeps_its_probability(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs(n=8))
    config = tiny(augment_target=0.6, augment_speed=200, steps=8)
    report = train(config, root)
    run_dir = Path(report.outputs["run_dir"])
    logged = [r for r in rows(run_dir) if "augment_p" in r]
    assert logged and all("r_t" in r for r in logged)
    assert logged[-1]["augment_p"] > 0  # D tells 8 blobs from a fresh G at once: p goes up
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True)
    assert ckpt["metrics"]["augment_p"] == pytest.approx(logged[-1]["augment_p"], abs=1e-4)
    resumed = train(config.model_copy(update={"steps": 10}), root)
    first_new = [r for r in rows(Path(resumed.outputs["run_dir"])) if r["step"] > 8 and "augment_p" in r][0]
    # From where it was, one adjustment away (2 steps x 8 images / 200 images per unit of p).
    assert abs(first_new["augment_p"] - logged[-1]["augment_p"]) <= 16 / 200 + 1e-4


def test_an_unknown_augmentation_is_a_config_error_naming_the_key(tmp_path):
    path = tmp_path / "faces.toml"
    path.write_text('[train]\naugment = "colour,translation"\n')
    with pytest.raises(BadInputError, match=r"\[train\] augment.*unknown augmentation 'colour'"):
        load_train_config(path, [])


def test_spectral_norm_discriminator_has_no_batch_norm_and_unit_spectral_norms(tmp_path):
    d = build_discriminator(TrainConfig(image_size=32, ndf=8, spectral_norm=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    for _ in range(20):  # power iterations run in training mode
        d(torch.randn(4, 3, 32, 32))
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in convs]
    assert sigmas == pytest.approx([1.0] * len(convs), rel=0.05)
    root = DataRoot(tmp_path)
    make_dataset(root, blobs(n=8))
    report = train(tiny(spectral_norm=True, steps=4), root)
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True)
    fresh = build_discriminator(TrainConfig(**ckpt["config"]))
    fresh.load_state_dict(ckpt["discriminator"])
    assert json.loads((Path(report.outputs["run_dir"]) / "run.json").read_text())["status"] == "finished"
