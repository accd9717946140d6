"""Deployments: faces-pipeline/nightly (cron), faces-pipeline/manual, and <stage>/manual for each stage.

faces.toml is their one source. `faces serve` serves them from one process; `faces deploy --pool NAME`
registers the very same definitions (names, tags, parameters, schedule, version, descriptions) on a
process work pool, for `prefect worker start --pool NAME`. Either can replace the other without losing
anything. Each deployment's default parameters are what faces.toml sets (the data root, and only the
keys its tables name: the rest are the flows' own defaults, so the Parameters tab and
`prefect deployment inspect` stay short); `prefect deployment run ... --param` overrides them
(validated by the server).
"""

import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

from prefect import deploy, serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from common.report import BadInputError
from flows.config import STAGES, PipelineConfig
from flows.import_flow import import_flow
from flows.pipeline import STAGE_FLOWS, faces_pipeline

PROJECT = Path(__file__).resolve().parents[1]
NIGHTLY = "Nightly: crawl again, crop new photos, snapshot if changed, continue training, export."


def _git(*args: str) -> str:
    """A read-only git command in the project folder; "" when git or the checkout is missing."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def project_version() -> str:
    """The package version and the git commit the code is at: `0.1.0+g1a2b3c4d5e6f` (`.dirty` when
    tracked files differ from it), or the package version alone outside a git checkout."""
    try:
        version = package_version("faces-pipeline")
    except PackageNotFoundError:
        version = "0+unknown"
    commit = _git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return version
    dirty = ".dirty" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{version}+g{commit}{dirty}"


def tables_set(cfg: PipelineConfig) -> dict[str, dict]:
    """Each stage table's keys that faces.toml sets, then `timeouts` and `notify` likewise; tables it
    leaves out are left out."""
    models = {**cfg.stage_configs(), **cfg.run_options()}
    tables = {
        name: model.model_dump(mode="json", exclude_unset=True, by_alias=True)
        for name, model in models.items()
    }
    return {name: table for name, table in tables.items() if table}


def build_deployments(cfg: PipelineConfig) -> list[RunnerDeployment]:
    """Every deployment, as faces.toml defines it; `faces serve` and `faces deploy` both use these."""
    data_dir = str(Path(cfg.data_dir).expanduser().resolve())
    tables = tables_set(cfg)
    options = {name: tables[name] for name in cfg.run_options() if name in tables}
    common = dict(version=project_version(), paused=False, entrypoint_type=EntrypointType.MODULE_PATH)
    pipeline_params = {"data_dir": data_dir, **tables}
    nightly = faces_pipeline.to_deployment(
        "nightly",
        schedule=Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone),
        parameters=pipeline_params,
        description=NIGHTLY,
        tags=["faces", "nightly"],
        **common,
    )
    manual = faces_pipeline.to_deployment(
        "manual",
        parameters=pipeline_params,
        description="The whole pipeline, on demand.",
        tags=["faces"],
        **common,
    )
    stages = [
        STAGE_FLOWS[stage].to_deployment(
            "manual",
            parameters={"data_dir": data_dir, **{k: v for k, v in tables.items() if k == stage}, **options},
            description=f"Only the {stage} stage.",
            tags=["faces", stage],
            **common,
        )
        for stage in STAGES
    ]
    importing = import_flow.to_deployment(
        "manual",
        parameters={"data_dir": data_dir, **{k: v for k, v in tables.items() if k == "scrape"}},
        description="Import photos already on disk into the raw store: "
        "--param paths='[\"/path/to/photos\"]' (files, folders, zip archives).",
        tags=["faces", "import"],
        **common,
    )
    return [nightly, manual, *stages, importing]


def serve_all(cfg: PipelineConfig) -> None:
    """Serve every deployment until interrupted. One run at a time here; the data root's lock keeps
    runs of other `faces serve` processes or workers off it while one runs (flows/root_lock.py)."""
    serve(*build_deployments(cfg), limit=1)


def _check_pool(pool: str) -> None:
    """A work pool on a lasting server: deployments on a command's temporary server would vanish with it."""
    if not PREFECT_API_URL.value():
        raise BadInputError(
            "faces deploy needs a Prefect server: start one (prefect server start) and set PREFECT_API_URL, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise BadInputError(
                f"work pool {pool!r} does not exist; create it with "
                f"`prefect work-pool create {pool} --type process`, then run `faces deploy` again"
            ) from None


def deploy_all(cfg: PipelineConfig, pool: str) -> list[str]:
    """Register every deployment on the work pool `pool` (no image: the workers run this project's
    installed code). Returns `<flow>/<deployment>` of each."""
    _check_pool(pool)
    deployments = build_deployments(cfg)
    deploy(
        *deployments,
        work_pool_name=pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return [f"{d.flow_name}/{d.name}" for d in deployments]
