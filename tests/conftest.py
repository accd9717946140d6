"""Test-wide setup: Prefect runs against a throwaway database and result store, never ~/.prefect."""

import os
import tempfile
from pathlib import Path

import pytest

# Set before anything imports prefect: its settings are read once, at import.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="faces-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_PREFECT_HOME / "results")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)
# Tests stay on the loopback: no usage telemetry from Prefect's client or its test servers.
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    if not PHOTOS.is_dir():
        pytest.fail(
            f"{PHOTOS} is missing: the shared photos must sit beside the project (../shared/data/photos)"
        )
    return PHOTOS


@pytest.fixture()
def one_thread():
    """Tiny networks run fastest on one thread, and far faster when other processes share the cores.

    The training tests opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
