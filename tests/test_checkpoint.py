"""Checkpoint files: atomic, plain data, and a damaged one is set aside for the previous one."""

from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    CHECKPOINT_KEYS,
    CorruptCheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    prune,
    save_checkpoint,
    step_path,
)


def state(step: int, fill: float = 1.0) -> dict:
    net = {"w": torch.full((2, 2), fill), "num_batches_tracked": torch.tensor(step)}
    return {
        "generator": net,
        "discriminator": net,
        "generator_ema": net,
        "opt_g": {"state": {}, "param_groups": []},
        "opt_d": {"state": {}, "param_groups": []},
        "scaler": {},
        "step": step,
        "rng": {"generators": [torch.zeros(8, dtype=torch.uint8)]},
        "config": {"ngf": 4},
        "dataset_id": "abc",
        "metrics": {"loss_d": 0.5},
    }


def test_checkpoints_round_trip_with_weights_only(tmp_path):
    path = save_checkpoint(step_path(tmp_path, 3), state(3))
    assert set(torch.load(path, weights_only=True)) == set(CHECKPOINT_KEYS)
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["step-3.pt"]  # no temporary file left behind
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "x.pt", {"step": 1})


@pytest.mark.parametrize("damage", ["truncated", "garbage", "nan"])
def test_a_damaged_latest_checkpoint_is_set_aside_for_the_previous(tmp_path, damage):
    for step in (10, 20):
        save_checkpoint(step_path(tmp_path, step), state(step))
    newest = step_path(tmp_path, 20)
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:-100])
    elif damage == "garbage":
        newest.write_bytes(b"\0" * 1000)
    else:
        save_checkpoint(newest, state(20, fill=float("nan")))
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(newest)

    loaded, path = load_latest(tmp_path)
    assert loaded["step"] == 10 and path.name == "step-10.pt"
    assert (tmp_path / "step-20.pt.corrupt").exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]


def test_prune_keeps_the_newest(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(step_path(tmp_path, step), state(step))
    (tmp_path / "best.pt").write_bytes(step_path(tmp_path, 5).read_bytes())
    removed = prune(tmp_path, keep=2)
    assert sorted(Path(p).name for p in removed) == ["step-10.pt", "step-5.pt"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20] and (tmp_path / "best.pt").exists()
