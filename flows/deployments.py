"""Deployments: faces-pipeline/nightly (cron), faces-pipeline/manual, and <stage>/manual for each stage.

`faces serve` serves them all from one process; each deployment's default parameters are what
faces.toml sets (the data root, and only the keys its tables name: the rest are the flows' own
defaults, so the Parameters tab and `prefect deployment inspect` stay short), and
`prefect deployment run ... --param` overrides them (validated by the server).
"""

from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.config import STAGES, PipelineConfig
from flows.pipeline import STAGE_FLOWS, faces_pipeline


def tables_set(cfg: PipelineConfig) -> dict[str, dict]:
    """Each stage table's keys that faces.toml sets; tables it leaves out are left out."""
    tables = {
        stage: c.model_dump(mode="json", exclude_unset=True) for stage, c in cfg.stage_configs().items()
    }
    return {stage: table for stage, table in tables.items() if table}


def build_deployments(cfg: PipelineConfig) -> list:
    data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    tables = tables_set(cfg)
    pipeline_params = {"data_dir": data_dir, **tables}
    nightly = faces_pipeline.to_deployment(
        "nightly",
        schedule=Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone),
        parameters=pipeline_params,
        description="Nightly: crawl again, crop new photos, snapshot if changed, continue training, export.",
        tags=["faces", "nightly"],
    )
    manual = faces_pipeline.to_deployment(
        "manual", parameters=pipeline_params, description="The whole pipeline, on demand.", tags=["faces"]
    )
    stages = [
        STAGE_FLOWS[stage].to_deployment(
            "manual",
            parameters={"data_dir": data_dir, **{k: v for k, v in tables.items() if k == stage}},
            description=f"Only the {stage} stage.",
            tags=["faces", stage],
        )
        for stage in STAGES
    ]
    return [nightly, manual, *stages]


def serve_all(cfg: PipelineConfig) -> None:
    """Serve every deployment until interrupted. One run at a time: the stages share a data root."""
    serve(*build_deployments(cfg), limit=1)
