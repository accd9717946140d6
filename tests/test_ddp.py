"""DistributedDataParallel on the CPU (gloo): two processes, one shard each, identical networks."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from common.layout import DataRoot
from models import ddp
from models.config import TrainConfig
from models.runs import latest_dataset, run_name
from models.trainer import Trainer
from tests.train_helpers import TINY, blobs, make_dataset, tiny

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, images: str, run_dir: str, out: str, settings: dict) -> None:
    os.environ |= {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
    }
    torch.set_num_threads(1)
    dist = ddp.setup(use_cuda=False)
    trainer = Trainer(TrainConfig(**settings), Path(images), Path(run_dir), "toy", dist)
    initial = {k: v.clone() for k, v in trainer.g_raw.state_dict().items()}
    trainer.run(STEPS)
    torch.save(
        {
            "initial": initial,
            "generator": trainer.g_raw.state_dict(),
            "discriminator": trainer.d_raw.state_dict(),
            "shard": trainer.data.images.clone(),
        },
        Path(out) / f"rank{rank}.pt",
    )
    trainer.close()
    ddp.teardown(dist)


def test_two_gloo_processes_hold_identical_weights_after_training(tmp_path):
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs(n=16))
    images = latest_dataset(root)[0] / "images.npy"
    settings = TINY | {"checkpoint_every": 3, "sample_every": 1000, "eval_every": 1000}
    args = (free_port(), str(images), str(tmp_path / "run"), str(tmp_path), settings)
    mp.spawn(_worker, args=args, nprocs=2, join=True)

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0["shard"]) == len(rank1["shard"]) == 8  # each process holds half the dataset
    assert not torch.equal(rank0["shard"], rank1["shard"])
    for net in ("generator", "discriminator"):
        for name, tensor in rank0[net].items():
            if "running_" in name:
                # Without SyncBatchNorm (GPU only) each process's last forward updated its own running
                # averages after DDP copied rank 0's in; only rank 0's are saved (models/ddp.py).
                continue
            assert torch.equal(tensor, rank1[net][name]), f"{net}.{name} differs between the processes"
    moved = [
        k
        for k, v in rank0["generator"].items()
        if v.is_floating_point() and not torch.equal(v, rank0["initial"][k])
    ]
    assert moved, "the generator did not train"

    # Rank 0 alone wrote the checkpoints, and they hold what both processes hold.
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-6.pt", weights_only=True)
    assert saved["rng"]["world_size"] == 2 and len(saved["rng"]["generators"]) == 2
    assert all(torch.equal(v, rank0["generator"][k]) for k, v in saved["generator"].items())


def test_torchrun_entry_point_trains_one_run_with_two_processes(tmp_path):
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs(n=16))
    settings = TINY | {"steps": 4, "sample_every": 1000, "eval_every": 1000}
    config_file = tmp_path / "faces.toml"
    config_file.write_text("[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "models.train", "--config", str(config_file), "--data-dir", str(root.root)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("# train") == 1  # one report, from rank 0

    run_dir = root.run_dir(run_name(tiny(**settings), latest_dataset(root)[1]))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2 and info["step"] == 4
    assert (root.runs_dir / "latest").resolve() == run_dir
