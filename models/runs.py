"""Run bookkeeping: which run folder a config trains, its run.json, its lock, and what it reports.

A run lives in runs/<run>/ (docs/DESIGN.md), named after the dataset and the settings that shape
what is learned, so a rerun on the same dataset finds its run: finished, it does nothing; killed,
it resumes from the latest checkpoint. A run on a new dataset may warm-start from the run
`runs/latest` points at, when the networks' shapes match.
"""

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from common.clock import now_iso
from common.files import atomic_symlink, atomic_write_json, config_hash, pid_alive, read_json
from common.layout import DataRoot, list_grids
from common.report import BadInputError, StageReport, TransientError
from models.checkpoint import best_path, list_checkpoints
from models.config import TrainConfig
from models.taken_down import taken_down_ancestor

# The settings a warm start must share with its parent: they fix the networks' shapes.
ARCH_KEYS = ("model", "image_size", "channels", "nz", "ngf", "ndf")
# Settings that change how a run is computed, watched or stored, not what it learns. They are left
# out of the run's name, so changing them keeps the run; `steps` too, so raising it extends a run.
RUNTIME_KEYS = frozenset(
    {
        "steps",
        "device",
        "precision",
        "channels_last",
        "compile",
        "cuda_graphs",
        "sync_batchnorm",
        "cpu_threads",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "keep_runs",
        "sample_every",
        "eval_every",
        "eval_samples",
        "watch_window",
        "overpower_d_loss",
        "collapse_diversity",
        "early_stop",
        "tensorboard",
        "progress_bar",
    }
)
DONE = ("finished", "stopped_early")
PARENT_KEYS = ("parent", "parent_dataset_id", "parent_step")


# -- naming and finding -------------------------------------------------------------------------------


def latest_dataset(root: DataRoot) -> tuple[Path, str]:
    """The newest dataset snapshot's folder and id (the folder's name, a hash of its content)."""
    link = root.latest_dataset
    if not (link / "images.npy").is_file():
        raise BadInputError(f"no dataset snapshot at {link}: run the validate stage first (faces validate)")
    folder = link.resolve()
    return folder, folder.name


def run_name(config: TrainConfig, dataset_id: str) -> str:
    learned = {k: v for k, v in config.model_dump(mode="json").items() if k not in RUNTIME_KEYS}
    return f"{dataset_id[:12]}-{config_hash(learned)}"


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The run's run.json, or {} when it has none yet."""
    return read_json(run_dir / "run.json")


def is_done(info: dict[str, Any], steps: int) -> bool:
    """Whether the run needs no more training: stopped early, or finished at `steps` or beyond."""
    return info.get("status") in DONE and (info["status"] == "stopped_early" or info["step"] >= steps)


def parent_of(info: dict[str, Any]) -> dict[str, Any]:
    """The warm-start source a run.json names (parent, parent_dataset_id, parent_step), if any."""
    return {k: info[k] for k in PARENT_KEYS if k in info}


class WarmStart(NamedTuple):
    """The previous run a new run may start from, or the reason it cannot."""

    info: dict[str, Any]  # its run.json; {} when there is none to start from
    checkpoints: Path | None = None
    note: str | None = None


def warm_start_source(root: DataRoot, dataset_id: str, config: TrainConfig) -> WarmStart:
    """The run `runs/latest` points at, when it trained on another dataset with the same shapes and
    neither it nor a run it descends from learnt from an image since taken down."""
    previous = root.latest_run
    info = read_run_info(previous.resolve()) if previous.exists() else {}
    if not info or info.get("dataset_id") == dataset_id:
        return WarmStart({})
    if note := taken_down_note(root, previous.resolve(), info["run"]):
        return WarmStart({}, note=note)
    mismatched = [k for k in ARCH_KEYS if info["config"].get(k) != getattr(config, k)]
    if mismatched:
        return WarmStart({}, note=f"no warm start from {info['run']}: its {', '.join(mismatched)} differ")
    return WarmStart(info, previous.resolve() / "checkpoints")


def taken_down_note(root: DataRoot, run_dir: Path, run: str) -> str | None:
    """Why `run` cannot be a warm start, when it (or a run it was warm-started from) learnt from an
    image since taken down: its weights would carry the image into the new run (validate.takedown)."""
    marked = taken_down_ancestor(root, run_dir)
    if marked is None:
        return None
    through = "" if marked == run else f" (through run {marked}, which it descends from by warm starts)"
    return (
        f"no warm start from {run}: it learnt from images since taken down (faces forget){through}; "
        "training from scratch"
    )


# -- the folder ---------------------------------------------------------------------------------------


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One trainer per run folder; the kernel drops the lock when its holder dies, even by SIGKILL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TransientError(
                f"another process is training {run_dir}; retry when it has finished"
            ) from None
        yield


def remove_leftover_temp_files(run_dir: Path) -> None:
    """What killed writers left: temporary files (common.files.atomic_path names them `.<file>.<random>.tmp`)
    in the run folder, its checkpoints/ and grids/, and runs/latest's replacement link of a dead process.

    Call it holding the run lock: no live process writes into the folder then.
    """
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "grids"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)
    for link in run_dir.parent.glob(".latest.tmp-*"):  # common.files.atomic_symlink's, named by its pid
        if not pid_alive(link.name.rsplit("-", 1)[-1]):
            link.unlink(missing_ok=True)


def clear_run(run_dir: Path) -> None:
    """Everything a run wrote (for force=True), keeping the lock file its caller holds."""
    for child in run_dir.iterdir():
        if child.name == ".lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class RunRecord:
    """run.json as the run starts, fails or finishes; only the main process (`writes`) writes it."""

    def __init__(self, run_dir: Path, writes: bool) -> None:
        self.run_dir, self.writes = run_dir, writes
        self.info: dict[str, Any] = {}

    def start(
        self, dataset_id: str, config: TrainConfig, parent: dict[str, Any], started: str | None, **setup: Any
    ) -> None:
        """Status `running`. `parent`: the warm start's source; `started`: a resumed run's first start."""
        self.info = {
            "run": self.run_dir.name,
            "dataset_id": dataset_id,
            "config": config.model_dump(mode="json"),
            "status": "running",
            "parent": None,
            **parent,
            "started": started or now_iso(),
            **setup,  # device, precision, world_size, step
        }
        self._write(self.info)

    def fail(self, error: Exception, step: int) -> None:
        self._write(self.info | {"status": "failed", "error": str(error), "step": step})

    def finish(self, status: str, latest: Path, **outcome: Any) -> None:
        """The final status and figures; `latest` (runs/latest) then points at this run."""
        self.info |= {"status": status, "finished": now_iso(), **outcome}
        self._write(self.info)
        if self.writes:
            atomic_symlink(self.run_dir.name, latest)

    def _write(self, info: dict[str, Any]) -> None:
        if self.writes:
            atomic_write_json(self.run_dir / "run.json", info)


# -- what a run reports -------------------------------------------------------------------------------


def run_outputs(run_dir: Path) -> dict[str, str]:
    """The run's folder, metrics, latest grid and checkpoints, as the StageReport lists them."""
    outputs = {"run_dir": str(run_dir), "metrics": str(run_dir / "metrics.jsonl")}
    grids = list_grids(run_dir)
    if grids:
        outputs["grid"] = str(grids[-1][1])
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if checkpoints:
        outputs["latest_checkpoint"] = str(checkpoints[-1][1])
    if best_path(run_dir / "checkpoints").exists():
        outputs["best_checkpoint"] = str(best_path(run_dir / "checkpoints"))
    return outputs


def skipped_report(run_dir: Path, info: dict[str, Any]) -> StageReport:
    return StageReport(
        stage="train",
        counts={"steps": info["step"], "images_seen": info.get("images_seen", 0)},
        outputs=run_outputs(run_dir),
        notes=[
            f"run {run_dir.name} already {info['status']} at step {info['step']}; force = true retrains it"
        ],
        skipped=True,
    )


def trained_report(
    run_dir: Path, info: dict[str, Any], resumed: int | None, counts: dict[str, int], notes: list[str]
) -> StageReport:
    """The report of a run that trained: `info` is its final run.json, `counts` the trainer's figures."""
    lines = [
        f"run {run_dir.name} on {info['device']} ({info['precision']}, {info['world_size']} process(es))"
    ]
    if resumed is not None:
        lines.append(f"resumed from step {resumed}")
    if info.get("parent"):
        lines.append(f"warm start from run {info['parent']} (step {info.get('parent_step')})")
    if info["status"] == "stopped_early":
        lines.append(f"stopped early at step {info['step']} (early_stop = true)")
    lines += notes + [f"warning: {w}" for w in info["warnings"]]
    counts = {
        "steps": info["step"],
        "images_seen": info["images_seen"],
        **counts,
        "resumed_from_step": resumed or 0,
        "world_size": info["world_size"],
        "warnings": len(info["warnings"]),
    }
    return StageReport(stage="train", counts=counts, outputs=run_outputs(run_dir), notes=lines)
