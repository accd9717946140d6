"""The temporary Prefect server a `faces` command starts when no PREFECT_API_URL is set.

Prefect starts one on a random free port in 8000-8999, but only binds it seconds later (uvicorn's
start-up, slower still on a loaded machine). Two `faces` commands started seconds apart could pick
the same port; the second then talked to the first one's server, which stopped mid-run when the
first command ended. Here the port is chosen and bound under a file lock, so a second command waits
until the first one's server answers, and then finds that port taken.

Prefect waits 20 s for its server by default; under load that is too short, so the default here is
120 s (the user's own PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS wins).
"""

import fcntl
import os
import sys
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = "120"


def prepare_environment() -> None:
    """Settings read when Prefect is imported: call this before the first Prefect import."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_SECONDS)


def start_if_needed() -> str | None:
    """Start this process's temporary server unless an API URL is configured; returns its URL."""
    prepare_environment()
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    lock_path = Path(PREFECT_HOME.value()).expanduser() / "faces-server-start.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    server = SubprocessASGIServer()  # the instance Prefect's own client reuses
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the server answers
        server.start()
    print(
        f"faces: temporary Prefect server at {server.address} (PREFECT_API_URL names your own)",
        file=sys.stderr,
    )
    return server.api_url
