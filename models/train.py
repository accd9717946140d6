"""The train stage: train the DCGAN (or the MLP GAN) on the latest dataset snapshot.

`train()` finds the config's run folder (models.runs): a finished run is skipped, a killed one
resumes from its latest good checkpoint, and a new one on a changed dataset warm-starts from the
previous run's networks. A `models.trainer.Trainer` does the training; one process per GPU under
torchrun trains with DDP (models.ddp). The command line is models.cli:

    python -m models.train --config faces.toml
    torchrun --nproc-per-node 4 -m models.train --config faces.toml
"""

import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from common.files import atomic_symlink, config_hash, sha256_bytes
from common.layout import DataRoot
from common.report import StageReport
from models import ddp
from models.checkpoint import load_latest_everywhere
from models.config import TrainConfig
from models.data import check_shards, dataset_flip, open_images
from models.device import pick_device, wants_cuda
from models.retention import prune_runs
from models.runs import (
    RunRecord,
    clear_run,
    is_done,
    latest_dataset,
    parent_of,
    read_run_info,
    remove_leftover_temp_files,
    run_lock,
    run_name,
    skipped_report,
    trained_report,
    warm_start_source,
)
from models.trainer import Progress, Trainer

log = logging.getLogger(__name__)


def input_fingerprint(config: TrainConfig, root: DataRoot) -> str:
    """The dataset snapshot's id and the whole config: the flows' cache key for this stage.

    With no dataset yet it still returns a key, so that train() itself runs and says what is missing.
    """
    link = root.latest_dataset
    dataset_id = link.resolve().name if (link / "images.npy").is_file() else "no-dataset"
    return sha256_bytes(f"{dataset_id}|{config_hash(config)}".encode())


def train(
    config: TrainConfig, root: DataRoot, *, force: bool = False, on_progress: Progress | None = None
) -> StageReport:
    """Train on root's latest dataset into runs/<run>/ (see the module docstring and docs/training.md)."""
    started = time.monotonic()
    dist = ddp.setup(use_cuda=wants_cuda(config.device))
    try:
        report = _train(config, root, dist, force, on_progress)
    finally:
        ddp.teardown(dist)
    report.seconds = time.monotonic() - started
    return report


def _train(
    config: TrainConfig, root: DataRoot, dist: ddp.Dist, force: bool, on_progress: Progress | None
) -> StageReport:
    """Skip a finished run, else train it under its lock (cleared first with `force`)."""
    dataset_dir, dataset_id = latest_dataset(root)
    config = dataset_flip(config, dataset_dir)  # a set that must not be mirrored (digits) says so
    run_dir = root.run_dir(run_name(config, dataset_id))
    info = read_run_info(run_dir)
    if not force and is_done(info, config.steps):
        if dist.is_main:  # these settings' run is the current one again (a setting changed back)
            atomic_symlink(run_dir.name, root.latest_run)
        return skipped_report(run_dir, info)
    check_can_train(config, dataset_dir / "images.npy", dist)  # before anything is cleared
    ddp.barrier(dist)  # everyone has read run.json before rank 0 changes it
    if force:
        info = {}
    with run_lock(run_dir) if dist.is_main else nullcontext():
        if dist.is_main:
            if force:
                clear_run(run_dir)
            remove_leftover_temp_files(run_dir)
        ddp.barrier(dist)
        trainer = Trainer(config, dataset_dir / "images.npy", run_dir, dataset_id, dist, on_progress)
        try:
            return _run_training(trainer, root, info)
        finally:
            trainer.close()


def check_can_train(config: TrainConfig, images_path: Path, dist: ddp.Dist) -> None:
    """What can be checked before training starts (and before force clears the run): a BadInputError
    names the problem. The device exists, the dataset reads as images, and it splits over the processes."""
    pick_device(config.device, "train", dist.local_rank if dist.enabled else None)
    images = open_images(images_path)
    check_shards(images_path, len(images), config.batch_size, dist.world_size)


def _run_training(trainer: Trainer, root: DataRoot, info: dict[str, Any]) -> StageReport:
    """Resume or warm-start, train up to `steps`, and keep run.json saying how it went."""
    config, dist = trainer.config, trainer.dist
    resumed = trainer.resume()
    if resumed is not None:  # the checkpoint's networks descend from the parent run.json names
        parent = parent_of(info)
    else:  # nothing kept yet: a new run, or one killed before its first checkpoint (warm-start again)
        parent = _warm_start(trainer, root) if config.warm_start else {}
    record = RunRecord(trainer.run_dir, writes=dist.is_main)
    setup = {"device": str(trainer.device), "precision": trainer.precision, "world_size": dist.world_size}
    record.start(trainer.dataset_id, config, parent, info.get("started"), **setup, step=trainer.step)
    try:
        status = trainer.run(config.steps)
    except Exception as e:  # diverged, a full disk, a lost GPU...: run.json says so (a kill leaves "running")
        record.fail(e, trainer.step)
        raise
    record.finish(
        status,
        root.latest_run,
        step=trainer.step,
        images_seen=trainer.images_seen,
        train_seconds=round(trainer.train_seconds, 2),
        best_swd=None if math.isinf(trainer.best_swd) else trainer.best_swd,
        warnings=trainer.watch.warnings,
    )
    if dist.is_main and (deleted := prune_runs(root, config.keep_runs)):
        trainer.notes.append(f"deleted {len(deleted)} older exported run(s) (keep_runs = {config.keep_runs})")
    speed = trainer.session_steps * config.batch_size / max(trainer.session_seconds, 1e-9)
    counts = {"images_per_second": round(speed), "dataset_images": trainer.dataset_size}
    return trained_report(trainer.run_dir, record.info, resumed, counts, trainer.notes)


def _warm_start(trainer: Trainer, root: DataRoot) -> dict[str, Any]:
    """Start from the previous run's latest networks when the dataset changed and the shapes match."""
    source = warm_start_source(root, trainer.dataset_id, trainer.config)
    if source.note:
        trainer.notes.append(source.note)
    if source.checkpoints is None:
        return {}
    found = load_latest_everywhere(source.checkpoints, trainer.device, trainer.dist)
    if found is None:  # its step checkpoints were deleted or are all damaged
        trainer.notes.append(f"no warm start from {source.info['run']}: no checkpoint of it loads")
        return {}
    ckpt, path = found
    trainer.load_networks(ckpt)
    log.info("warm start from %s/%s", source.info["run"], path.name)
    return {
        "parent": source.info["run"],
        "parent_dataset_id": source.info["dataset_id"],
        "parent_step": int(ckpt["step"]),
    }


if __name__ == "__main__":  # python -m models.train, torchrun -m models.train
    from models.cli import main

    sys.exit(main())
