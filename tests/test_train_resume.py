"""A training process killed with SIGKILL resumes from its last checkpoint, as if never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.layout import DataRoot
from models.runs import latest_dataset, run_name
from models.train import train
from tests.train_helpers import TINY, blobs, make_dataset, rows, tiny, weights

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def write_toml(path: Path, table: dict) -> Path:
    lines = ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_training(tmp_path: Path, root: DataRoot, settings: dict) -> subprocess.Popen:
    """`python -m models.train` on `root` with `settings` and a step count it will not reach."""
    config_file = write_toml(tmp_path / "faces.toml", settings | {"steps": 100_000})
    with open(tmp_path / "train.log", "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "models.train",
                "--config",
                str(config_file),
                "--data-dir",
                str(root.root),
            ],
            cwd=REPO,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def kill_when(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (it must hold before the process exits by itself)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"training exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "training never got there"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_mid_training_then_resume_continues_the_step_count(tmp_path):
    root = DataRoot(tmp_path / "killed")
    make_dataset(root, blobs())
    settings = TINY | {"sample_every": 1000, "eval_every": 1000}
    run_dir = root.run_dir(run_name(tiny(**settings), latest_dataset(root)[1]))

    # A run meant to go on for a long time, from the command line, killed right after step 8's checkpoint.
    proc = start_training(tmp_path, root, settings)
    kill_when((run_dir / "checkpoints" / "step-8.pt").exists, proc)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # died mid-run
    steps = 40
    resumed = train(tiny(**settings, steps=steps), root)
    assert 8 <= resumed.counts["resumed_from_step"] < steps
    assert resumed.counts["steps"] == steps and resumed.counts["images_seen"] == steps * TINY["batch_size"]
    assert [r["step"] for r in rows(run_dir)] == list(range(2, steps + 1, 2))  # no gap, no repeat

    # Exactly the networks an uninterrupted run ends with: data order, noise and optimiser state resumed.
    whole = DataRoot(tmp_path / "whole")
    make_dataset(whole, blobs())
    uninterrupted = train(tiny(**settings, steps=steps), whole)
    for key in ("generator", "discriminator", "generator_ema"):
        a = weights(Path(resumed.outputs["latest_checkpoint"]), key)
        b = weights(Path(uninterrupted.outputs["latest_checkpoint"]), key)
        assert all(torch.equal(a[k], b[k]) for k in a), key


def test_a_kill_before_the_first_checkpoint_leaves_no_repeated_metrics_rows(tmp_path):
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs())
    settings = TINY | {"checkpoint_every": 50_000, "sample_every": 50_000, "eval_every": 50_000}
    run_dir = root.run_dir(run_name(tiny(**settings), latest_dataset(root)[1]))
    metrics = run_dir / "metrics.jsonl"

    # Killed after a few logged rows (every 2 steps), long before its first checkpoint.
    proc = start_training(tmp_path, root, settings)
    kill_when(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc)
    assert list((run_dir / "checkpoints").glob("step-*.pt")) == []
    assert len(rows(run_dir)) >= 3

    steps = 20
    report = train(tiny(**settings, steps=steps), root)
    assert report.counts["resumed_from_step"] == 0
    assert [r["step"] for r in rows(run_dir)] == list(range(2, steps + 1, 2))  # in order, each once


KILLED_IN_THE_BEST_CHECKPOINT = """
import os, re, signal, sys
import models.checkpoint
from models.cli import main

copies = []
def copy_then_die(src, dst):  # in the second best checkpoint (the first, step 4's, is always a best)
    copies.append(dst)
    if len(copies) == 2:
        step = next(m.group(1) for p in (src, dst) if (m := re.match(r"step-(\\d+)\\.pt", p.name)))
        open(os.environ["KILLED_AT"], "w").write(step)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)

real, models.checkpoint.copy_checkpoint = models.checkpoint.copy_checkpoint, copy_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_between_a_best_checkpoints_two_files_leaves_best_pt_the_lowest_swd(tmp_path):
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs(n=48))
    settings = TINY | {"sample_every": 1000}  # an SWD evaluation and a checkpoint every 4 steps
    config_file = write_toml(tmp_path / "faces.toml", settings | {"steps": 200})
    command = [sys.executable, "-c", KILLED_IN_THE_BEST_CHECKPOINT, "--config", str(config_file)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "KILLED_AT": str(tmp_path / "killed-at")}
    killed = subprocess.run(command + ["--data-dir", str(root.root)], cwd=REPO, env=env)
    assert killed.returncode == -signal.SIGKILL  # it died inside saving a new best checkpoint
    step = int((tmp_path / "killed-at").read_text())

    report = train(tiny(**settings, steps=step), root)  # up to that step: no later best can mend it

    run_dir = Path(report.outputs["run_dir"])
    evaluated = [(r["swd"], r["step"]) for r in rows(run_dir) if "swd" in r]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == min(evaluated)[1] == step, (best["step"], evaluated)
    assert json.loads((run_dir / "run.json").read_text())["best_swd"] == min(evaluated)[0]


def test_a_warm_start_killed_before_its_first_checkpoint_still_starts_from_the_parent(tmp_path):
    settings = TINY | {"checkpoint_every": 50_000, "sample_every": 50_000, "eval_every": 50_000}
    roots = [DataRoot(tmp_path / name) for name in ("killed", "whole")]
    for root in roots:  # night one, then night two's grown dataset
        make_dataset(root, blobs(n=24))
        train(tiny(**settings, steps=8), root)
        make_dataset(root, blobs(n=32))
    killed, whole = roots
    run_dir = killed.run_dir(run_name(tiny(**settings), latest_dataset(killed)[1]))
    metrics = run_dir / "metrics.jsonl"
    proc = start_training(tmp_path, killed, settings)
    kill_when(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, proc)

    resumed = train(tiny(**settings, steps=12), killed)
    uninterrupted = train(tiny(**settings, steps=12), whole)

    assert json.loads((run_dir / "run.json").read_text())["parent"] is not None
    for key in ("generator", "discriminator"):  # the parent's networks, not a fresh start's
        a = weights(Path(resumed.outputs["latest_checkpoint"]), key)
        b = weights(Path(uninterrupted.outputs["latest_checkpoint"]), key)
        assert all(torch.equal(a[k], b[k]) for k in a), key
