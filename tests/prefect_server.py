"""A real Prefect server on 127.0.0.1 for deployment tests, talked to over its REST API."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


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
        response = requests.get(f"{self.api}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict) -> list | dict:
        response = requests.post(f"{self.api}{path}", json=body, timeout=10)
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
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
