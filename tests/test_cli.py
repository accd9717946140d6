"""The `faces` command: a failed stage exits non-zero with a one-line reason."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


def test_failed_stage_exits_nonzero_with_one_line_reason(tmp_path):
    env_home = tmp_path / "prefect"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "--stages",
            "validate,train",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PREFECT_HOME": str(env_home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(env_home / "results"),
        },
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("faces: error: "), result.stderr[-2000:]
    assert "preprocess" in last  # names what is missing and the stage that makes it
    assert not (tmp_path / "d" / "runs").exists()  # training never started


def test_unknown_stage_is_named():
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--stages", "scrape,trian"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "trian" in result.stderr and result.stderr.count("\n") == 1


def _faces(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_a_config_error_is_reported_before_prefect_or_torch_is_imported(tmp_path):
    """The config is checked first: the user does not wait for Prefect's and torch's start-up."""
    bad = tmp_path / "faces.toml"
    bad.write_text('[train]\nsteps = "300"\n')
    probe = (
        "import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, 'prefect' in sys.modules, 'torch' in sys.modules)"
    )
    for command in (["run"], ["train"], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-c", probe, *command, "--config", str(bad)], capture_output=True, text=True
        )
        assert result.stdout.split() == ["1", "False", "False"], (command, result.stdout, result.stderr)
        assert "[train] steps: must be a number, not text" in result.stderr


def test_an_empty_data_dir_is_an_error_not_the_default(tmp_path):
    for command in (["run"], ["train"], ["demo"]):
        result = _faces(*command, "--data-dir", "", cwd=tmp_path)
        assert result.returncode == 1
        assert "--data-dir is empty" in result.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither ./data nor ./demo-data


def test_demo_steps_must_be_positive_and_nothing_starts_otherwise():
    for steps in ("0", "-1", "many"):
        result = _faces("demo", "--steps", steps)
        assert result.returncode == 2
        assert "argument --steps" in result.stderr and "demo gallery at" not in result.stdout


def test_two_commands_started_together_each_get_their_own_temporary_server(tmp_path):
    """Two `faces` runs seconds apart must not share (and then stop) one temporary Prefect server."""
    home = tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "r")}
    env.pop("PREFECT_API_URL", None)
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--stages", "train", "--data-dir", str(tmp_path / d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for d in ("a", "b")
    ]
    outputs = [c.communicate(timeout=300)[0] for c in commands]
    ports = []
    for command, output in zip(commands, outputs, strict=True):
        assert command.returncode == 1, output[-2000:]
        assert output.strip().splitlines()[-1].startswith("faces: error: "), output[-2000:]  # its own verdict
        ports += re.findall(r"temporary Prefect server at http://127\.0\.0\.1:(\d+)", output)
    assert len(ports) == 2 and ports[0] != ports[1], outputs


FACES_TOML = """
[train]
image_size = 32
ngf = 4
ndf = 4
nz = 8
batch_size = 8
steps = 2
log_every = 2
checkpoint_every = 2
sample_every = 2
eval_every = 1000
eval_samples = 16
progress_bar = false
tensorboard = false

[export]
n_samples = 1
interpolation_steps = 2
eval_samples = 16
diversity_samples = 4
onnx = false
device = "cpu"
"""


def test_train_and_export_print_their_notes_after_the_counts(tmp_path, one_thread):
    """What the counts cannot say reaches the terminal: a warm start, a damaged checkpoint skipped, a
    run's dataset gone so that the metrics use another."""
    from common.layout import DataRoot
    from flows.config import load_config
    from models.train import train
    from tests.export_data import DATASET_ID, make_dataset
    from tests.train_helpers import blobs
    from tests.train_helpers import make_dataset as make_blobs

    (tmp_path / "faces.toml").write_text(FACES_TOML)
    root = DataRoot(tmp_path / "data")
    make_dataset(root)
    first = Path(train(load_config(tmp_path / "faces.toml").train, root).outputs["run_dir"])
    (first / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    make_blobs(root, blobs(24, size=32))  # the next night's snapshot; the first one is pruned
    shutil.rmtree(root.dataset_dir(DATASET_ID))

    trained = _faces("train", "--data-dir", str(root.root), cwd=tmp_path)
    exported = _faces("export", "--run", first.name, "--data-dir", str(root.root), cwd=tmp_path)

    assert trained.returncode == 0, trained.stderr[-2000:]
    lines = trained.stdout.splitlines()
    counts = next(i for i, line in enumerate(lines) if line.startswith("train: steps=2"))
    assert f"  - warm start from run {first.name} (step 2)" in lines[counts + 1 :]
    assert exported.returncode == 0, exported.stderr[-2000:]
    out = exported.stdout
    assert "  - skipped a damaged checkpoint: " in out and "best.pt: unreadable" in out
    assert f"  - dataset {DATASET_ID} (the run's) is gone: pruned by [validate] retention" in out
    assert out.index("export: step=2") < out.index("  - dataset") < out.index("  model_card: ")
