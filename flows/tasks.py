"""Prefect tasks: each wraps one stage function with retries, a content-based cache and artifacts."""

import base64
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from models import export as export_stage
from models import train as train_stage
from models.config import ExportConfig, TrainConfig
from preprocess import pipeline as preprocess_stage
from preprocess import validate as validate_stage
from preprocess.config import PreprocessConfig, ValidateConfig
from preprocess.pipeline import BatchResult, Source
from scraper import crawl as scrape_stage
from scraper.config import ScrapeConfig

# Bad input or config fails at once; everything else (network, CUDA out of memory, a killed worker
# process) may pass, so it is retried after 10, 20, 40 s, each stretched by up to 50% of jitter.
PERMANENT_ERRORS = (BadInputError, ValidationError)


def is_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


RETRIES = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)


def content_cache_key(fingerprint: Callable[..., str]) -> Callable[[TaskRunContext, dict], str]:
    """A cache key from what is on disk: the stage's input fingerprint (content hashes and config).

    The data root is part of the key too, so two data roots with equal inputs never share outputs.
    """

    def key(context: TaskRunContext, parameters: dict) -> str:
        root = DataRoot(parameters["data_dir"])
        extra = {k: v for k, v in parameters.items() if k not in ("config", "data_dir", "force")}
        inputs = fingerprint(parameters["config"], root, **extra)
        return sha256_bytes(f"{context.task.name}|{root.root}|{inputs}".encode())

    return key


def main_output(stage: str, root: DataRoot, run: str | None = None) -> Path:
    """The file a finished stage leaves behind; when it is gone, the cached result is stale."""
    if stage == "export":
        run = run or (root.runs_dir / "latest").resolve().name
        return root.export_dir(Path(run).name) / "export.json"
    return {
        "preprocess": root.faces_manifest,
        "validate": root.latest_dataset / "images.npy",
        "train": root.runs_dir / "latest" / "run.json",
    }[stage]


class ProgressArtifact:
    """Turns a stage's on_progress(done, total, message) calls into a Prefect progress artifact."""

    def __init__(self, stage: str, min_interval: float = 1.0) -> None:
        self.stage = stage
        self.min_interval = min_interval
        self.artifact_id = create_progress_artifact(0.0, key=f"{stage}-progress", description=f"{stage}")
        self.last = 0.0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.min_interval and done < total:
            return
        self.last = now
        update_progress_artifact(self.artifact_id, 100.0 * done / max(total, 1), description=message)


def publish(report: StageReport) -> None:
    """The stage's summary as artifacts: markdown, one table per report table, the sample grid."""
    stage = report.stage
    create_markdown_artifact(report.markdown(), key=f"{stage}-summary", description=f"{stage} summary")
    for name, rows in report.tables.items():
        if rows:
            create_table_artifact(rows, key=f"{stage}-{name}".lower().replace("_", "-"))
    for label, key in (("report", f"{stage}-report"), ("model_card", "model-card")):
        path = Path(report.outputs.get(label, ""))
        if path.suffix == ".md" and path.is_file():
            create_markdown_artifact(path.read_text(), key=key, description=f"{stage} {label}")
    grid = report.outputs.get("grid")
    if grid and Path(grid).is_file():
        data = base64.b64encode(Path(grid).read_bytes()).decode()
        create_image_artifact(f"data:image/png;base64,{data}", key="sample-grid", description="samples")
    get_run_logger().info("%s done in %.1f s: %s", stage, report.seconds, report.counts)


def _run(stage_fn: Callable[..., StageReport], stage: str, config, data_dir: str, force: bool, **kw):
    report = stage_fn(config, DataRoot(data_dir), force=force, on_progress=ProgressArtifact(stage), **kw)
    publish(report)
    return report


@task(name="scrape", **RETRIES)
def scrape_task(config: ScrapeConfig, data_dir: str, force: bool = False) -> StageReport:
    # Never cached: the web changes; re-crawls are incremental through conditional requests.
    return _run(scrape_stage.crawl, "scrape", config, data_dir, force)


@task(
    name="preprocess",
    cache_key_fn=content_cache_key(preprocess_stage.input_fingerprint),
    **RETRIES,
)
def preprocess_task(config: PreprocessConfig, data_dir: str, force: bool = False) -> StageReport:
    return _run(preprocess_stage.preprocess, "preprocess", config, data_dir, force)


@task(
    name="validate",
    cache_key_fn=content_cache_key(validate_stage.input_fingerprint),
    **RETRIES,
)
def validate_task(config: ValidateConfig, data_dir: str, force: bool = False) -> StageReport:
    return _run(validate_stage.validate, "validate", config, data_dir, force)


@task(
    name="train",
    cache_key_fn=content_cache_key(train_stage.input_fingerprint),
    **RETRIES,
)
def train_task(config: TrainConfig, data_dir: str, force: bool = False) -> StageReport:
    return _run(train_stage.train, "train", config, data_dir, force)


@task(name="export", cache_key_fn=content_cache_key(export_stage.input_fingerprint), **RETRIES)
def export_task(
    config: ExportConfig, data_dir: str, force: bool = False, run: str | None = None
) -> StageReport:
    return _run(export_stage.export, "export", config, data_dir, force, run=run)


# --- preprocess on a Dask cluster: each batch of photos is a Prefect task on a Dask worker ----------


@task(name="preprocess-batch", **RETRIES)
def preprocess_batch_task(config: PreprocessConfig, data_dir: str, batch: list[Source]) -> BatchResult:
    """Decode, detect and crop one batch; the parent records the result in the manifest."""
    return preprocess_stage.process_batch(config, DataRoot(data_dir), batch)


def batches_as_tasks(window: int) -> Callable[..., Iterator[BatchResult]]:
    """A batch runner for preprocess(): submits batches as tasks, at most `window` in flight."""

    def run(
        config: PreprocessConfig, root: DataRoot, batches: Iterator[list[Source]]
    ) -> Iterator[BatchResult]:
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append(preprocess_batch_task.submit(config, str(root.root), batch))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    return run


@flow(name="preprocess-on-dask")
def preprocess_on_dask(config: PreprocessConfig, data_dir: str, force: bool = False) -> StageReport:
    return _run(
        preprocess_stage.preprocess, "preprocess", config, data_dir, force, run_batches=batches_as_tasks(64)
    )


def dask_task_runner(config: PreprocessConfig):
    """prefect-dask's runner: a local cluster for "local", else the scheduler at that address."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise BadInputError(
            "[preprocess] dask_address is set but prefect-dask is not installed; "
            "pip install 'faces-pipeline[dask]'"
        ) from None
    if config.dask_address == "local":
        workers = config.workers or os.cpu_count() or 1
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    return DaskTaskRunner(address=config.dask_address)
