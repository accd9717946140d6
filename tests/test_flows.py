"""faces-pipeline in process: all five stages on the demo gallery, caching, subsets, failures."""

import base64
import io
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTaskRunId,
)
from prefect.states import Failed

from common.report import BadInputError
from demo.gallery import DemoGallery
from flows.config import PipelineConfig
from flows.pipeline import faces_pipeline
from flows.policies import is_transient, permanent_errors_named


def tiny_config(data_dir, seed_url: str) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "data_dir": str(data_dir),
            "scrape": {
                "seeds": [seed_url],
                "allow_networks": ["127.0.0.0/8"],
                "user_agent": "faces-pipeline-test/0.1 (+http://127.0.0.1/)",
            },
            "preprocess": {"workers": 1},
            "validate": {"min_images": 8},
            "train": {
                "ngf": 8,
                "ndf": 8,
                "batch_size": 8,
                "steps": 4,
                "checkpoint_every": 2,
                "sample_every": 2,
            },
            "export": {"n_samples": 4},
        }
    )


def run(cfg: PipelineConfig, **kwargs):
    return faces_pipeline(data_dir=cfg.data_dir, **{**cfg.stage_configs(), **kwargs}, return_state=True)


def task_runs(state) -> list:
    """The task runs of one flow run, as the Prefect server recorded them."""
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


def task_states(state) -> dict[str, list[str]]:
    """Task name -> the names of its runs' final states, for one flow run."""
    states: dict[str, list[str]] = {}
    for r in task_runs(state):
        states.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return states


def flow_run_artifacts(state) -> list:
    """The artifacts one flow run (and its task runs) published, newest first."""
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


def flow_run_name(state) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def logs_saying(text: str, *, flow_run_id=None, task_run_id=None, timeout: float = 30) -> list:
    """The stored log lines of a run that contain `text`; logs reach the server in batches, so wait."""
    log_filter = (
        LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
        if task_run_id
        else LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    )
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            found = [log for log in client.read_logs(log_filter) if text in log.message]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def root_key(data_dir) -> str:
    """What artifact keys say about whose they are: the data root's last two folder names."""
    return f"{Path(data_dir).parent.name}-{Path(data_dir).name}"


def tries(state) -> dict[str, int]:
    """Task name -> how many times it ran in one flow run (1: no retry)."""
    return {r.name.rsplit("-", 1)[0]: r.run_count for r in task_runs(state)}


@pytest.fixture(scope="module")
def gallery():
    with DemoGallery(n_faces=24, seed=5, crawl_delay=0.0) as g:
        yield g


@pytest.fixture(scope="module")
def first_run(prefect_harness, gallery, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("flow") / "data", gallery.seed_url)
    state = run(cfg)
    assert state.is_completed(), state.message
    return cfg, state


def test_all_five_stages_produce_their_outputs(first_run, gallery):
    cfg, state = first_run
    results = state.result()
    assert list(results) == ["scrape", "preprocess", "validate", "train", "export"]
    assert not [r for r in gallery.request_log if r.path.startswith("/private/")], "robots.txt ignored"
    data = cfg.data_dir
    images = np.load(f"{data}/datasets/latest/images.npy", mmap_mode="r")
    assert images.shape[0] >= 8 and images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
    assert results["export"]["outputs"]["grid"].endswith("grid.png")
    keys = {a.key for a in flow_run_artifacts(state)}
    root = root_key(data)
    for stage in results:
        assert f"{stage}-summary-{root}" in keys, keys
    expected = {"train-grid", "export-samples", "validate-report", "export-model-card", "validate-checks"}
    assert {f"{key}-{root}" for key in expected} <= keys, keys


def test_unchanged_inputs_are_cached(first_run):
    cfg, _ = first_run
    state = run(cfg)
    assert state.is_completed()
    states = task_states(state)
    assert states["scrape"] == ["Completed"]  # the web may have changed: always crawled
    for stage in ("preprocess", "validate", "train", "export"):
        assert states[stage] == ["Cached"], states


def test_deleted_outputs_are_rebuilt_not_served_from_the_cache(first_run):
    cfg, state = first_run
    export_dir = Path(state.result()["export"]["outputs"]["grid"]).parent
    shutil.rmtree(export_dir)
    again = run(cfg, stages=["export"])
    assert task_states(again) == {"export": ["Completed"]}
    assert (export_dir / "grid.png").is_file()


def test_stage_subset_with_force_reruns_only_those(first_run):
    cfg, _ = first_run
    state = run(cfg, stages=["export", "train"], force=True)
    assert state.is_completed()
    assert task_states(state) == {"train": ["Completed"], "export": ["Completed"]}


def test_export_takes_the_run_train_gave_even_one_served_from_the_cache(first_run):
    cfg = first_run[0].model_copy(deep=True)
    other = cfg.model_copy(deep=True)
    other.train.lr_g = cfg.train.lr_g / 2  # another run on the same dataset
    run(other, stages=["train", "export"])
    state = run(cfg, stages=["train", "export"])  # back: train is served from the cache
    assert task_states(state)["train"] == ["Cached"]
    results = state.result()
    trained = Path(results["train"]["outputs"]["run_dir"]).name
    assert Path(results["export"]["outputs"]["grid"]).parent.name == trained


def test_bad_input_fails_at_once_without_retries(first_run):
    cfg = first_run[0].model_copy(deep=True)  # the other tests share first_run's config
    cfg.validate_.min_images = 100_000
    state = run(cfg, stages=["validate", "train"], force=True)
    assert state.is_failed()
    assert "min_images = 100000" in str(state.result(raise_on_failure=False))
    assert task_states(state) == {"validate": ["Failed"]}  # training never started
    assert tries(state) == {"validate": 1}  # failed on its first try, never retried


def test_retry_policy_tells_transient_from_permanent():
    assert not is_transient(None, None, Failed(data=BadInputError("bad config")))
    assert is_transient(None, None, Failed(data=ConnectionError("reset by peer")))
    assert is_transient(None, None, Failed(data=RuntimeError("CUDA out of memory")))


# --- Prefect operations: logs, artifacts, cache notices, permanent errors, run names ---------------------

DATA_URI = re.compile(r"data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)")


@pytest.fixture()
def run_info_logs():
    """Run loggers at INFO, Prefect's default (conftest quietens Prefect to WARNING)."""
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_stage_warnings_reach_the_task_runs_logs_at_warning_level(first_run):
    cfg = first_run[0].model_copy(deep=True)
    cfg.train.collapse_diversity, cfg.train.collapse_warmup = 0.999, 0  # any fresh G "collapses"
    state = run(cfg, stages=["train"])
    assert state.is_completed(), state.message
    (train_run,) = task_runs(state)
    warnings = logs_saying("mode collapse", task_run_id=train_run.id)
    assert warnings, "the training warning never reached the task run's logs"
    assert {(log.level, log.name) for log in warnings} == {(logging.WARNING, "models.train")}


def test_training_reports_each_evaluation_in_the_task_runs_logs(first_run, run_info_logs):
    # A worker has no terminal, so no progress bar: the log is where a user watches training.
    state = run(first_run[0], stages=["train"], force=True)
    (train_run,) = task_runs(state)
    lines = logs_saying("step 4 of 4", task_run_id=train_run.id)
    assert [(log.level, log.name) for log in lines] == [(logging.INFO, "models.train")]
    assert re.search(r"loss_d [\d.]+, loss_g [\d.]+, .*swd [\d.]+", lines[0].message), lines[0].message


def test_artifacts_embed_small_images_and_no_relative_links(first_run):
    cfg, state = first_run
    artifacts = flow_run_artifacts(state)
    assert all(a.type != "image" for a in artifacts)  # an image artifact of a data: URI shows as text
    markdown = {a.key: a.data for a in artifacts if a.type == "markdown"}
    for key, text in markdown.items():
        links = re.findall(r"\]\(([^)]*)\)", text)
        assert all(link.startswith(("data:image/", "http://", "https://")) for link in links), (key, links)
        for encoded in DATA_URI.findall(text):
            assert len(encoded) < 100_000, key
            assert max(Image.open(io.BytesIO(base64.b64decode(encoded))).size) <= 512, key
    root = root_key(cfg.data_dir)
    assert len(DATA_URI.findall(markdown[f"export-model-card-{root}"])) >= 2  # samples and training plot
    assert DATA_URI.search(markdown[f"validate-report-{root}"])  # contact sheets, inline
    for grid in ("train-grid", "export-samples"):  # train's fixed-noise grid, export's EMA grid
        assert DATA_URI.search(markdown[f"{grid}-{root}"]), grid
    tables = [a for a in artifacts if a.type == "table"]
    assert tables and all(a.description for a in tables), [(a.key, a.description) for a in tables]
    assert all(re.fullmatch(r"[a-z0-9-]+", a.key) for a in artifacts if a.key)


def test_a_stage_served_from_the_cache_says_so_and_since_when(first_run, run_info_logs):
    cfg, _ = first_run
    run(cfg, stages=["export"])  # whatever ran before, the export is now cached
    state = run(cfg, stages=["export"])
    assert task_states(state) == {"export": ["Cached"]}
    root = root_key(cfg.data_dir)
    (notice,) = [a for a in flow_run_artifacts(state) if a.key == f"export-summary-{root}"]
    assert re.search(r"from the cache.*since \d{4}-\d\d-\d\d", notice.data, re.DOTALL), notice.data
    assert "force" in notice.data
    flow_run_id = state.state_details.flow_run_id
    (line,) = logs_saying("from the cache", flow_run_id=flow_run_id)
    assert line.level == logging.INFO and "force" in line.message and "since" in line.message


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "data.txt").write_text("a file, not a folder")
    return tmp_path / "data.txt"


def under_proc(tmp_path: Path) -> Path:
    return Path("/proc/faces-test-data")  # the kernel's file system: no folder can be made there


@pytest.mark.parametrize(
    ("make_data_dir", "problem"), [(a_file, "is a file"), (under_proc, "cannot be created")]
)
def test_an_unusable_data_dir_fails_at_once_naming_it(prefect_harness, tmp_path, make_data_dir, problem):
    data_dir = make_data_dir(tmp_path)
    state = run(PipelineConfig(data_dir=str(data_dir)), stages=["validate"])
    assert state.is_failed()
    assert tries(state) == {"validate": 1}  # bad input: no retries, no minutes of back-off
    message = str(state.result(raise_on_failure=False))
    assert f"data_dir {data_dir} {problem}" in message and "\n" not in message, message


def test_a_full_disk_is_bad_input_with_its_path_and_fix(tmp_path):
    """/dev/full fails every write with ENOSPC: the real errors a full disk raises, plain and via torch."""
    full = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(OSError) as plain:
        os.write(full, b"x")
    os.close(full)
    with pytest.raises(RuntimeError) as torch_save:
        torch.save({"weights": torch.zeros(1000)}, "/dev/full")
    for error in (plain.value, torch_save.value):
        assert not is_transient(None, None, Failed(data=error))
        with pytest.raises(BadInputError) as named, permanent_errors_named(str(tmp_path)):
            raise error
        assert str(tmp_path) in str(named.value) and "free space" in str(named.value)
    assert is_transient(None, None, Failed(data=OSError(104, "Connection reset by peer")))


def test_flow_runs_are_named_after_the_stages_they_ran(first_run):
    cfg, state = first_run
    assert flow_run_name(state) == "scrape,preprocess,validate,train,export"
    again = run(cfg, stages=["validate", "preprocess"], force=True)
    assert flow_run_name(again) == "preprocess,validate (force)"
