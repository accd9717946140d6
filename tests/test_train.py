"""Training: learns, reproduces, skips finished work, warm-starts, stops cleanly, watches itself.

Tiny networks on 32x32 images on the CPU: each run is a few seconds of real training.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.layout import DataRoot
from common.report import BadInputError
from models.checkpoint import CHECKPOINT_KEYS, list_checkpoints
from models.config import TrainConfig
from models.dcgan import build_generator
from models.runs import latest_dataset, run_name
from models.train import input_fingerprint, train
from models.trainer import Trainer, TrainingDivergedError
from tests.train_helpers import blobs, make_dataset, rows, tiny, weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def root(tmp_path) -> DataRoot:
    root = DataRoot(tmp_path / "data")
    make_dataset(root, blobs())
    return root


def test_discriminator_loss_falls_on_separable_data(tmp_path):
    # Real images are bright, G barely moves (lr_g tiny): D should learn to tell them apart quickly.
    root = DataRoot(tmp_path)
    make_dataset(root, np.full((16, 32, 32, 3), 230, dtype=np.uint8))
    report = train(tiny(steps=24, lr_g=1e-9, lr_d=1e-3, flip=False, checkpoint_every=24), root)
    losses = [r["loss_d"] for r in rows(Path(report.outputs["run_dir"])) if "loss_d" in r]
    assert losses[0] > 1.0, losses  # about 2 ln 2 at the start: D cannot tell
    assert losses[-1] < 0.3 * losses[0], losses


def test_run_writes_contract_checkpoints_grids_and_metrics(root):
    report = train(tiny(steps=8), root)
    run_dir = Path(report.outputs["run_dir"])
    assert report.counts["steps"] == 8 and report.counts["images_seen"] == 64
    assert report.counts["images_per_second"] > 0
    assert (root.runs_dir / "latest").resolve() == run_dir
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [4, 8]
    assert Path(report.outputs["grid"]) == run_dir / "grids" / "step-8.png"
    assert Path(report.outputs["best_checkpoint"]).is_file()

    ckpt = torch.load(report.outputs["latest_checkpoint"], weights_only=True)
    assert set(ckpt) == set(CHECKPOINT_KEYS)
    assert ckpt["step"] == 8 and ckpt["dataset_id"] == latest_dataset(root)[1]
    g = build_generator(TrainConfig(**ckpt["config"]))
    g.load_state_dict(ckpt["generator_ema"])
    images = g.eval()(torch.randn(4, 8, 1, 1))
    assert images.shape == (4, 3, 32, 32) and images.abs().max() <= 1
    assert images.std(0).mean() > 0.01  # the EMA generator in eval mode gives varied images

    logged = rows(run_dir)
    assert [r["step"] for r in logged] == [2, 4, 6, 8]
    for key in ("loss_d", "loss_g", "d_x", "d_g_z", "grad_norm_d", "grad_norm_g", "images_per_second"):
        assert all(np.isfinite(r[key]) for r in logged), key
    assert "diversity" in logged[1] and "collapsed" in logged[1]
    swd = {r["step"]: r["swd"] for r in logged if "swd" in r}  # evaluated at steps 4 and 8
    best = torch.load(report.outputs["best_checkpoint"], weights_only=True)
    assert sorted(swd) == [4, 8] and best["metrics"]["swd"] == min(swd.values())
    assert best["step"] == min(swd, key=swd.get)
    info = json.loads((run_dir / "run.json").read_text())
    assert (
        info["status"] == "finished" and info["parent"] is None and info["dataset_id"] == ckpt["dataset_id"]
    )


def test_same_seed_same_result_and_another_seed_differs(tmp_path):
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        root = DataRoot(tmp_path / name)
        make_dataset(root, blobs())
        results.append(weights(Path(train(tiny(steps=4, seed=seed), root).outputs["latest_checkpoint"])))
    a, b, c = results
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_unchanged_dataset_and_config_does_nothing_unless_forced(root):
    config = tiny(steps=4)
    first = train(config, root)
    checkpoint = Path(first.outputs["latest_checkpoint"])
    mtime = checkpoint.stat().st_mtime_ns

    again = train(config.model_copy(update={"log_every": 1}), root)  # how it is logged is not a new run
    assert again.skipped and again.outputs["run_dir"] == first.outputs["run_dir"]
    assert checkpoint.stat().st_mtime_ns == mtime

    longer = train(config.model_copy(update={"steps": 6}), root)  # more steps extend the same run
    assert not longer.skipped and longer.counts["resumed_from_step"] == 4 and longer.counts["steps"] == 6

    forced = train(config, root, force=True)
    assert not forced.skipped and forced.counts["resumed_from_step"] == 0 and forced.counts["steps"] == 4
    assert [r["step"] for r in rows(Path(forced.outputs["run_dir"]))] == [2, 4]


def test_settings_changed_back_make_their_finished_run_the_latest_again(root):
    first = train(tiny(steps=4), root)
    train(tiny(steps=4, lr_g=5e-4), root)
    again = train(tiny(steps=4), root)
    assert again.skipped  # nothing to train: that run finished yesterday
    assert root.latest_run.resolve() == Path(first.outputs["run_dir"]).resolve()  # what export takes


def test_truncated_checkpoint_falls_back_to_the_previous(root):
    config = tiny(steps=8)
    run_dir = Path(train(config, root).outputs["run_dir"])
    newest = run_dir / "checkpoints" / "step-8.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    report = train(config.model_copy(update={"steps": 10}), root)
    assert report.counts["resumed_from_step"] == 4
    assert report.counts["steps"] == 10
    assert (run_dir / "checkpoints" / "step-8.pt.corrupt").is_file()  # set aside, not deleted
    assert [r["step"] for r in rows(run_dir)] == [2, 4, 6, 8, 10]  # rows past step 4 were redone


def test_nan_stops_cleanly_after_restoring_the_last_good_checkpoint(root, tmp_path):
    dataset_dir, dataset_id = latest_dataset(root)
    trainer = Trainer(tiny(log_every=1), dataset_dir / "images.npy", tmp_path / "run", dataset_id)
    assert trainer.run(4) == "finished"
    good = {k: v.clone() for k, v in trainer.g_raw.state_dict().items()}
    with torch.no_grad():
        next(trainer.d_raw.parameters()).fill_(
            float("nan")
        )  # a corrupted weight, as a bad update would leave

    with pytest.raises(TrainingDivergedError, match=r"NaN or Inf between steps 4 and 5.*step-4\.pt"):
        trainer.run(8)
    assert trainer.step == 4
    assert all(torch.equal(good[k], v) for k, v in trainer.g_raw.state_dict().items())
    assert all(torch.isfinite(p).all() for p in trainer.d_raw.parameters())
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [4]
    assert trainer.run(6) == "finished"  # the restored state trains on


def test_divergence_through_the_stage_fails_with_a_clear_error(root):
    config = tiny(steps=6, lr_d=1e30, lr_g=1e30)
    with pytest.raises(BadInputError, match="diverged.*no checkpoint had been written yet.*Lower lr_d"):
        train(config, root)
    info = json.loads((root.run_dir(run_name(config, latest_dataset(root)[1])) / "run.json").read_text())
    assert info["status"] == "failed" and "diverged" in info["error"]
    assert not (root.runs_dir / "latest").exists()


def test_a_parent_without_a_loadable_checkpoint_is_no_warm_start_and_the_report_says_so(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs(seed=0))
    parent = Path(train(tiny(steps=4), root).outputs["run_dir"])
    for checkpoint in (parent / "checkpoints").glob("step-*.pt"):
        checkpoint.write_bytes(b"cut short by a full disk")
    make_dataset(root, blobs(seed=1))
    report = train(tiny(steps=2), root)
    assert f"no warm start from {parent.name}: no checkpoint of it loads" in report.notes
    assert json.loads((Path(report.outputs["run_dir"]) / "run.json").read_text())["parent"] is None


def test_warm_start_continues_from_the_previous_run_and_records_it(tmp_path):
    root = DataRoot(tmp_path)
    make_dataset(root, blobs(seed=0))
    parent = train(tiny(steps=8), root)
    parent_g = weights(Path(parent.outputs["latest_checkpoint"]))

    make_dataset(root, blobs(seed=1))  # the nightly scrape brought a new dataset snapshot
    warm = train(tiny(steps=2), root)
    cold = train(tiny(steps=2, warm_start=False), root)
    info = json.loads((Path(warm.outputs["run_dir"]) / "run.json").read_text())
    assert info["parent"] == Path(parent.outputs["run_dir"]).name and info["parent_step"] == 8
    assert json.loads((Path(cold.outputs["run_dir"]) / "run.json").read_text())["parent"] is None

    def distance(report) -> float:
        g = weights(Path(report.outputs["latest_checkpoint"]))
        return sum(float((g[k] - parent_g[k]).norm()) for k in g if g[k].is_floating_point())

    assert distance(warm) < 0.5 * distance(cold)


def test_collapse_warning_stops_early_when_asked(root):
    # Demanding samples as diverse as real photos flags every grid: the warning fires at the first.
    report = train(tiny(steps=12, collapse_diversity=0.99, collapse_warmup=0, early_stop=True), root)
    assert report.counts["steps"] == 4 and report.counts["warnings"] >= 1
    assert any("mode collapse" in n for n in report.notes)
    run_dir = Path(report.outputs["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped_early"
    assert rows(run_dir)[-1]["collapsed"] is True
    assert train(tiny(steps=12, collapse_diversity=0.99, collapse_warmup=0, early_stop=True), root).skipped


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(BadInputError, match="no dataset snapshot.*run the validate stage"):
        train(tiny(), DataRoot(tmp_path))


def test_fingerprint_follows_the_dataset_and_the_config(tmp_path):
    root = DataRoot(tmp_path)
    empty = input_fingerprint(tiny(), root)
    make_dataset(root, blobs(seed=0))
    first = input_fingerprint(tiny(), root)
    assert first != empty and first == input_fingerprint(tiny(), root)
    assert input_fingerprint(tiny(steps=7), root) != first
    make_dataset(root, blobs(seed=1))
    assert input_fingerprint(tiny(), root) != first


def test_nightly_runs_beyond_keep_runs_go_once_exported_and_nothing_else_does(tmp_path):
    from export.stage import export
    from tests.export_data import small_export

    root = DataRoot(tmp_path / "data")
    runs = []
    for night in range(4):  # a grown dataset each night, each run warm-started from the last
        make_dataset(root, blobs(n=24 + 8 * night, seed=night))
        runs.append(Path(train(tiny(steps=4, keep_runs=2), root).outputs["run_dir"]).name)
        if night != 1:  # night two's export never happened
            export(small_export(), root)

    kept = sorted(p.name for p in root.runs_dir.iterdir() if not p.is_symlink())
    assert kept == sorted(runs[1:])  # night one's went; night two's has no export, so it stays
    assert (root.export_dir(runs[0]) / "generator.pt").is_file()  # what a user needs of it is kept
    assert root.latest_run.resolve().name == runs[3]
