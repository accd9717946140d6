"""The pipeline in Prefect: one task per stage and the flows that call them.

Each task wraps one plain stage function with retries, a cache keyed on the content of its inputs,
and artifacts. `faces-pipeline` calls the five tasks in pipeline order, each only when its stage was
chosen, and stops at the first failure; each stage flow calls its one task the same way.
Flow parameters are the stage config models, so the Prefect server validates `--param` overrides;
their descriptions (the docstrings' Args) are what the UI's Parameters tab shows.
"""

import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from prefect import Task, flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.task_engine import TaskRunTimeoutError

from common.layout import DataRoot
from common.report import StageReport
from export import stage as export_stage
from export.config import ExportConfig
from flows.artifacts import announce_cached, run_published
from flows.config import STAGES, NotifyConfig, Stage, TimeoutsConfig
from flows.dask import run_on_dask
from flows.notify import notify_failure, notify_training_warnings
from flows.policies import RETRIES, content_cache_key, is_transient
from flows.root_lock import data_root_lock
from models import train as train_stage
from models.config import TrainConfig
from preprocess import pipeline as preprocess_stage
from preprocess.config import PreprocessConfig
from scraper import crawl as scrape_stage
from scraper.config import ScrapeConfig
from validate import stage as validate_stage
from validate.config import ValidateConfig

# Prefect builds a pydantic model of each flow's parameters; our `validate` parameter (named after
# its faces.toml table) shadows BaseModel.validate there, which is harmless.
warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)


# --- tasks: one per stage ---------------------------------------------------------------------------


@task(name="scrape", **RETRIES)
def scrape_task(config: ScrapeConfig, data_dir: str, force: bool = False) -> StageReport:
    """Never cached: the web changes; re-crawls are incremental through conditional requests."""
    return run_published(scrape_stage.crawl, "scrape", config, data_dir, force)


@task(name="preprocess", cache_key_fn=content_cache_key(preprocess_stage.input_fingerprint), **RETRIES)
def preprocess_task(config: PreprocessConfig, data_dir: str, force: bool = False) -> StageReport:
    """Cached on the stored photos' hashes and the crop settings: with nothing new, nothing runs."""
    return run_published(preprocess_stage.preprocess, "preprocess", config, data_dir, force)


@task(name="validate", cache_key_fn=content_cache_key(validate_stage.input_fingerprint), **RETRIES)
def validate_task(config: ValidateConfig, data_dir: str, force: bool = False) -> StageReport:
    """Cached on the crops, opt-outs, releases and the settings: an unchanged set is not checked again,
    and no snapshot is built twice."""
    return run_published(validate_stage.validate, "validate", config, data_dir, force)


@task(name="train", cache_key_fn=content_cache_key(train_stage.input_fingerprint), **RETRIES)
def train_task(config: TrainConfig, data_dir: str, force: bool = False) -> StageReport:
    """Cached on the dataset snapshot's id and the whole training config.

    A new snapshot starts a new run, by default from the previous run's networks (docs/training.md).
    A run that trained and warned is told like a failure (a cached or skipped one is not told again)."""
    report = run_published(train_stage.train, "train", config, data_dir, force)
    if report.counts.get("warnings") and not report.skipped:
        notify_training_warnings(report)
    return report


@task(name="export", cache_key_fn=content_cache_key(export_stage.input_fingerprint), **RETRIES)
def export_task(
    config: ExportConfig, data_dir: str, force: bool = False, run: str | None = None
) -> StageReport:
    """Exports `run` (default: the latest) into exports/<run>/; cached on its checkpoint's bytes."""
    return run_published(export_stage.export, "export", config, data_dir, force, run=run)


def transient_in_time(task, task_run, state) -> bool:
    """The retry condition: transient errors are retried, but not a stage that ran out of its
    [timeouts] time, which would only run out again (a network timeout inside a stage is retried)."""
    try:
        state.result()
    except TaskRunTimeoutError:
        return False
    except Exception:
        pass
    return is_transient(task, task_run, state)


def cache_checked(
    stage_task: Task, data_dir: str, force: bool, run: str | None = None, timeout: float | None = None
) -> Task:
    """The task with its [timeouts] limit, told to refresh its cache when forced or when its stage's
    main output is gone: a cached result must never stand in for files that were deleted since."""
    output = DataRoot(data_dir).main_output(stage_task.name, run)
    return stage_task.with_options(
        refresh_cache=force or not output.exists(),
        timeout_seconds=timeout,
        retry_condition_fn=transient_in_time,
    )


def run_stage(
    stage_task: Task, config, data_dir: str, force: bool, timeouts: TimeoutsConfig, **kwargs
) -> StageReport:
    """Call a stage's task; when it was served from the cache, say so (a cached task publishes nothing)."""
    timeout = timeouts.seconds(stage_task.name)
    state = cache_checked(stage_task, data_dir, force, kwargs.get("run"), timeout)(
        config, data_dir, force, **kwargs, return_state=True
    )
    report = state.result()  # raises the task's error when it failed
    if state.name == "Cached":  # a copy with the notice: the cached result stays as it was made
        report = replace(report, notes=[announce_cached(report, data_dir), *report.notes])
    return report


def run_preprocess(
    config: PreprocessConfig, data_dir: str, force: bool, timeouts: TimeoutsConfig
) -> StageReport:
    """The preprocess task, or with `dask_address` set its subflow: one task per batch on Dask."""
    if config.dask_address:
        return run_on_dask(config, data_dir, force, timeouts.seconds("preprocess"))
    return run_stage(preprocess_task, config, data_dir, force, timeouts)


# --- flows ------------------------------------------------------------------------------------------


def _absolute(data_dir: str) -> str:
    return str(Path(data_dir).expanduser().resolve())


def _chosen(stages: list[Stage]) -> set[Stage]:
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    return set(stages)


def _summary(report: StageReport) -> dict:
    """What a flow returns of a stage's report, and `faces` prints: the notes say what the counts cannot
    (a skipped run, a warm start refused, a damaged checkpoint skipped, a stand-in dataset)."""
    return {
        "counts": report.counts,
        "outputs": report.outputs,
        "seconds": round(report.seconds, 1),
        "notes": list(report.notes),
    }


def _scheduled_name(run: FlowRun) -> str:
    """A run the scheduler made: its deployment and the date it was planned for, in the schedule's zone."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(run.deployment_id)
    zones = [getattr(s.schedule, "timezone", None) for s in deployment.schedules]
    zone = next((z for z in zones if z), "UTC")
    planned = run.expected_start_time or run.start_time or datetime.now(UTC)
    return f"{deployment.name} {planned.astimezone(ZoneInfo(zone)).date().isoformat()}"


def run_name() -> str:
    """What a flow run is called: "nightly 2026-11-29" when the scheduler made it, else what it ran:
    the stages in pipeline order ("preprocess,validate"), or the stage flow's name, and "(force)"."""
    context = FlowRunContext.get()
    run, parameters = context.flow_run, context.parameters
    if run.auto_scheduled and run.deployment_id:
        return _scheduled_name(run)
    if "stages" in parameters:
        what = ",".join(stage for stage in STAGES if stage in parameters["stages"])
    else:
        what = " ".join(filter(None, [context.flow.name, parameters.get("run")]))
    return what + (" (force)" if parameters.get("force") else "")


# Every flow tells of its failure or crash (flows/notify.py); the stages' own tasks do not, so one
# failed run is one message.
ALERTS = dict(on_failure=[notify_failure], on_crashed=[notify_failure])
RUN_OPTIONS_DOC = """
        timeouts: The [timeouts] table of faces.toml: seconds each stage may run (0: no limit).
        notify: The [notify] table: the webhook told when this run fails or crashes."""


def _with_run_options_doc(fn):
    """Append the Args lines of `timeouts` and `notify`, which every flow takes, to its docstring."""
    fn.__doc__ = fn.__doc__.rstrip() + RUN_OPTIONS_DOC + "\n    "
    return fn


@flow(name="faces-pipeline", flow_run_name=run_name, log_prints=True, **ALERTS)
@_with_run_options_doc
def faces_pipeline(
    data_dir: str = "data",
    stages: list[Stage] = list(STAGES),
    force: bool = False,
    scrape: ScrapeConfig = ScrapeConfig(),
    preprocess: PreprocessConfig = PreprocessConfig(),
    validate: ValidateConfig = ValidateConfig(),
    train: TrainConfig = TrainConfig(),
    export: ExportConfig = ExportConfig(),
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict[str, dict]:
    """Scrape -> preprocess -> validate -> train -> export, each stage only when chosen.

    Args:
        data_dir: The data root every stage reads and writes; created when missing.
        stages: The stages to run, always in pipeline order: scrape, preprocess, validate, train, export.
        force: Redo stages whose inputs did not change, instead of serving them from the cache.
        scrape: The [scrape] table of faces.toml: seeds, politeness, limits.
        preprocess: The [preprocess] table: face detection, alignment and crops.
        validate: The [validate] table: quality checks and the dataset snapshot.
        train: The [train] table: the networks and the training run.
        export: The [export] table: samples, metrics and the model card.
    """
    data_dir, chosen = _absolute(data_dir), _chosen(stages)
    results: dict[str, dict] = {}
    with data_root_lock(data_dir):
        if "scrape" in chosen:
            results["scrape"] = _summary(run_stage(scrape_task, scrape, data_dir, force, timeouts))
        if "preprocess" in chosen:
            results["preprocess"] = _summary(run_preprocess(preprocess, data_dir, force, timeouts))
        if "validate" in chosen:
            results["validate"] = _summary(run_stage(validate_task, validate, data_dir, force, timeouts))
        trained = None
        if "train" in chosen:
            trained = run_stage(train_task, train, data_dir, force, timeouts)
            results["train"] = _summary(trained)
        if "export" in chosen:
            # The run this flow trained (or found trained, maybe from the cache), else runs/latest.
            run = Path(trained.outputs["run_dir"]).name if trained else None
            results["export"] = _summary(run_stage(export_task, export, data_dir, force, timeouts, run=run))
    return results


def _one_stage(
    stage_task: Task, config, data_dir: str, force: bool, timeouts: TimeoutsConfig, **kwargs
) -> dict:
    """A stage flow's body: its task, holding the data root's lock."""
    data_dir = _absolute(data_dir)
    with data_root_lock(data_dir):
        if stage_task is preprocess_task:
            return _summary(run_preprocess(config, data_dir, force, timeouts))
        return _summary(run_stage(stage_task, config, data_dir, force, timeouts, **kwargs))


@flow(name="scrape", flow_run_name=run_name, **ALERTS)
@_with_run_options_doc
def scrape_flow(
    data_dir: str = "data",
    force: bool = False,
    scrape: ScrapeConfig = ScrapeConfig(),
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict:
    """Only the scrape stage.

    Args:
        data_dir: The data root: photos go to raw/ there; created when missing.
        force: Passed to the crawler (scrape is never served from the cache).
        scrape: The [scrape] table of faces.toml: seeds, politeness, limits.
    """
    return _one_stage(scrape_task, scrape, data_dir, force, timeouts)


@flow(name="preprocess", flow_run_name=run_name, **ALERTS)
@_with_run_options_doc
def preprocess_flow(
    data_dir: str = "data",
    force: bool = False,
    preprocess: PreprocessConfig = PreprocessConfig(),
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict:
    """Only the preprocess stage.

    Args:
        data_dir: The data root: reads raw/, writes faces/.
        force: Crop every photo again, instead of serving unchanged inputs from the cache.
        preprocess: The [preprocess] table of faces.toml: face detection, alignment and crops.
    """
    return _one_stage(preprocess_task, preprocess, data_dir, force, timeouts)


@flow(name="validate", flow_run_name=run_name, **ALERTS)
@_with_run_options_doc
def validate_flow(
    data_dir: str = "data",
    force: bool = False,
    validate: ValidateConfig = ValidateConfig(),
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict:
    """Only the validate stage.

    Args:
        data_dir: The data root: reads faces/, writes datasets/.
        force: Check every crop again, instead of serving unchanged inputs from the cache.
        validate: The [validate] table of faces.toml: quality checks and the dataset snapshot.
    """
    return _one_stage(validate_task, validate, data_dir, force, timeouts)


@flow(name="train", flow_run_name=run_name, **ALERTS)
@_with_run_options_doc
def train_flow(
    data_dir: str = "data",
    force: bool = False,
    train: TrainConfig = TrainConfig(),
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict:
    """Only the train stage.

    Args:
        data_dir: The data root: reads datasets/latest, writes runs/.
        force: Train again, instead of serving an unchanged dataset and config from the cache.
        train: The [train] table of faces.toml: the networks and the training run.
    """
    return _one_stage(train_task, train, data_dir, force, timeouts)


@flow(name="export", flow_run_name=run_name, **ALERTS)
@_with_run_options_doc
def export_flow(
    data_dir: str = "data",
    force: bool = False,
    export: ExportConfig = ExportConfig(),
    run: str | None = None,
    timeouts: TimeoutsConfig = TimeoutsConfig(),
    notify: NotifyConfig = NotifyConfig(),
) -> dict:
    """Export a training run (default: the latest) into exports/<run>/.

    Args:
        data_dir: The data root: reads runs/, writes exports/.
        force: Export again, instead of serving an unchanged checkpoint and config from the cache.
        export: The [export] table of faces.toml: samples, metrics and the model card.
        run: The training run to export, a folder name under runs/ (default: runs/latest).
    """
    return _one_stage(export_task, export, data_dir, force, timeouts, run=run)


STAGE_FLOWS = {
    "scrape": scrape_flow,
    "preprocess": preprocess_flow,
    "validate": validate_flow,
    "train": train_flow,
    "export": export_flow,
}
