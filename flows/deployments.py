"""Deployments: faces-pipeline/nightly (cron), faces-pipeline/manual, and <stage>/manual for each stage.

`faces serve` serves them all from one process; each deployment's default parameters come from
faces.toml, and `prefect deployment run ... --param` overrides them (validated by the server).
"""

from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from flows.config import STAGES, PipelineConfig
from flows.pipeline import STAGE_FLOWS, faces_pipeline


def build_deployments(cfg: PipelineConfig) -> list:
    data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    stage_params = {stage: c.model_dump(mode="json") for stage, c in cfg.stage_configs().items()}
    pipeline_params = {"data_dir": data_dir, **stage_params}
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
            parameters={"data_dir": data_dir, stage: stage_params[stage]},
            description=f"Only the {stage} stage.",
            tags=["faces", stage],
        )
        for stage in STAGES
    ]
    return [nightly, manual, *stages]


def serve_all(cfg: PipelineConfig) -> None:
    """Serve every deployment until interrupted. One run at a time: the stages share a data root."""
    serve(*build_deployments(cfg), limit=1)
