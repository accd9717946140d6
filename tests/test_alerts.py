"""A failed or crashed run tells someone: a `faces.run.*` event on the server and one webhook POST."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from prefect.settings import PREFECT_API_URL

from common.layout import DataRoot
from common.report import BadInputError
from flows.config import NotifyConfig
from flows.pipeline import scrape_flow, train_flow, validate_flow
from scraper.config import ScrapeConfig
from tests.prefect_server import HeldSite, PrefectServer, WebhookReceiver, wait_until
from tests.train_helpers import blobs, make_dataset, tiny

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def receiver():
    with WebhookReceiver() as receiver:
        yield receiver


def a_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("a file, not a folder")
    return path


def harness_api() -> PrefectServer:
    """The session's test server (conftest's prefect_harness), read through the same REST helpers."""
    server = PrefectServer.__new__(PrefectServer)
    server.api = PREFECT_API_URL.value()
    return server


def test_a_failed_run_posts_one_message_naming_the_run_and_the_reason(tmp_path, receiver):
    data_dir = a_file(tmp_path)
    state = validate_flow(
        data_dir=str(data_dir), notify=NotifyConfig(webhook=receiver.url("/hook")), return_state=True
    )
    assert state.is_failed()
    flow_run_id = str(state.state_details.flow_run_id)
    (request,) = receiver.requests()
    message = request["json"]
    assert request["path"] == "/hook"
    assert message["state"] == "Failed" and message["flow_run_id"] == flow_run_id
    assert message["flow_run"] == "validate" and "'validate'" in message["text"]
    assert f"data_dir {data_dir} is a file" in message["reason"] and "is a file" in message["text"]
    # The same failure as a Prefect event, for automations.
    server = harness_api()
    events = wait_until(
        lambda: [
            e
            for e in server.events("faces.run.")
            if e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}"
        ],
        "the faces.run.failed event",
        timeout=60,
    )
    (event,) = events
    assert event["event"] == "faces.run.failed" and "is a file" in event["payload"]["reason"]


def test_a_successful_run_posts_nothing(tmp_path, receiver):
    with HeldSite() as site:
        site.release()  # answers at once
        result = scrape_flow(
            data_dir=str(tmp_path / "data"),
            scrape=ScrapeConfig(**site.scrape_table()),
            notify=NotifyConfig(webhook=receiver.url("/hook")),
        )
        assert "/" in site.requests()  # it did crawl
    assert result["counts"] is not None
    assert receiver.requests() == []


def test_a_run_whose_training_warns_posts_one_warned_message_and_a_cached_rerun_none(tmp_path, receiver):
    data_dir = tmp_path / "data"
    make_dataset(DataRoot(data_dir), blobs(n=32))
    config = tiny(steps=8, collapse_diversity=0.999, collapse_warmup=0)  # any fresh G "collapses"
    notify = NotifyConfig(webhook=receiver.url("/hook"))
    state = train_flow(data_dir=str(data_dir), train=config, notify=notify, return_state=True)
    assert state.is_completed()  # the run itself completes: its generator exists, it is just bad
    (message,) = receiver.messages()
    assert message["state"] == "Warned" and message["flow_run"] == "train"
    assert (
        "training warned (1): step 4: mode collapse" in message["reason"] and "run.json" in message["reason"]
    )
    flow_run_id = str(state.state_details.flow_run_id)
    server = harness_api()
    events = wait_until(
        lambda: [
            e
            for e in server.events("faces.run.warned")
            if flow_run_id in e["resource"]["prefect.resource.id"]
        ],
        "the faces.run.warned event",
        timeout=60,
    )
    assert "mode collapse" in events[0]["payload"]["reason"]

    train_flow(data_dir=str(data_dir), train=config, notify=notify)  # served from the cache: told once
    assert len(receiver.messages()) == 1


def test_a_failing_webhook_does_not_mask_the_runs_own_failure(tmp_path):
    data_dir = a_file(tmp_path)
    with WebhookReceiver(status=500) as broken:
        with pytest.raises(BadInputError, match="is a file"):
            validate_flow(data_dir=str(data_dir), notify=NotifyConfig(webhook=broken.url("/hook")))
        assert len(broken.requests()) == 1  # one attempt, no retries


CRAWL_FOREVER = """
import sys
from flows.config import NotifyConfig
from flows.pipeline import scrape_flow
from scraper.config import ScrapeConfig

seed, data_dir, webhook = sys.argv[1:]
scrape = ScrapeConfig(seeds=[seed], allow_networks=["127.0.0.0/8"], default_delay=0.0, timeout=2.0)
scrape_flow(data_dir=data_dir, scrape=scrape, notify=NotifyConfig(webhook=webhook))
"""


def test_a_crashed_run_posts_one_crashed_message(tmp_path, receiver):
    """A flow process stopped by SIGTERM mid-stage (a worker shut down, a node drained) is Crashed."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with HeldSite() as site:  # holds the crawl inside its stage until the process is stopped
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(CRAWL_FOREVER),
                site.url("/"),
                str(tmp_path / "data"),
                receiver.url("/hook"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until(site.requests, "the crawl's first request", timeout=180)
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=120)
        finally:
            process.kill()
    (message,) = receiver.messages()
    assert message["state"] == "Crashed", output[-3000:]
    assert message["flow_run"] == "scrape" and "crashed" in message["text"]
