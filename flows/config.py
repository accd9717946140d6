"""faces.toml -> PipelineConfig: one table per stage, validated by the same models the flows take."""

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from common.config import StrictModel
from common.report import BadInputError
from models.config import ExportConfig, TrainConfig
from preprocess.config import PreprocessConfig, ValidateConfig
from scraper.config import ScrapeConfig

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


class PipelineConfig(StrictModel):
    data_dir: str = Field("data", description="The data root every stage reads and writes.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    scrape: ScrapeConfig = Field(default_factory=ScrapeConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    model_config = StrictModel.model_config | {"populate_by_name": True}

    def stage_configs(self) -> dict[Stage, StrictModel]:
        """Each stage's settings, keyed by stage name: the flows' parameters of the same names."""
        return {stage: getattr(self, "validate_" if stage == "validate" else stage) for stage in STAGES}


def describe_errors(error: ValidationError, source: str) -> str:
    """One line per problem, naming the table and key as the user wrote them."""
    lines = []
    for e in error.errors():
        loc = [str(p) for p in e["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {where}; check its spelling against docs/DESIGN.md")
        else:
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{source}: {where}: {e['msg']}{got}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise BadInputError(describe_errors(e, source)) from None


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read faces.toml; None gives the built-in defaults. Errors name the file, table and key."""
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"config file {path} does not exist; pass an existing faces.toml with --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None
    return parse_config(data, str(path))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: PipelineConfig) -> str:
    """The config as faces.toml text (unset optional keys are left out, as TOML has no null)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    lines = [f"data_dir = {_toml_value(data.pop('data_dir'))}"]
    for table, values in data.items():
        lines += ["", f"[{table}]"]
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
