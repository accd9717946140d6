"""A real Prefect server on 127.0.0.1 for deployment tests, talked to over its REST API, and the
loopback servers the flows talk to in those tests: a webhook receiver and a website that holds requests."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import requests

from demo.server import RecordingHandler, RecordingServer


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            # The scheduler normally looks every 60 s; the test wants upcoming runs sooner.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            # `faces serve` looks for due runs every 10 s; sooner here, so tests wait less.
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            # Workers look for runs every 10 s; sooner here too.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        self.log = open(home / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if requests.get(f"{self.api}/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise TimeoutError("prefect server did not become healthy")

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def post(self, path: str, body: dict) -> list | dict:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict | None = None) -> list | dict:
        """One API call, as Prefect's own clients make it: the server answers 503 when its SQLite
        database is busy (`is_client_retryable_exception`), having done nothing, and a client is meant
        to try again; Prefect's retries 429, 502 and 503 up to PREFECT_CLIENT_MAX_RETRIES (5) times,
        backing off exponentially. The same here, so a busy machine is not a failed test."""
        for attempt in range(6):
            response = requests.request(method, f"{self.api}{path}", json=body, timeout=10)
            if response.status_code not in (429, 502, 503) or attempt == 5:
                break
            time.sleep(float(response.headers.get("Retry-After") or 2**attempt))
        response.raise_for_status()
        return response.json()

    def deployment(self, flow: str, name: str) -> dict | None:
        response = requests.get(f"{self.api}/deployments/name/{flow}/{name}", timeout=10)
        return response.json() if response.ok else None

    def wait_for_deployments(self, names: list[tuple[str, str]], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.deployment(f, n) for f, n in names):
                return
            time.sleep(1)
        raise TimeoutError(f"deployments not registered: {names}")

    def wait_for_flow_run(self, flow_run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} did not finish: {run['state']}")

    def scheduled_runs(self, deployment_id: str) -> list[dict]:
        return self.post(
            "/flow_runs/filter",
            {
                "flow_runs": {
                    "deployment_id": {"any_": [deployment_id]},
                    "state": {"type": {"any_": ["SCHEDULED"]}},
                }
            },
        )

    def stop(self) -> None:
        stop_process(self.process, grace=20)
        self.log.close()

    # ------------------------------------------------------------ runs, task runs, logs, events

    def trigger(self, flow: str, name: str, parameters: dict | None = None) -> str:
        """Create a run of a deployment now (overriding some of its parameters); returns its id."""
        deployment = self.deployment(flow, name)
        assert deployment, f"no deployment {flow}/{name}"
        run = self.post(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters or {}})
        return run["id"]

    def task_runs(self, flow_run_id: str) -> list[dict]:
        return self.post("/task_runs/filter", {"task_runs": {}, "flow_runs": {"id": {"any_": [flow_run_id]}}})

    def log_messages(self, flow_run_id: str) -> list[str]:
        logs = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
        return [entry["message"] for entry in logs]

    def events(self, prefix: str) -> list[dict]:
        return self.post("/events/filter", {"filter": {"event": {"prefix": [prefix]}}, "limit": 50})["events"]


def wait_until(condition, what: str, timeout: float = 300):
    """Poll `condition` until it returns something truthy (returned); a generous bound, not a timing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what}")


# ------------------------------------------------------------ loopback servers the flows talk to


class _WebhookHandler(RecordingHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.owner.record({"path": self.path, "json": json.loads(body or b"null")})
        status = self.owner.status
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookReceiver(RecordingServer):
    """A webhook endpoint on 127.0.0.1 that records each POST's path and JSON, answering `status`."""

    def __init__(self, status: int = 200) -> None:
        super().__init__(_WebhookHandler)
        self.status = status

    def messages(self) -> list[dict]:
        return [entry["json"] for entry in self.requests()]


class _HeldHandler(RecordingHandler):
    def do_GET(self) -> None:
        self.owner.record(self.path)
        self.owner.gate.wait(self.owner.hold_seconds)
        if self.path == "/robots.txt":
            body, status = b"", 404
        else:
            body, status = b"<html><body><p>No pictures here.</p></body></html>", 200
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HeldSite(RecordingServer):
    """A website with no pictures that holds every request until release() (at most `hold_seconds`):
    a crawl on it is inside its stage for as long as the test wants."""

    def __init__(self, hold_seconds: float = 120) -> None:
        super().__init__(_HeldHandler)
        self.gate, self.hold_seconds = threading.Event(), hold_seconds

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.release()
        super().stop()

    def scrape_table(self) -> dict:
        """A [scrape] table that crawls this site quickly."""
        return {
            "seeds": [self.url("/")],
            "allow_networks": ["127.0.0.0/8"],
            "user_agent": "faces-pipeline-test/0.1 (+http://127.0.0.1/)",
            "default_delay": 0.0,
            "max_retries": 0,
        }


# ------------------------------------------------------------ workers and deployment definitions


class Worker:
    """`prefect worker start` on a process pool, one run at a time, its output in `log`."""

    def __init__(self, server: PrefectServer, pool: str, name: str, folder: Path) -> None:
        self.name, self.log = name, folder / f"worker-{name}.log"
        command = ["worker", "start", "--pool", pool, "--name", name, "--limit", "1"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", *command],
            env=server.env,
            cwd=folder,  # not the project folder: a worker runs the installed package
            stdout=open(self.log, "w"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )

    def submitted(self, flow_run_id: str) -> bool:
        return f"submitting flow run '{flow_run_id}'" in self.log.read_text()

    def stop(self) -> None:
        stop_process(self.process, grace=60)


PROJECT = Path(__file__).resolve().parents[1]
STAGE_NAMES = ("scrape", "preprocess", "validate", "train", "export")


def expected_version_prefix() -> str:
    """The package version and the checkout's commit, found here without the code under test."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"{version('faces-pipeline')}+g{commit}"


def expected_deployments(config: Path) -> dict[tuple[str, str], dict]:
    """Each deployment's tags and parameters as faces.toml defines them: the data root, the tables it
    sets (each stage deployment its own), and [timeouts] and [notify] for all."""
    toml = tomllib.loads(config.read_text())
    options = {key: toml[key] for key in ("timeouts", "notify") if key in toml}
    tables = {stage: toml[stage] for stage in STAGE_NAMES if stage in toml}
    pipeline = {"data_dir": toml["data_dir"], **tables, **options}
    expected = {
        ("faces-pipeline", "nightly"): {"tags": ["faces", "nightly"], "parameters": pipeline},
        ("faces-pipeline", "manual"): {"tags": ["faces"], "parameters": pipeline},
    }
    for stage in STAGE_NAMES:
        own = {stage: tables[stage]} if stage in tables else {}
        parameters = {"data_dir": toml["data_dir"], **own, **options}
        expected[(stage, "manual")] = {"tags": ["faces", stage], "parameters": parameters}
    return expected


def assert_deployments_follow(server: PrefectServer, config: Path) -> list[dict]:
    """`faces serve` and `faces deploy` register the same: names, tags, parameters, schedule, version."""
    schedule = tomllib.loads(config.read_text())["schedule"]
    deployments = []
    for (flow, name), expected in expected_deployments(config).items():
        deployment = server.deployment(flow, name)
        assert deployment, f"{flow}/{name} is missing"
        assert deployment["tags"] == expected["tags"], (flow, name)
        assert deployment["parameters"] == expected["parameters"], (flow, name)
        assert deployment["version"].startswith(expected_version_prefix()), deployment["version"]
        assert deployment["description"], (flow, name)
        crons = [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deployment["schedules"]]
        assert crons == ([(schedule["cron"], schedule["timezone"])] if name == "nightly" else []), crons
        deployments.append(deployment)
    return deployments
