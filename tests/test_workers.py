"""`faces deploy` on a process work pool, run by real `prefect worker` processes on a real server:
faces.toml's deployments, alerts with their deployment, stage timeouts, one data root for many workers."""

import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from prefect.states import Failed
from prefect.task_engine import TaskRunTimeoutError

from flows.pipeline import transient_in_time
from tests.prefect_server import (
    HeldSite,
    PrefectServer,
    WebhookReceiver,
    Worker,
    assert_deployments_follow,
    wait_until,
)

POOL = "faces"


def faces_toml(data_dir: Path, webhook: str) -> str:
    return f"""
data_dir = "{data_dir}"

[notify]
webhook = "{webhook}"

[validate]
min_images = 8

[schedule]
cron = "30 2 * * 1-5"
timezone = "America/New_York"

[train]
steps = 4

[timeouts]
train = 7200
"""


@dataclass
class Deployed:
    server: PrefectServer
    config: Path
    folder: Path
    receiver: WebhookReceiver
    output: str
    worker: Worker


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A server, a process pool, `faces deploy` on it, a webhook receiver, and worker A."""
    folder = tmp_path_factory.mktemp("workers")
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    receiver = WebhookReceiver().start()
    worker = None
    try:
        config = folder / "faces.toml"
        config.write_text(faces_toml(folder / "data", receiver.url("/hook")))
        prefect = [sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"]
        assert subprocess.run(prefect, env=server.env, capture_output=True, timeout=120).returncode == 0
        faces = [sys.executable, "-m", "flows.cli", "deploy", "--config", str(config), "--pool", POOL]
        done = subprocess.run(faces, env=server.env, cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        worker = Worker(server, POOL, "A", folder)
        yield Deployed(server, config, folder, receiver, done.stdout, worker)
    finally:
        if worker is not None:
            worker.stop()
        receiver.stop()
        server.stop()


def messages_about(receiver: WebhookReceiver, flow_run_id: str) -> list[dict]:
    return [m for m in receiver.messages() if m["flow_run_id"] == flow_run_id]


def test_faces_deploy_registers_faces_toml_on_the_pool(deployed):
    for deployment in assert_deployments_follow(deployed.server, deployed.config):
        assert deployment["work_pool_name"] == POOL and not deployment["paused"]
    assert "deployed faces-pipeline/nightly on work pool faces" in deployed.output


def test_a_worker_runs_a_deployed_stage_and_a_success_alerts_nobody(deployed, tmp_path):
    with HeldSite() as site:
        site.release()  # answers at once
        flow_run_id = deployed.server.trigger(
            "scrape", "manual", {"data_dir": str(tmp_path / "data"), "scrape": site.scrape_table()}
        )
        run = deployed.server.wait_for_flow_run(flow_run_id, timeout=400)
        assert "/" in site.requests()
    assert run["state"]["type"] == "COMPLETED", deployed.worker.log.read_text()[-4000:]
    assert deployed.worker.submitted(flow_run_id)
    assert (tmp_path / "data" / "raw" / "manifest.sqlite").is_file()
    assert messages_about(deployed.receiver, flow_run_id) == []


def test_a_failed_worker_run_alerts_once_with_its_deployment(deployed, tmp_path):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("a file")
    flow_run_id = deployed.server.trigger("validate", "manual", {"data_dir": str(not_a_folder)})
    run = deployed.server.wait_for_flow_run(flow_run_id, timeout=400)
    assert run["state"]["type"] == "FAILED"
    (message,) = wait_until(lambda: messages_about(deployed.receiver, flow_run_id), "the webhook's message")
    assert message["deployment"] == "validate/manual" and "validate/manual" in message["text"]
    assert message["flow_run"] == run["name"] and "is a file" in message["reason"]
    events = wait_until(
        lambda: [
            e
            for e in deployed.server.events("faces.run.failed")
            if e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}"
        ],
        "the faces.run.failed event",
    )
    related = {r["prefect.resource.role"]: r["prefect.resource.name"] for r in events[0]["related"]}
    assert related["deployment"] == "validate/manual"


def test_a_stage_past_its_timeout_fails_once_as_timed_out(deployed, tmp_path):
    """[timeouts] scrape = 2 against a site that answers each request after 8 s: the crawl would
    finish, but the stage has run out of time. A timed-out stage is not retried."""
    with HeldSite(hold_seconds=8) as slow_site:
        parameters = {
            "data_dir": str(tmp_path / "data"),
            "scrape": slow_site.scrape_table(),
            "timeouts": {"scrape": 2},
        }
        flow_run_id = deployed.server.trigger("scrape", "manual", parameters)
        run = deployed.server.wait_for_flow_run(flow_run_id, timeout=400)
    assert run["state"]["type"] == "FAILED", deployed.worker.log.read_text()[-4000:]
    (task_run,) = deployed.server.task_runs(flow_run_id)
    assert task_run["state"]["name"] == "TimedOut", task_run["state"]
    assert "exceeded timeout of 2.0 second(s)" in task_run["state"]["message"]
    assert task_run["run_count"] == 1  # no retries


def test_only_running_out_of_stage_time_is_not_retried():
    """A download that times out inside a stage is transient (retried); the stage's own limit is not."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        client.settimeout(0.05)
        with pytest.raises(TimeoutError) as network:
            client.recv(1)  # the listener never sends
    assert transient_in_time(None, None, Failed(data=network.value))
    stage_limit = TaskRunTimeoutError("Scope timed out after 2 second(s).")
    assert not transient_in_time(None, None, Failed(data=stage_limit))


def stage_interval(server: PrefectServer, flow_run_id: str) -> tuple[datetime, datetime]:
    (task_run,) = server.task_runs(flow_run_id)
    return datetime.fromisoformat(task_run["start_time"]), datetime.fromisoformat(task_run["end_time"])


def test_two_workers_never_run_stages_on_one_data_root_at_once(deployed, tmp_path):
    """Worker A and worker B (one run each at a time) each take one of two runs on the same data root;
    the first run's crawl is held until the second has either started its stage or is waiting."""
    server, data_dir = deployed.server, tmp_path / "shared-data"
    second_worker = Worker(server, POOL, "B", deployed.folder)
    try:
        with HeldSite() as site:
            parameters = {"data_dir": str(data_dir), "scrape": site.scrape_table()}
            first = server.trigger("scrape", "manual", parameters)
            wait_until(site.requests, "the first run's crawl", timeout=400)
            second = server.trigger("scrape", "manual", parameters)

            def second_waits_or_runs() -> bool:
                waiting = any("is in use by" in m for m in server.log_messages(second))
                return waiting or bool(server.task_runs(second))

            wait_until(second_waits_or_runs, "the second run to reach its stage", timeout=400)
            site.release()
            runs = [server.wait_for_flow_run(run_id, timeout=400) for run_id in (first, second)]
    finally:
        second_worker.stop()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], [r["state"] for r in runs]
    # Each worker took one run: worker A is busy with one while the other waits in the pool.
    takers = {w.name for w in (deployed.worker, second_worker) for r in (first, second) if w.submitted(r)}
    assert takers == {"A", "B"}
    (start_1, end_1), (start_2, end_2) = stage_interval(server, first), stage_interval(server, second)
    assert end_1 <= start_2, f"the stages overlapped: first {start_1}..{end_1}, second {start_2}..{end_2}"
    (waiting,) = [m for m in server.log_messages(second) if "is in use by" in m]
    assert str(data_dir) in waiting and first in waiting
