"""The trainer's parts: network shapes, the device-resident dataset, the watch, the CLI's config."""

from pathlib import Path

import numpy as np
import pytest
import torch

from common.layout import DataRoot
from common.report import BadInputError
from models.cli import load_train_config
from models.config import TrainConfig
from models.data import DeviceDataset, fit_images, open_images
from models.dcgan import build_discriminator, build_generator
from models.train import train
from models.watch import Watch
from tests.photo_crops import face_crops
from tests.train_helpers import blobs, make_dataset, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", ["dcgan", "mlp"])
@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3), (128, 3)])
def test_networks_map_latents_to_images_and_images_to_logits(model, size, channels):
    config = TrainConfig(model=model, image_size=size, channels=channels, nz=8, ngf=4, ndf=4)
    g, d = build_generator(config), build_discriminator(config)
    images = g(torch.randn(3, 8, 1, 1))
    assert images.shape == (3, channels, size, size) and images.abs().max() <= 1
    assert d(images).shape == (3,)


def test_dataset_is_resized_and_converted_once():
    rgb = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    rgb[0] = (255, 0, 0)
    rgb[1, :, :32] = 255  # left half white
    gray = fit_images(rgb, 32, 1).numpy()
    assert gray.shape == (2, 32, 32, 1)
    assert abs(int(gray[0, 5, 5, 0]) - round(0.299 * 255)) <= 1  # luma of pure red
    assert gray[1, :, :15].min() == 255 and gray[1, :, 17:].max() == 0


def test_batches_walk_epochs_in_order_and_repeat_for_the_same_step():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 4, 4, 3).contiguous()
    data = DeviceDataset(images, torch.device("cpu"), seed=3, flip=False)
    first_epoch = torch.cat([data.rows(0, 4), data.rows(4, 4), data.rows(8, 4)])[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))  # every image once per epoch
    again = DeviceDataset(images, torch.device("cpu"), seed=3, flip=False)
    # batch 7 of 4 images: a resumed run sees the same batch
    assert torch.equal(again.batch(again.rows(28, 4)), data.batch(data.rows(28, 4)))
    batch = data.batch(data.rows(0, 4))
    assert batch.shape == (4, 3, 4, 4) and batch.min() >= -1 and batch.max() <= 1


def test_bad_dataset_files_are_clear_errors(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((4, 32, 16, 3), dtype=np.uint8))
    with pytest.raises(BadInputError, match="square uint8.*rerun the validate stage"):
        open_images(tmp_path / "images.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(BadInputError, match="not a readable .npy"):
        open_images(tmp_path / "junk.npy")


def real_faces(n: int = 32, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(face_crops(size)[:n]).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_watch_flags_collapse_and_an_overpowering_discriminator():
    watch = Watch(TrainConfig(watch_window=3))
    real = real_faces()
    assert not watch.samples(10, real_faces(64)[32:], real) < 0.25
    same = real[:1].expand(32, -1, -1, -1) + 0.001 * torch.randn(32, 3, 32, 32)
    assert watch.samples(20, same, real) < 0.25 and watch.collapsed
    for step, loss_d in enumerate([0.6, 0.01, 0.02, 0.01]):
        watch.losses(step, loss_d, 0.01)
    assert watch.overpowered
    assert [w.split(":")[1].strip().split(" ")[0] for w in watch.warnings] == ["mode", "the"]


def test_grayscale_mlp_gan_trains_from_a_colour_dataset(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs(n=12))
    report = train(tiny(model="mlp", channels=1, steps=4), root)
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True)
    g = build_generator(TrainConfig(**ckpt["config"]))
    g.load_state_dict(ckpt["generator_ema"])
    assert g.eval()(torch.randn(2, 8)).shape == (2, 1, 32, 32)


def test_command_line_config_names_the_bad_key(tmp_path):
    path = tmp_path / "faces.toml"
    path.write_text('data_dir = "elsewhere"\n[train]\nsteps = 7\nngf = 16\n')
    config, data_dir = load_train_config(path, ["batch_size=32", "device=cpu"])
    assert (config.steps, config.ngf, config.batch_size, config.device, data_dir) == (
        7,
        16,
        32,
        "cpu",
        "elsewhere",
    )
    with pytest.raises(BadInputError, match=r"\[train\] batch_size"):
        load_train_config(path, ["batch_size=0"])
    with pytest.raises(BadInputError, match=r"\[train\] stepz"):
        load_train_config(Path(path), ["stepz=3"])
    with pytest.raises(BadInputError, match=r"--set 'steps 3': write KEY=VALUE"):
        load_train_config(path, ["steps 3"])
    assert load_train_config(path, ['augment=""', "augment_p = 0.5"])[0].augment == ""
    fixed = load_train_config(path, ["augment_target=0", "augment_p=0.5"])[0]  # TOML has no null
    assert fixed.augment_target is None and fixed.augment_p == 0.5


def test_a_fresh_generators_alike_samples_are_no_collapse_until_the_warmup_ends():
    watch = Watch(TrainConfig(collapse_warmup=100))
    real = real_faces()
    alike = real[:1].expand(32, -1, -1, -1) + 0.001 * torch.randn(32, 3, 32, 32)
    watch.samples(50, alike, real)
    assert not watch.collapsed and not watch.warnings
    watch.samples(100, alike, real)
    assert watch.collapsed and "mode collapse" in watch.warnings[0]
