"""`faces serve` against a real Prefect server: a triggered run completes, the nightly one is scheduled."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from demo.gallery import DemoGallery
from tests.prefect_server import PrefectServer

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def tiny_config(data_dir: Path, seed_url: str) -> str:
    return f"""
data_dir = "{data_dir}"

[schedule]
cron = "15 4 * * *"
timezone = "Europe/Berlin"

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


def assert_nightly_scheduled(server: PrefectServer, data_dir: Path) -> None:
    """The nightly deployment carries its cron schedule, and the scheduler has created upcoming runs."""
    nightly = server.deployment("faces-pipeline", "nightly")
    schedule = nightly["schedules"][0]["schedule"]
    assert (schedule["cron"], schedule["timezone"]) == ("15 4 * * *", "Europe/Berlin")
    deadline = time.monotonic() + 60
    while not (upcoming := server.scheduled_runs(nightly["id"])) and time.monotonic() < deadline:
        time.sleep(1)
    assert upcoming, "the scheduler created no runs for the nightly deployment"
    assert all(Path(r["parameters"]["data_dir"]) == data_dir for r in upcoming)


def test_serve_run_and_schedule(server, tmp_path):
    data_dir = tmp_path / "data"
    with DemoGallery(n_faces=24, seed=3, crawl_delay=0.0) as gallery:
        config = tmp_path / "faces.toml"
        config.write_text(tiny_config(data_dir, gallery.seed_url))
        serving = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
            env=server.env,
            stdout=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            stage_deployments = [
                (s, "manual") for s in ("scrape", "preprocess", "validate", "train", "export")
            ]
            server.wait_for_deployments(
                [("faces-pipeline", "nightly"), ("faces-pipeline", "manual"), *stage_deployments]
            )

            # The server validates --param overrides against the flow's pydantic parameters.
            rejected = run_cli(server, "deployment", "run", "train/manual", "--param", 'train={"steps": 0}')
            assert rejected.returncode == 1
            assert "train.steps" in rejected.stdout and "minimum of 1" in rejected.stdout

            override = {
                "ngf": 8,
                "ndf": 8,
                "batch_size": 8,
                "steps": 6,
                "checkpoint_every": 3,
                "sample_every": 3,
            }
            started = run_cli(
                server,
                "deployment",
                "run",
                "faces-pipeline/manual",
                "--param",
                f"train={json.dumps(override)}",
            )
            assert started.returncode == 0, started.stdout + started.stderr
            flow_run_id = UUID.search(started.stdout).group(0)
            run = server.wait_for_flow_run(flow_run_id, timeout=400)
            assert run["state"]["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-4000:]
            # While served (stopping `faces serve` pauses the schedule), the scheduler plans nightly runs.
            assert_nightly_scheduled(server, data_dir)
        finally:
            serving.terminate()
            serving.wait(30)

    # Outputs on disk, and the override (6 steps, not faces.toml's 4) reached the training run.
    assert any((data_dir / "raw").glob("*/*.*"))
    assert any((data_dir / "faces").glob("*.png"))
    images = np.load(data_dir / "datasets" / "latest" / "images.npy", mmap_mode="r")
    assert images.shape[1:] == (64, 64, 3) and images.shape[0] >= 8
    run_dir = (data_dir / "runs" / "latest").resolve()
    assert json.loads((run_dir / "run.json").read_text())["config"]["steps"] == 6
    assert (data_dir / "exports" / run_dir.name / "grid.png").is_file()


def test_prefect_yaml_deploys_to_a_process_pool(server):
    """Users of a work pool run `prefect deploy --all` in the project folder."""
    assert run_cli(server, "work-pool", "create", "faces", "--type", "process").returncode == 0
    project = Path(__file__).resolve().parents[1]
    deployed = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        env=server.env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    for flow in ("faces-pipeline", "scrape", "preprocess", "validate", "train", "export"):
        deployment = server.deployment(flow, "manual")
        assert deployment and deployment["work_pool_name"] == "faces", flow
    nightly = server.deployment("faces-pipeline", "nightly")
    assert nightly["work_pool_name"] == "faces" and nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
