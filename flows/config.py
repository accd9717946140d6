"""faces.toml -> PipelineConfig: one table per stage, validated by the same models the flows take."""

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.config import StrictModel, parse_model, read_toml
from export.config import ExportConfig
from models.config import TrainConfig
from preprocess.config import PreprocessConfig
from scraper.config import ScrapeConfig
from validate.config import ValidateConfig

Stage = Literal["scrape", "preprocess", "validate", "train", "export"]
STAGES: tuple[Stage, ...] = ("scrape", "preprocess", "validate", "train", "export")


class ScheduleConfig(StrictModel):
    """When `faces-pipeline/nightly` runs. Table `[schedule]` in faces.toml."""

    cron: str = Field("0 3 * * *", description="Cron expression of the nightly run.")
    timezone: str = Field("UTC", description="IANA timezone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError  # Prefect's own cron parser

        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as e:
            raise ValueError(f"not a cron expression ({e})") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown timezone; use an IANA name such as Europe/Berlin") from None
        return value


class TimeoutsConfig(StrictModel):
    """Seconds each stage may run before it fails as timed out (not retried); 0 = no limit.

    Table `[timeouts]`. Kept apart from the stage tables so that setting one does not change a stage
    config's hash, and with it every cached result."""

    scrape: float = Field(0, ge=0, description="Seconds the scrape stage may run; 0 = no limit.")
    preprocess: float = Field(0, ge=0, description="Seconds the preprocess stage may run; 0 = no limit.")
    validate_: float = Field(
        0, ge=0, alias="validate", description="Seconds the validate stage may run; 0 = no limit."
    )
    train: float = Field(0, ge=0, description="Seconds the train stage may run; 0 = no limit.")
    export: float = Field(0, ge=0, description="Seconds the export stage may run; 0 = no limit.")

    model_config = StrictModel.model_config | {"populate_by_name": True}

    def seconds(self, stage: Stage) -> float | None:
        """The stage's limit for Prefect's `timeout_seconds`: None when it has none."""
        return getattr(self, "validate_" if stage == "validate" else stage) or None


class NotifyConfig(StrictModel):
    """Who hears of a failed or crashed run, or one whose training warned. Table `[notify]`."""

    webhook: str | None = Field(
        None,
        description="URL that gets a JSON POST when a run fails, crashes or its training warns "
        "(Slack-style `text`).",
    )
    timeout_seconds: float = Field(10.0, gt=0, le=120, description="How long one POST may take (s).")

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://hooks.example.org/faces")
        return value


class PipelineConfig(StrictModel):
    data_dir: str = Field("data", description="The data root every stage reads and writes.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    model_config = StrictModel.model_config | {"populate_by_name": True}

    @model_validator(mode="after")
    def _stages_agree(self) -> "PipelineConfig":
        """Settings that must match across stages are checked here, before any stage runs."""
        crop, size = self.preprocess.crop_size, self.validate_.image_size
        if crop != size:
            raise ValueError(
                f"[preprocess] crop_size = {crop} but [validate] image_size = {size}: validate would "
                f"quarantine every crop; set both to the same size"
            )
        if not self.data_dir.strip():
            raise ValueError('data_dir is empty; give a folder such as "data"')
        return self

    def stage_configs(self) -> dict[Stage, StrictModel]:
        """Each stage's settings, keyed by stage name: the flows' parameters of the same names."""
        return {stage: getattr(self, "validate_" if stage == "validate" else stage) for stage in STAGES}

    def run_options(self) -> dict[str, StrictModel]:
        """How every flow runs, whatever its stages: the `timeouts` and `notify` parameters."""
        return {"timeouts": self.timeouts, "notify": self.notify}


def parse_config(data: dict, source: str = "config") -> PipelineConfig:
    return parse_model(PipelineConfig, data, source)


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read faces.toml; None gives the built-in defaults. Errors name the file, table and key."""
    if path is None:
        return PipelineConfig()
    return parse_config(read_toml(path), str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. [scrape] resolve
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: PipelineConfig) -> str:
    """The config as faces.toml text (unset optional keys are left out, as TOML has no null)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    lines = [f"data_dir = {_toml_value(data.pop('data_dir'))}"]
    for table, values in data.items():
        lines += ["", f"[{table}]"]
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
