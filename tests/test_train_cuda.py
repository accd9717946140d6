"""Training on a CUDA GPU: the speed-ups are used, checkpoints move to the CPU, runs resume and stop.

Skipped where there is no GPU (CI, laptops); run them on one with `pytest tests/test_train_cuda.py`.
The CPU tests cover the same behaviour; these check what only CUDA runs: bf16 and fp16 autocast,
channels_last, fused Adam, torch.compile, cuDNN autotuning, CUDA random states and NCCL.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.layout import DataRoot
from export.inference import sample
from export.stage import export
from models.checkpoint import list_checkpoints
from models.config import TrainConfig
from models.dcgan import build_generator
from models.runs import latest_dataset, run_name
from models.train import train
from models.trainer import Trainer, TrainingDivergedError
from tests import export_data
from tests.train_helpers import TINY, blobs, make_dataset, rows

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
REPO = Path(__file__).resolve().parents[1]


def gpu(**overrides) -> TrainConfig:
    return TrainConfig(**(TINY | {"image_size": 64, "ngf": 16, "ndf": 16, "batch_size": 16} | overrides))


@pytest.fixture()
def root(tmp_path) -> DataRoot:
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs(n=64))
    return root


def test_cuda_run_uses_the_speed_ups_and_its_checkpoint_samples_on_the_cpu(root, tmp_path):
    dataset_dir, dataset_id = latest_dataset(root)
    trainer = Trainer(gpu(), dataset_dir / "images.npy", tmp_path / "run", dataset_id)
    assert trainer.device.type == "cuda" and trainer.precision == "bf16"
    assert torch.backends.cudnn.benchmark
    assert all(group["fused"] for group in trainer.opt_d.param_groups + trainer.opt_g.param_groups)
    conv = next(p for p in trainer.d_raw.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert trainer.real_batch().is_contiguous(memory_format=torch.channels_last)
    trainer.close()

    report = train(gpu(steps=8), root)
    assert report.counts["steps"] == 8
    run_dir = Path(report.outputs["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["precision"] == "bf16"
    logged = rows(run_dir)
    assert all(torch.isfinite(torch.tensor(r["loss_d"])) for r in logged)

    # The checkpoint of a CUDA run is a plain CPU-loadable file.
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True, map_location="cpu")
    g = build_generator(TrainConfig(**ckpt["config"]))
    g.load_state_dict(ckpt["generator_ema"])
    images = g.eval()(torch.randn(4, 8, 1, 1))
    assert images.shape == (4, 3, 64, 64) and images.std(0).mean() > 0.01


@pytest.fixture()
def exact_cuda():
    """Deterministic cuDNN kernels, no TF32: two runs of the same steps give the same bits."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    saved_tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

    def exact() -> None:  # after each Trainer is built: it turns autotuning and TF32 on
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    yield exact
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32


def twelve_steps(trainer: Trainer, switch_on_at: int | None) -> list[dict]:
    """Twelve measured steps; at step `switch_on_at` adaptive augmentation's p goes from 0 to 0.5."""
    figures = []
    for step in range(12):
        if step == switch_on_at:
            trainer.augment.set_p(0.5)
        figures.append(trainer.train_step(measure=True))
    return figures


@pytest.mark.parametrize(
    "augment, switch_on_at",
    [({"augment": ""}, None), ({"augment_target": None, "augment_p": 0.5}, None), ({}, 6)],
    ids=["no augmentation", "fixed p", "adaptive p switched on mid-run"],
)
def test_replayed_cuda_graph_trains_exactly_like_eager_steps(
    root, tmp_path, exact_cuda, augment, switch_on_at
):
    # The same run with and without CUDA graphs: after the first eager steps every step is a replay
    # on new inputs, and it computes the very same weights and figures as the eager steps, with the
    # augmentation of each step's draws, and when augmentation switches on (a new graph is captured).
    dataset_dir, dataset_id = latest_dataset(root)
    runs = {}
    for graphs in (False, True):
        config = gpu(cuda_graphs=graphs, precision="fp32", **augment)
        trainer = Trainer(config, dataset_dir / "images.npy", tmp_path / str(graphs), dataset_id)
        exact_cuda()
        runs[graphs] = trainer, twelve_steps(trainer, switch_on_at)
    (eager, eager_figures), (graphed, graphed_figures) = runs[False], runs[True]
    assert graphed.graphed_step.captured and not eager.graphed_step.captured
    for key, value in eager.g_raw.state_dict().items():
        assert torch.equal(graphed.g_raw.state_dict()[key], value), key
    for key, value in eager.d_raw.state_dict().items():
        assert torch.equal(graphed.d_raw.state_dict()[key], value), key
    assert [f["loss_d"].item() for f in graphed_figures] == [f["loss_d"].item() for f in eager_figures]
    assert len({f["loss_g"].item() for f in graphed_figures[4:]}) == 8  # each replay's figures are its own
    assert int(graphed.opt_g.state_dict()["state"][0]["step"]) == 12


def test_cuda_run_resumes_with_its_random_state(root):
    # Eight steps at once, and four then four more, end with the same weights up to cuDNN's
    # non-determinism: the CUDA random stream and the fused optimisers' state came back.
    whole = train(gpu(steps=8, checkpoint_every=4), root, force=True)
    expected = torch.load(whole.outputs["latest_checkpoint"], weights_only=True, map_location="cpu")
    train(gpu(steps=4, checkpoint_every=4), root, force=True)
    resumed = train(gpu(steps=8, checkpoint_every=4), root)
    assert resumed.counts["resumed_from_step"] == 4 and resumed.counts["steps"] == 8
    got = torch.load(resumed.outputs["latest_checkpoint"], weights_only=True, map_location="cpu")
    for key, value in expected["generator"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["generator"][key], value, rtol=0.05, atol=2e-3)


def test_fp16_trains_with_loss_scaling(root):
    report = train(gpu(steps=6, precision="fp16"), root)
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["scaler"]["scale"] > 0  # the GradScaler ran and was saved
    assert all(torch.isfinite(v).all() for v in ckpt["generator"].values() if v.is_floating_point())


def test_compiled_networks_train_and_save_plain_state_dicts(root):
    report = train(gpu(steps=4, compile=True), root)
    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True, map_location="cpu")
    assert not any("_orig_mod" in key for key in ckpt["generator"])
    build_generator(TrainConfig(**ckpt["config"])).load_state_dict(ckpt["generator"])


def test_nan_on_cuda_stops_after_restoring_the_last_good_checkpoint(root, tmp_path):
    dataset_dir, dataset_id = latest_dataset(root)
    trainer = Trainer(gpu(log_every=1), dataset_dir / "images.npy", tmp_path / "run", dataset_id)
    assert trainer.run(4) == "finished"
    with torch.no_grad():
        next(trainer.d_raw.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="NaN or Inf between steps 4 and 5"):
        trainer.run(8)
    assert trainer.step == 4 and all(torch.isfinite(p).all() for p in trainer.d_raw.parameters())
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [4]


def test_torchrun_on_the_gpu_trains_with_nccl_and_sync_batchnorm(root, tmp_path):
    # One process per GPU on however many this machine has (NCCL allows one process per device).
    processes = torch.cuda.device_count()
    settings = TINY | {"image_size": 64, "batch_size": 8 * processes, "steps": 4, "device": "cuda"}
    config_file = tmp_path / "faces.toml"
    config_file.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "models.train", "--config", str(config_file), "--data-dir", str(root.root)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = root.run_dir(run_name(TrainConfig(**settings), latest_dataset(root)[1]))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == processes and info["precision"] == "bf16"


@pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit")
def test_export_of_a_cuda_run_on_the_gpu_samples_alike_on_the_cpu(tmp_path):
    root = DataRoot(tmp_path / "data")
    export_data.make_dataset(root)  # real face crops with provenance, as validate leaves them
    train(gpu(image_size=32, steps=8), root)
    out = Path(export(export_data.small_export(device="auto"), root).outputs["weights"]).parent
    assert json.loads((out / "export.json").read_text())["device"].startswith("cuda")
    on_gpu = sample(out / "generator.pt", 4, seed=1, out_dir=tmp_path / "gpu", device="cuda")
    on_cpu = sample(out / "generator.pt", 4, seed=1, out_dir=tmp_path / "cpu", device="cpu")
    for a, b in zip(on_gpu, on_cpu, strict=True):
        diff = np.abs(export_data.png(a).astype(int) - export_data.png(b).astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 16  # the same images up to TF32 and cuDNN rounding
