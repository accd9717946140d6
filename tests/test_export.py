"""Export of a tiny training run built here by hand, following the checkpoint contract in docs/DESIGN.md."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.files import atomic_symlink
from common.layout import DataRoot
from common.report import BadInputError
from export import inference
from export.stage import export, input_fingerprint, load_run_checkpoint
from models.checkpoint import save_checkpoint
from models.config import TrainConfig
from models.dcgan import build_discriminator, build_generator
from tests.export_data import DATASET_ID, IMAGE_SIZE, make_dataset, png, small_export

# The tests load TorchScript directly, which torch marks deprecated on every call.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit")

RUN = "tiny-run"


def tiny_config() -> TrainConfig:
    return TrainConfig(image_size=IMAGE_SIZE, nz=16, ngf=8, ndf=8, batch_size=16, steps=300, seed=3)


@torch.no_grad()
def standing_statistics(g: torch.nn.Module, nz: int) -> None:
    """Batch-norm statistics measured on the generator's own activations, as training leaves them."""
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    g.train()(torch.randn(256, nz))
    g.eval()


def checkpoint_state(config: TrainConfig, step: int, seed: int) -> dict:
    """A checkpoint dict as models.train writes it; the networks are freshly initialised."""
    torch.manual_seed(seed)
    g, d, g_ema = build_generator(config), build_discriminator(config), build_generator(config)
    standing_statistics(g_ema, config.nz)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    return {
        "generator": g.state_dict(),
        "discriminator": d.state_dict(),
        "generator_ema": g_ema.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "scaler": {},
        "step": step,
        "rng": {"device_type": "cpu", "world_size": 1, "torch": torch.get_rng_state()},
        "config": config.model_dump(mode="json"),
        "dataset_id": DATASET_ID,
        "metrics": {"train_seconds": 42.0, "images_seen": step * config.batch_size, "best_swd": 80.0},
    }


def make_run(root: DataRoot, name: str = RUN, steps: tuple[int, ...] = (100, 200, 300)) -> Path:
    """runs/<name>/ with step checkpoints, best.pt, run.json, metrics.jsonl and fixed-noise grids."""
    config = tiny_config()
    run_dir = root.run_dir(name)
    for step in steps:
        save_checkpoint(
            run_dir / "checkpoints" / f"step-{step}.pt", checkpoint_state(config, step, seed=step)
        )
    save_checkpoint(run_dir / "checkpoints" / "best.pt", checkpoint_state(config, steps[1], seed=steps[1]))
    rng = np.random.default_rng(0)
    (run_dir / "grids").mkdir()
    for step in steps:
        grid = rng.integers(0, 256, (8 * 34 + 2, 8 * 34 + 2, 3), dtype=np.uint8)
        Image.fromarray(grid).save(run_dir / "grids" / f"step-{step}.png")
    rows = [
        {"step": s, "loss_d": 1.4 - s / 1000, "loss_g": 0.7 + s / 1000} for s in range(10, steps[-1] + 1, 10)
    ]
    rows[9]["swd"], rows[19]["swd"] = 120.0, 80.0
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3')
    run_info = {
        "run": name,
        "dataset_id": DATASET_ID,
        "config": config.model_dump(mode="json"),
        "status": "finished",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:01:00+00:00",
        "device": "cpu",
        "precision": "fp32",
        "world_size": 1,
        "step": steps[-1],
    }
    (run_dir / "run.json").write_text(json.dumps(run_info))
    atomic_symlink(name, root.runs_dir / "latest")
    return run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[DataRoot, Path, object]:
    root = DataRoot(tmp_path_factory.mktemp("data"))
    make_dataset(root)
    make_run(root)
    report = export(small_export(), root)
    return root, root.export_dir(RUN), report


def ema_generator(root: DataRoot, checkpoint: str = "best.pt") -> torch.nn.Module:
    ckpt = torch.load(root.run_dir(RUN) / "checkpoints" / checkpoint, weights_only=True)
    g = build_generator(TrainConfig(**ckpt["config"]))
    g.load_state_dict(ckpt["generator_ema"])
    return g.eval()


def test_export_writes_every_file_of_the_latest_run(exported):
    root, out, report = exported
    side = 8 * (IMAGE_SIZE + 2) + 2
    assert png(out / "grid.png").shape == (side, side, 3)
    samples = sorted((out / "samples").glob("*.png"))
    assert len(samples) == 6 and png(samples[0]).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert png(out / "interpolation.png").shape == (4 * (IMAGE_SIZE + 2) + 2, 4 * (IMAGE_SIZE + 2) + 2, 3)
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 4 * 4  # 4 keyframes, 4 steps between each
    with Image.open(out / "training.gif") as gif:
        assert gif.n_frames == 3  # one per grid of the run
    assert png(out / "training.png").shape[1] > 500
    assert png(out / "memorisation.png").shape[0] > IMAGE_SIZE * 4
    weights = torch.load(out / "generator.pt", weights_only=True)
    assert weights["config"]["image_size"] == IMAGE_SIZE and weights["info"]["step"] == 200
    assert torch.jit.load(out / "generator.torchscript.pt") is not None
    info = json.loads((out / "export.json").read_text())
    assert info["checkpoint"] == f"{RUN}/checkpoints/best.pt"
    assert info["fingerprint"] == input_fingerprint(small_export(), root)
    assert not [p for p in root.exports_dir.iterdir() if p.name.startswith(".")]  # nothing left over
    assert report.outputs["grid"] == str(out / "grid.png") and not report.skipped
    assert {"SWD x1000, 16 px", "SWD x1000, mean"} <= {row["metric"] for row in report.tables["metrics"]}


def test_metrics_json_has_swd_per_level_beside_the_noise_floor(exported):
    _, out, _ = exported
    result = json.loads((out / "metrics.json").read_text())
    swd, floor = result["swd"], result["swd_noise_floor"]
    assert swd["resolutions"] == floor["resolutions"] == [32, 16]
    assert swd["images"] == floor["images"] == 48
    # An untrained generator is far from real faces: well above what real images score against each other.
    assert swd["mean"] > 2 * floor["mean"]
    diversity = result["ms_ssim_diversity"]
    assert diversity["generated"]["images"] == diversity["real"]["images"] == 12
    assert 0 < diversity["real"]["mean"] < 1
    assert len(result["memorisation"]["nearest_index"]) == 16
    assert result["checkpoint"] == {"file": "best.pt", "step": 200, "dataset_id": DATASET_ID}


def test_model_card_tells_dataset_sources_licences_metrics_and_takedown(exported):
    _, out, _ = exported
    card = (out / "MODEL_CARD.md").read_text()
    for text in (DATASET_ID, "204 images", "| commons.example.org | 136 |", "| photos.example.net | 68 |"):
        assert text in card
    for text in ("| CC BY 4.0 | 68 |", "| CC0 | 68 |", "![samples](grid.png)", "faces forget", "noise floor"):
        assert text in card
    assert "## Intended use" in card and "## Limitations" in card and '"ngf": 8' in card
    assert "SWD x1000, 32 px" in card and "step 200" in card and "| device | cpu" in card


def test_torchscript_gives_the_pytorch_generators_images(exported):
    root, out, _ = exported
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))  # another batch size than traced
    with torch.no_grad():
        expected = ema_generator(root)(z)
        scripted = torch.jit.load(out / "generator.torchscript.pt")(z)
    assert torch.allclose(scripted, expected, atol=1e-5)
    assert expected.std() > 0.01  # real images, not a constant


def test_torchscript_runs_without_this_projects_code(exported, tmp_path):
    _, out, _ = exported
    script = (
        "import json, sys, numpy as np, torch\n"
        "for name in ('models', 'common', 'flows'): sys.modules[name] = None  # importing them now fails\n"
        "extra = {'faces.json': ''}\n"
        f"g = torch.jit.load({str(out / 'generator.torchscript.pt')!r}, _extra_files=extra)\n"
        "nz = json.loads(extra['faces.json'])['nz']\n"
        "z = torch.randn(3, nz, generator=torch.Generator().manual_seed(1))\n"
        "x = ((g(z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)\n"
        f"np.save({str(tmp_path / 'alone.npy')!r}, x.numpy())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=120)
    paths = inference.sample(out / "generator.torchscript.pt", n=3, seed=1, out_dir=tmp_path / "cli")
    assert np.array_equal(np.load(tmp_path / "alone.npy"), np.stack([png(p) for p in paths]))


def test_sample_is_deterministic_for_a_seed_from_either_file(exported, tmp_path):
    _, out, _ = exported
    first = inference.sample(out / "generator.torchscript.pt", n=4, seed=1, out_dir=tmp_path / "a")
    again = inference.sample(out / "generator.torchscript.pt", n=4, seed=1, out_dir=tmp_path / "b")
    weights = inference.sample(out / "generator.pt", n=4, seed=1, out_dir=tmp_path / "c")
    other = inference.sample(out / "generator.pt", n=4, seed=2, out_dir=tmp_path / "d")
    assert [p.name for p in first] == [
        "sample-0000.png",
        "sample-0001.png",
        "sample-0002.png",
        "sample-0003.png",
    ]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first, again, strict=True))
    assert all(np.array_equal(png(p), png(q)) for p, q in zip(first, weights, strict=True))
    assert not np.array_equal(png(first[0]), png(other[0]))
    with pytest.raises(BadInputError, match="not an exported generator"):
        inference.sample(
            next(Path(out).parent.parent.glob("runs/*/checkpoints/best.pt")), 1, 0, tmp_path / "e"
        )
    with pytest.raises(BadInputError, match="no generator at"):
        inference.sample(tmp_path / "missing.pt", 1, 0, tmp_path / "e")
    with pytest.raises(BadInputError, match=r"--seed -1: a seed is a whole number from 0 to 4294967295"):
        inference.sample(out / "generator.pt", 1, -1, tmp_path / "e")
    (tmp_path / "a-file.png").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"a-file.png: is a file; name a folder"):
        inference.sample(out / "generator.pt", 1, 0, tmp_path / "a-file.png")


def test_unchanged_export_is_skipped_and_a_new_config_redone(exported):
    root, out, _ = exported
    before = (out / "export.json").read_text()
    again = export(small_export(), root)
    assert again.skipped and (out / "export.json").read_text() == before
    assert again.tables["metrics"]  # the skipped report still shows the metrics


def test_failed_export_keeps_the_old_folder_whole(exported, tmp_path):
    shutil.copytree(exported[0].root, tmp_path, symlinks=True, dirs_exist_ok=True)
    root = DataRoot(tmp_path)
    out = root.export_dir(RUN)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The dataset vanishes: export fails halfway, after the generator files and pictures are written.
    shutil.rmtree(root.datasets_dir)
    with pytest.raises(BadInputError, match="faces validate"):
        export(small_export(seed=5), root)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in root.exports_dir.iterdir()) == [RUN]


def test_fid_without_its_weights_file_fails_before_any_work(exported, tmp_path):
    root, out, _ = exported
    before = (out / "export.json").read_text()
    with pytest.raises(BadInputError, match="inception_weights = .*missing.pth: no such file"):
        export(small_export(inception_weights=str(tmp_path / "missing.pth")), root)
    assert (out / "export.json").read_text() == before


def test_a_damaged_best_checkpoint_falls_back_to_the_newest_step(tmp_path):
    root = DataRoot(tmp_path)
    run_dir = make_run(root, steps=(100, 200))
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"cut short by a full disk")
    notes: list[str] = []
    ckpt, path = load_run_checkpoint(run_dir, notes)
    assert path.name == "step-200.pt" and ckpt["step"] == 200
    assert "damaged" in notes[0] and "best.pt" in notes[0]


def test_export_names_the_missing_run_or_checkpoint(tmp_path):
    root = DataRoot(tmp_path)
    with pytest.raises(BadInputError, match="faces train"):
        export(small_export(), root)
    (root.run_dir("empty") / "checkpoints").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no checkpoint"):
        export(small_export(), root, run="empty")
    with pytest.raises(BadInputError, match="empty"):
        export(small_export(), root, run="nope")


def test_onnx_generator_gives_the_pytorch_generators_images(exported, tmp_path):
    """Only where the optional onnx, onnxscript and onnxruntime packages are installed."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from export.generator_files import write_onnx

    root, _, _ = exported
    generator = ema_generator(root)
    assert write_onnx(generator, 16, tmp_path / "generator.onnx") == "generator.onnx"
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(tmp_path / "generator.onnx"))
    with torch.no_grad():
        expected = generator(z).numpy()
    assert np.abs(session.run(None, {"z": z.numpy()})[0] - expected).max() < 1e-4
