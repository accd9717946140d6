"""The pipeline in Prefect: one task per stage and the flows that call them.

Each task wraps one plain stage function with retries, a cache keyed on the content of its inputs,
and artifacts. `faces-pipeline` calls the five tasks in pipeline order, each only when its stage was
chosen, and stops at the first failure; each stage flow calls its one task the same way.
Flow parameters are the stage config models, so the Prefect server validates `--param` overrides.
"""

import warnings
from pathlib import Path

from prefect import Task, flow, task

from common.layout import DataRoot
from common.report import StageReport
from export import stage as export_stage
from export.config import ExportConfig
from flows.artifacts import run_published
from flows.config import STAGES, Stage
from flows.dask import run_on_dask
from flows.policies import RETRIES, content_cache_key
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

    A new snapshot starts a new run, by default from the previous run's networks (docs/training.md)."""
    return run_published(train_stage.train, "train", config, data_dir, force)


@task(name="export", cache_key_fn=content_cache_key(export_stage.input_fingerprint), **RETRIES)
def export_task(
    config: ExportConfig, data_dir: str, force: bool = False, run: str | None = None
) -> StageReport:
    """Exports `run` (default: the latest) into exports/<run>/; cached on its checkpoint's bytes."""
    return run_published(export_stage.export, "export", config, data_dir, force, run=run)


def cache_checked(stage_task: Task, data_dir: str, force: bool, run: str | None = None) -> Task:
    """The task, told to refresh its cache when forced or when its stage's main output is gone:
    a cached result must never stand in for files that were deleted since."""
    output = DataRoot(data_dir).main_output(stage_task.name, run)
    return stage_task.with_options(refresh_cache=force or not output.exists())


def run_preprocess(config: PreprocessConfig, data_dir: str, force: bool) -> StageReport:
    """The preprocess task, or with `dask_address` set its subflow: one task per batch on Dask."""
    if config.dask_address:
        return run_on_dask(config, data_dir, force)
    return cache_checked(preprocess_task, data_dir, force)(config, data_dir, force)


# --- flows ------------------------------------------------------------------------------------------


def _absolute(data_dir: str) -> str:
    return str(Path(data_dir).expanduser().resolve())


def _chosen(stages: list[Stage]) -> set[Stage]:
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    return set(stages)


def _summary(report: StageReport) -> dict:
    return {"counts": report.counts, "outputs": report.outputs, "seconds": round(report.seconds, 1)}


@flow(name="faces-pipeline", log_prints=True)
def faces_pipeline(
    data_dir: str = "data",
    stages: list[Stage] = list(STAGES),
    force: bool = False,
    scrape: ScrapeConfig = ScrapeConfig(),
    preprocess: PreprocessConfig = PreprocessConfig(),
    validate: ValidateConfig = ValidateConfig(),
    train: TrainConfig = TrainConfig(),
    export: ExportConfig = ExportConfig(),
) -> dict[str, dict]:
    """Scrape -> preprocess -> validate -> train -> export; `stages` runs a subset (always in this
    order), `force` redoes work whose inputs did not change."""
    data_dir, chosen = _absolute(data_dir), _chosen(stages)
    results: dict[str, dict] = {}
    if "scrape" in chosen:
        results["scrape"] = _summary(scrape_task(scrape, data_dir, force))
    if "preprocess" in chosen:
        results["preprocess"] = _summary(run_preprocess(preprocess, data_dir, force))
    if "validate" in chosen:
        results["validate"] = _summary(
            cache_checked(validate_task, data_dir, force)(validate, data_dir, force)
        )
    if "train" in chosen:
        results["train"] = _summary(cache_checked(train_task, data_dir, force)(train, data_dir, force))
    if "export" in chosen:
        results["export"] = _summary(cache_checked(export_task, data_dir, force)(export, data_dir, force))
    return results


@flow(name="scrape")
def scrape_flow(data_dir: str = "data", force: bool = False, scrape: ScrapeConfig = ScrapeConfig()) -> dict:
    return _summary(scrape_task(scrape, _absolute(data_dir), force))


@flow(name="preprocess")
def preprocess_flow(
    data_dir: str = "data", force: bool = False, preprocess: PreprocessConfig = PreprocessConfig()
) -> dict:
    return _summary(run_preprocess(preprocess, _absolute(data_dir), force))


@flow(name="validate")
def validate_flow(
    data_dir: str = "data", force: bool = False, validate: ValidateConfig = ValidateConfig()
) -> dict:
    data_dir = _absolute(data_dir)
    return _summary(cache_checked(validate_task, data_dir, force)(validate, data_dir, force))


@flow(name="train")
def train_flow(data_dir: str = "data", force: bool = False, train: TrainConfig = TrainConfig()) -> dict:
    data_dir = _absolute(data_dir)
    return _summary(cache_checked(train_task, data_dir, force)(train, data_dir, force))


@flow(name="export")
def export_flow(
    data_dir: str = "data", force: bool = False, export: ExportConfig = ExportConfig(), run: str | None = None
) -> dict:
    """Export a training run (default: the latest) into exports/<run>/."""
    data_dir = _absolute(data_dir)
    return _summary(cache_checked(export_task, data_dir, force, run)(export, data_dir, force, run=run))


STAGE_FLOWS = {
    "scrape": scrape_flow,
    "preprocess": preprocess_flow,
    "validate": validate_flow,
    "train": train_flow,
    "export": export_flow,
}
