"""What training leaves alone and what it tidies: a forced retrain with bad settings deletes nothing,
and the temporary files of a killed writer are gone after the next run."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from common.layout import DataRoot
from common.report import BadInputError
from models.checkpoint import list_checkpoints
from models.train import train
from tests.train_helpers import blobs, make_dataset, rows, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def break_dataset(root: DataRoot) -> None:
    (root.latest_dataset / "images.npy").write_bytes(b"not numpy at all")


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


@pytest.mark.parametrize(
    "bad, problem",
    [
        pytest.param({"device": "cuda"}, 'device = "cuda" but no CUDA GPU', marks=NO_CUDA),
        ({"device": "cuda:99"}, 'device = "cuda:99"'),
        ("broken dataset", "not a readable .npy"),
    ],
)
def test_a_forced_retrain_with_bad_settings_keeps_the_finished_run(tmp_path, bad, problem):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs())
    finished = train(tiny(steps=4), root)
    run_dir = Path(finished.outputs["run_dir"])
    before = files_of(run_dir)
    assert {"run.json", "metrics.jsonl", "checkpoints/step-4.pt", "grids/step-4.png"} <= set(before)

    config = tiny(steps=4)
    if bad == "broken dataset":
        break_dataset(root)
    else:
        config = tiny(steps=4, **bad)
    with pytest.raises(BadInputError, match=problem):
        train(config, root, force=True)
    assert files_of(run_dir) == before  # checkpoints, grids, metrics and run.json all still there
    assert (root.runs_dir / "latest").resolve() == run_dir


def leave_temp_file(target: Path, suffix: str = "") -> Path:
    """A temporary file as common.files.atomic_path names it, left behind by a writer that was killed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.write(fd, b"half a file")
    os.close(fd)
    return Path(name)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs())
    config = tiny(steps=4)
    run_dir = Path(train(config, root).outputs["run_dir"])
    leftovers = [
        leave_temp_file(run_dir / "checkpoints" / "step-8.pt"),
        leave_temp_file(run_dir / "checkpoints" / "best.pt"),
        leave_temp_file(run_dir / "grids" / "step-8.png"),
        leave_temp_file(run_dir / "run.json"),
        leave_temp_file(run_dir / "metrics.jsonl"),
    ]
    link = root.runs_dir / f".latest.tmp-{dead_pid()}"  # common.files.atomic_symlink's, killed mid-swap
    os.symlink(run_dir.name, link)

    report = train(config.model_copy(update={"steps": 8}), root)  # resumes the run from step 4
    assert report.counts["resumed_from_step"] == 4
    assert [p for p in leftovers if p.exists()] == [] and not link.is_symlink()
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [4, 8]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert sorted(p.name for p in (run_dir / "grids").iterdir()) == ["step-4.png", "step-8.png"]
    assert [r["step"] for r in rows(run_dir)] == [2, 4, 6, 8]
    assert (root.runs_dir / "latest").resolve() == run_dir


def test_a_run_that_fails_says_so_in_run_json_with_the_reason(tmp_path, monkeypatch):
    """A full disk while checkpointing (torch's own error text for it) leaves run.json "failed", not
    "running", so a user reading the run knows it stopped and why."""
    root = DataRoot(tmp_path)
    make_dataset(root, blobs())

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        train(tiny(steps=4), root)
    info = json.loads(next(root.runs_dir.glob("*/run.json")).read_text())
    assert info["status"] == "failed" and "unexpected pos" in info["error"]
