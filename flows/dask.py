"""Preprocess on a Dask cluster: each batch of photos is a Prefect task on a Dask worker.

Used when `[preprocess] dask_address` is set; the parent flow run records every batch's result in
the faces manifest, so the workers only decode, detect and crop.
"""

import os
from collections import deque
from collections.abc import Callable, Iterator

from prefect import flow, task

from common.layout import DataRoot
from common.report import BadInputError, StageReport
from flows.artifacts import run_published
from flows.policies import RETRIES
from preprocess import pipeline as preprocess_stage
from preprocess.config import PreprocessConfig
from preprocess.pipeline import BatchResult, Source

# Batches in flight at once: enough to keep a cluster busy without holding every result in memory.
WINDOW = 64


@task(name="preprocess-batch", **RETRIES)
def preprocess_batch_task(config: PreprocessConfig, data_dir: str, batch: list[Source]) -> BatchResult:
    """Decode, detect and crop one batch; the parent records the result in the manifest."""
    return preprocess_stage.process_batch(config, DataRoot(data_dir), batch)


def batches_as_tasks(window: int) -> Callable[..., Iterator[BatchResult]]:
    """A batch runner for preprocess(): submits batches as tasks, at most `window` in flight."""

    def run(
        config: PreprocessConfig, root: DataRoot, batches: Iterator[list[Source]]
    ) -> Iterator[BatchResult]:
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append(preprocess_batch_task.submit(config, str(root.root), batch))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()

    return run


@flow(name="preprocess-on-dask")
def preprocess_on_dask(config: PreprocessConfig, data_dir: str, force: bool = False) -> StageReport:
    return run_published(
        preprocess_stage.preprocess,
        "preprocess",
        config,
        data_dir,
        force,
        run_batches=batches_as_tasks(WINDOW),
    )


def run_on_dask(
    config: PreprocessConfig, data_dir: str, force: bool = False, timeout: float | None = None
) -> StageReport:
    """The preprocess-on-dask subflow on the cluster `config.dask_address` names; `timeout` (seconds,
    [timeouts] preprocess) bounds the whole subflow, as it bounds the preprocess task otherwise."""
    subflow = preprocess_on_dask.with_options(task_runner=dask_task_runner(config), timeout_seconds=timeout)
    return subflow(config, data_dir, force)


def dask_task_runner(config: PreprocessConfig):
    """prefect-dask's runner: a local cluster for "local", else the scheduler at that address."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise BadInputError(
            "[preprocess] dask_address is set but prefect-dask is not installed; "
            "pip install 'faces-pipeline[dask]'"
        ) from None
    if config.dask_address == "local":
        workers = config.workers or os.cpu_count() or 1
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    return DaskTaskRunner(address=config.dask_address)
