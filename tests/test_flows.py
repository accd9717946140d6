"""faces-pipeline in process: all five stages on the demo gallery, caching, subsets, failures."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Failed

from common.report import BadInputError
from demo.gallery import DemoGallery
from flows.config import PipelineConfig
from flows.pipeline import faces_pipeline
from flows.policies import is_transient


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
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    for stage in results:
        assert f"{stage}-summary" in keys
    assert {"sample-grid", "validate-report", "model-card", "validate-checks"} <= keys


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
