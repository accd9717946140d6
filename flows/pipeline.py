"""The flows: faces-pipeline (all five stages in order) and one flow per stage.

Flows are thin: they pick the stages, hand each task its config, and stop at the first failure.
Parameters are the stage config models, so the Prefect server validates `--param` overrides.
"""

import warnings
from pathlib import Path

from prefect import flow

from common.layout import DataRoot
from flows.config import STAGES, Stage
from flows.tasks import (
    dask_task_runner,
    export_task,
    main_output,
    preprocess_on_dask,
    preprocess_task,
    scrape_task,
    train_task,
    validate_task,
)
from models.config import ExportConfig, TrainConfig
from preprocess.config import PreprocessConfig, ValidateConfig
from scraper.config import ScrapeConfig

# Prefect builds a pydantic model of each flow's parameters; our `validate` parameter (named after
# its faces.toml table) shadows BaseModel.validate there, which is harmless.
warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)

STAGE_TASKS = {
    "scrape": scrape_task,
    "preprocess": preprocess_task,
    "validate": validate_task,
    "train": train_task,
    "export": export_task,
}


def _absolute(data_dir: str) -> str:
    return str(Path(data_dir).expanduser().resolve())


def _ordered(stages: list[Stage]) -> list[Stage]:
    """Run the chosen stages in pipeline order, whatever order they were given in."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def run_stage(stage: Stage, config, data_dir: str, force: bool = False, **kwargs) -> dict:
    """Run one stage's task; `force`, or a deleted output, also refreshes the task's cache."""
    if stage == "scrape":
        report = scrape_task(config, data_dir, force)
    elif stage == "preprocess" and config.dask_address:
        on_dask = preprocess_on_dask.with_options(task_runner=dask_task_runner(config))
        report = on_dask(config, data_dir, force)
    else:
        # A cached result whose output was deleted since is stale: run the stage again.
        output = main_output(stage, DataRoot(data_dir), kwargs.get("run"))
        refresh = force or not output.exists()
        report = STAGE_TASKS[stage].with_options(refresh_cache=refresh)(config, data_dir, force, **kwargs)
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
    """Scrape -> preprocess -> validate -> train -> export; `stages` runs a subset, `force` redoes work."""
    configs = {
        "scrape": scrape,
        "preprocess": preprocess,
        "validate": validate,
        "train": train,
        "export": export,
    }
    data_dir = _absolute(data_dir)
    return {stage: run_stage(stage, configs[stage], data_dir, force) for stage in _ordered(stages)}


@flow(name="scrape")
def scrape_flow(data_dir: str = "data", force: bool = False, scrape: ScrapeConfig = ScrapeConfig()) -> dict:
    return run_stage("scrape", scrape, _absolute(data_dir), force)


@flow(name="preprocess")
def preprocess_flow(
    data_dir: str = "data", force: bool = False, preprocess: PreprocessConfig = PreprocessConfig()
) -> dict:
    return run_stage("preprocess", preprocess, _absolute(data_dir), force)


@flow(name="validate")
def validate_flow(
    data_dir: str = "data", force: bool = False, validate: ValidateConfig = ValidateConfig()
) -> dict:
    return run_stage("validate", validate, _absolute(data_dir), force)


@flow(name="train")
def train_flow(data_dir: str = "data", force: bool = False, train: TrainConfig = TrainConfig()) -> dict:
    return run_stage("train", train, _absolute(data_dir), force)


@flow(name="export")
def export_flow(
    data_dir: str = "data", force: bool = False, export: ExportConfig = ExportConfig(), run: str | None = None
) -> dict:
    """Export a training run (default: the latest) into exports/<run>/."""
    return run_stage("export", export, _absolute(data_dir), force, run=run)


STAGE_FLOWS = {
    "scrape": scrape_flow,
    "preprocess": preprocess_flow,
    "validate": validate_flow,
    "train": train_flow,
    "export": export_flow,
}
