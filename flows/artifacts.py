"""What a stage task shows in the Prefect UI: a live progress artifact, then its report as artifacts."""

import base64
import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from common.layout import DataRoot
from common.report import StageReport


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
            return  # the UI needs no more than one update a second
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


def run_published(
    stage_fn: Callable[..., StageReport], stage: str, config, data_dir: str, force: bool, **kwargs
) -> StageReport:
    """Run a stage function with a progress artifact, then publish its report."""
    report = stage_fn(config, DataRoot(data_dir), force=force, on_progress=ProgressArtifact(stage), **kwargs)
    publish(report)
    return report
