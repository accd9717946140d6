"""What a stage task shows in the Prefect UI: a live progress artifact, then its report as artifacts.

Every key says what the artifact is and whose: `<stage>-<what>-<root>`, where `<root>` is the data
root's last two folder names (`/srv/faces/data` -> `faces-data`), so the latest `export-samples-…`
is that data root's latest export, whichever deployment or command made it.
"""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from common.clock import now_iso
from common.layout import DataRoot
from common.report import StageReport
from flows.policies import check_data_root, permanent_errors_named
from flows.stage_logs import stage_logs_to_run
from flows.thumbnails import inline_pictures, thumbnail_uri

# The sample grids: train's fixed-noise grid of the run so far, export's grid of the EMA generator.
GRIDS = {
    "train": ("grid", "the fixed-noise samples at the run's latest grid step"),
    "export": ("samples", "samples of the exported (EMA) generator"),
}
# Markdown files a stage writes beside its outputs: report label -> key word.
DOCUMENTS = {"report": "report", "model_card": "model-card"}


@dataclass
class PublishedReport(StageReport):
    """A stage's report, stamped with when and by which flow run it was made: what a cache hit reports."""

    made_at: str = ""
    made_by: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def artifact_key(what: str, data_dir: str) -> str:
    """`what` plus the data root's last two folder names, in the letters Prefect keys allow."""
    root = _slug("-".join(Path(data_dir).parts[-2:]))[-40:].strip("-")
    return _slug(f"{what}-{root}")


class ProgressArtifact:
    """Turns a stage's on_progress(done, total, message) calls into a Prefect progress artifact."""

    def __init__(self, stage: str, data_dir: str, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self.artifact_id = create_progress_artifact(
            0.0, key=artifact_key(f"{stage}-progress", data_dir), description=f"{stage}, data root {data_dir}"
        )
        self.last = 0.0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.min_interval and done < total:
            return  # the UI needs no more than one update a second
        self.last = now
        update_progress_artifact(self.artifact_id, 100.0 * done / max(total, 1), description=message)


def _publish_grid(stage: str, grid: Path, data_dir: str) -> None:
    word, what = GRIDS.get(stage, ("grid", "samples"))
    text = f"# {stage}: {what}\n\n![{stage} samples]({thumbnail_uri(grid)})\n\nFull size: `{grid}`\n"
    key, description = artifact_key(f"{stage}-{word}", data_dir), f"{stage}: {what}, data root {data_dir}"
    create_markdown_artifact(text, key=key, description=description)


def publish(report: StageReport, data_dir: str) -> None:
    """The stage's report as artifacts: summary, tables, its markdown documents, the sample grid."""
    stage, where = report.stage, f"data root {data_dir}"
    summary_key = artifact_key(f"{stage}-summary", data_dir)
    create_markdown_artifact(report.markdown(), key=summary_key, description=f"{stage} summary, {where}")
    for name, rows in report.tables.items():
        if rows:
            create_table_artifact(
                rows,
                key=artifact_key(f"{stage}-{name}", data_dir),
                description=f"{stage}: {name.replace('_', ' ')}, {len(rows)} rows, {where}",
            )
    for label, word in DOCUMENTS.items():
        path = Path(report.outputs.get(label, ""))
        if path.suffix == ".md" and path.is_file():
            create_markdown_artifact(
                inline_pictures(path.read_text(), path.parent),
                key=artifact_key(f"{stage}-{word}", data_dir),
                description=f"{stage} {label.replace('_', ' ')}: {path}",
            )
    grid = Path(report.outputs.get("grid", ""))
    if grid.suffix == ".png" and grid.is_file():
        _publish_grid(stage, grid, data_dir)
    get_run_logger().info("%s done in %.1f s: %s", stage, report.seconds, report.counts)


def announce_cached(report: StageReport, data_dir: str) -> str:
    """Say in the log and the stage's summary that it was served from the cache, since when, and how
    to redo it: a cached task runs for a second and would otherwise publish nothing. Returns the
    notice, one line, for the stage's notes."""
    stage = report.stage
    made_at, made_by = getattr(report, "made_at", ""), getattr(report, "made_by", "")
    since = f"since {made_at} (flow run `{made_by}`)" if made_at else "since an earlier run"
    redo = "force redoes it (`faces run --force`, or `force: true` in a deployment run's parameters)"
    notice = f"served from the cache, inputs unchanged {since}; {redo}"
    get_run_logger().info("%s: %s", stage, notice)
    last_run = report.markdown().split("\n", 1)[-1]  # without its "# <stage>" title
    text = f"# {stage}: served from the cache\n\nInputs unchanged {since}: nothing was redone. {redo}.\n\n"
    create_markdown_artifact(
        text + f"## The run it stands for\n{last_run}",
        key=artifact_key(f"{stage}-summary", data_dir),
        description=f"{stage} summary (cached), data root {data_dir}",
    )
    return notice


def run_published(
    stage_fn: Callable[..., StageReport], stage: str, config, data_dir: str, force: bool, **kwargs
) -> PublishedReport:
    """Run a stage function with a progress artifact and its logs in the run's, then publish its report.

    An unusable data root or a full, read-only or forbidden disk fails as bad input: no retry mends it.
    """
    check_data_root(data_dir)
    progress = ProgressArtifact(stage, data_dir)
    with stage_logs_to_run(), permanent_errors_named(data_dir):
        report = stage_fn(config, DataRoot(data_dir), force=force, on_progress=progress, **kwargs)
    publish(report, data_dir)
    stamped = {field.name: getattr(report, field.name) for field in fields(StageReport)}
    return PublishedReport(**stamped, made_at=now_iso(), made_by=flow_run.get_name() or "")
