"""`faces serve` against a real Prefect server: a triggered run completes, the nightly one is scheduled."""

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from demo.gallery import DemoGallery
from tests.prefect_server import PrefectServer, assert_deployments_follow

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def tiny_config(data_dir: Path, seed_url: str) -> str:
    return f"""
data_dir = "{data_dir}"

[schedule]
cron = "15 4 * * *"
timezone = "Europe/Berlin"

[timeouts]
train = 7200

[scrape]
seeds = ["{seed_url}"]
allow_networks = ["127.0.0.0/8"]
user_agent = "faces-pipeline-test/0.1 (+http://127.0.0.1/)"
default_delay = 0.0

[preprocess]
workers = 1

[validate]
min_images = 8
recheck_faces = false

[train]
ngf = 8
ndf = 8
batch_size = 8
steps = 4
checkpoint_every = 2
sample_every = 2

[export]
n_samples = 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    yield server
    server.stop()


def run_cli(server: PrefectServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=server.env, capture_output=True, text=True, timeout=120
    )


STAGE_DEPLOYMENTS = [(s, "manual") for s in ("scrape", "preprocess", "validate", "train", "export")]
DEPLOYMENTS = [("faces-pipeline", "nightly"), ("faces-pipeline", "manual"), *STAGE_DEPLOYMENTS]


@dataclass
class Served:
    server: PrefectServer
    config: Path
    data_dir: Path
    log: Path


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    """`faces serve` on a tiny faces.toml, with the demo gallery up for as long as it serves."""
    folder = tmp_path_factory.mktemp("served")
    data_dir, config, log = folder / "data", folder / "faces.toml", folder / "serve.log"
    with DemoGallery(n_faces=24, seed=3, crawl_delay=0.0) as gallery:
        config.write_text(tiny_config(data_dir, gallery.seed_url))
        serving = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
            env=server.env,
            stdout=open(log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            server.wait_for_deployments([*DEPLOYMENTS, ("import", "manual")])
            yield Served(server, config, data_dir, log)
        finally:
            serving.terminate()
            serving.wait(30)


def assert_nightly_scheduled(server: PrefectServer, data_dir: Path) -> list[dict]:
    """The nightly deployment carries its cron schedule, and the scheduler has created upcoming runs."""
    nightly = server.deployment("faces-pipeline", "nightly")
    schedule = nightly["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("15 4 * * *", "Europe/Berlin")
    deadline = time.monotonic() + 60
    while not (upcoming := server.scheduled_runs(nightly["id"])) and time.monotonic() < deadline:
        time.sleep(1)
    assert upcoming, "the scheduler created no runs for the nightly deployment"
    assert all(Path(r["parameters"]["data_dir"]) == data_dir for r in upcoming)
    return upcoming


def test_the_server_rejects_a_bad_parameter_override(served):
    rejected = run_cli(served.server, "deployment", "run", "train/manual", "--param", 'train={"steps": 0}')
    assert rejected.returncode == 1
    assert "train.steps" in rejected.stdout and "minimum of 1" in rejected.stdout


def test_serve_run_and_schedule(served):
    server, data_dir = served.server, served.data_dir
    override = {"ngf": 8, "ndf": 8, "batch_size": 8, "steps": 6, "checkpoint_every": 3, "sample_every": 3}
    started = run_cli(
        server, "deployment", "run", "faces-pipeline/manual", "--param", f"train={json.dumps(override)}"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = UUID.search(started.stdout).group(0)
    run = server.wait_for_flow_run(flow_run_id, timeout=400)
    assert run["state"]["type"] == "COMPLETED", served.log.read_text()[-4000:]
    assert run["name"] == "scrape,preprocess,validate,train,export"  # says what ran
    # While served (stopping `faces serve` pauses the schedule), the scheduler plans nightly runs.
    assert_nightly_scheduled(server, data_dir)

    # Outputs on disk, and the override (6 steps, not faces.toml's 4) reached the training run.
    assert any((data_dir / "raw").glob("*/*.*"))
    assert any((data_dir / "faces").glob("*.png"))
    images = np.load(data_dir / "datasets" / "latest" / "images.npy", mmap_mode="r")
    assert images.shape[1:] == (64, 64, 3) and images.shape[0] >= 8
    run_dir = (data_dir / "runs" / "latest").resolve()
    assert json.loads((run_dir / "run.json").read_text())["config"]["steps"] == 6
    assert (data_dir / "exports" / run_dir.name / "grid.png").is_file()


def test_a_scheduled_run_is_named_after_its_deployment_and_night(served):
    """The scheduler's next nightly run, moved to now: `faces serve` runs it as "nightly <date>"."""
    server = served.server
    upcoming = min(assert_nightly_scheduled(server, served.data_dir), key=lambda r: r["expected_start_time"])
    now = datetime.now(UTC).isoformat()
    server.post(
        f"/flow_runs/{upcoming['id']}/set_state",
        {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": now}}, "force": True},
    )
    run = server.wait_for_flow_run(upcoming["id"], timeout=400)
    assert run["state"]["type"] == "COMPLETED", served.log.read_text()[-4000:]
    night = datetime.fromisoformat(upcoming["expected_start_time"]).astimezone(ZoneInfo("Europe/Berlin"))
    assert run["name"] == f"nightly {night.date().isoformat()}"


def test_deployment_parameters_hold_only_what_faces_toml_sets(served):
    """Defaults stay out, so the Parameters tab and `prefect deployment inspect` show faces.toml; tags,
    schedule and version are faces.toml's and the checkout's, as `faces deploy` registers them too."""
    toml = tomllib.loads(served.config.read_text())
    tables = {stage: toml[stage] for stage in ("scrape", "preprocess", "validate", "train", "export")}
    pipeline = served.server.deployment("faces-pipeline", "manual")["parameters"]
    assert pipeline == {"data_dir": str(served.data_dir), **tables, "timeouts": {"train": 7200}}
    for deployment in assert_deployments_follow(served.server, served.config):
        assert deployment["work_pool_name"] is None  # served, not on a pool


def test_the_import_deployment_is_served_and_asks_for_paths(served):
    deployment = served.server.deployment("import", "manual")
    assert deployment["parameters"]["data_dir"] == str(served.data_dir)
    schema = deployment["parameter_openapi_schema"]
    assert "paths" in schema["required"]
    for parameter in ("paths", "data_dir", "licence", "source_url", "force"):
        assert schema["properties"][parameter].get("description"), parameter


def test_flow_parameters_are_described(served):
    for flow, name in DEPLOYMENTS:
        schema = served.server.deployment(flow, name)["parameter_openapi_schema"]["properties"]
        described = ["data_dir", "force", "timeouts", "notify"] + (
            ["stages"] if flow == "faces-pipeline" else []
        )
        for parameter in described:
            assert schema[parameter].get("description"), (flow, name, parameter)


def test_faces_deploy_replaces_served_deployments_without_losing_anything(served):
    """Moving from `faces serve` to a work pool: the same definitions, now on the pool (runs last:
    it moves this module's deployments)."""
    server = served.server
    assert run_cli(server, "work-pool", "create", "faces", "--type", "process").returncode == 0
    deployed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "--config", str(served.config), "--pool", "faces"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for deployment in assert_deployments_follow(server, served.config):
        assert deployment["work_pool_name"] == "faces"


def test_faces_deploy_names_a_missing_pool(served):
    missing = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "--config", str(served.config), "--pool", "nowhere"],
        env=served.server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1
    assert (
        "work pool 'nowhere' does not exist" in missing.stderr
        and "prefect work-pool create" in missing.stderr
    )


def test_faces_deploy_needs_a_lasting_server(tmp_path):
    """Without PREFECT_API_URL a command gets a temporary server: deployments there would vanish."""
    config = tmp_path / "faces.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    refused = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "--config", str(config), "--pool", "faces"],
        env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 1
    assert "faces deploy needs a Prefect server" in refused.stderr and "PREFECT_API_URL" in refused.stderr
