"""[preprocess] dask_address: batches run as Prefect tasks on a Dask cluster and give the same crops."""

import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, TaskRunFilter, TaskRunFilterName

from common.layout import DataRoot
from flows.config import TimeoutsConfig
from flows.pipeline import preprocess_flow
from preprocess.config import PreprocessConfig
from preprocess.manifest import open_manifest
from tests.preprocess_data import add_raw_files


def crops(root: DataRoot) -> set[str]:
    with sqlite3.connect(root.faces_manifest) as db:
        return {row[0] for row in db.execute("SELECT crop_id FROM crops")}


def test_batches_run_on_a_local_dask_cluster(prefect_harness, photos_dir, tmp_path):
    photos = sorted((photos_dir / "webmorph-neutral").glob("*.jpg"))[:6]
    root = DataRoot(tmp_path / "data")
    shas = add_raw_files(root, [p.read_bytes() for p in photos])

    config = PreprocessConfig(dask_address="local", workers=1, batch_size=2)
    started = datetime.now(UTC)
    result = preprocess_flow(data_dir=str(root.root), preprocess=config)

    assert result["counts"]["processed"] == 6 and result["counts"]["faces"] == 6
    assert crops(root) == {f"{sha}-0" for sha in shas}
    assert all(root.crop_path(sha, 0).is_file() for sha in shas)
    with get_client(sync_client=True) as client:
        batch_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="preprocess-batch"))
        )
    mine = [r for r in batch_runs if r.state.is_completed() and r.start_time >= started]
    assert len(mine) == 3  # 6 photos in batches of 2, each one task
    # A second run finds nothing left to do: the batches are recorded like local ones.
    again = preprocess_flow(data_dir=str(root.root), preprocess=config)
    assert again["counts"]["processed"] == 0 and again["counts"]["skipped"] == 6


def waiting_in(thread: threading.Thread, module: str) -> bool:
    """Whether `thread` is inside a function of the file `module` (e.g. blocked on a lock there)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_filename.endswith(module):
            return True
        frame = frame.f_back
    return False


def hold_until_timed_out(writer: sqlite3.Connection, flow_thread: threading.Thread, limit: float) -> None:
    """Keep the write lock until the flow's thread has been blocked on it for longer than `limit`: the
    subflow's own time started before that, so its timeout has fired whatever the machine's load."""
    give_up = time.monotonic() + 240  # the flow failed before it got there: the asserts will say so
    while not waiting_in(flow_thread, "preprocess/manifest.py") and time.monotonic() < give_up:
        time.sleep(0.05)
    time.sleep(limit + 1)
    writer.rollback()


def test_the_preprocess_timeout_bounds_the_dask_subflow_and_the_next_run_loses_nothing(
    prefect_harness, photos_dir, tmp_path
):
    """[timeouts] preprocess = 2 while another writer holds the faces manifest: the stage cannot finish
    in time, so the preprocess-on-dask subflow ends TimedOut and the flow fails; once the writer is
    gone, the next run crops every photo."""
    photos = sorted((photos_dir / "webmorph-neutral").glob("*.jpg"))[:4]
    root = DataRoot(tmp_path / "data")
    shas = add_raw_files(root, [p.read_bytes() for p in photos])
    root.faces_dir.mkdir(parents=True)
    open_manifest(root.faces_manifest).close()
    writer = sqlite3.connect(root.faces_manifest, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # another process writing, as far as preprocess can tell
    holder = threading.Thread(target=hold_until_timed_out, args=(writer, threading.current_thread(), 2))
    holder.start()
    config = PreprocessConfig(dask_address="local", workers=1, batch_size=2)
    started = datetime.now(UTC)
    try:
        state = preprocess_flow(
            data_dir=str(root.root),
            preprocess=config,
            timeouts=TimeoutsConfig(preprocess=2),
            return_state=True,
        )
    finally:
        holder.join()
        writer.close()

    assert state.is_failed()
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["preprocess-on-dask"]))
        )
    (subflow,) = [r for r in subflows if r.start_time and r.start_time >= started]
    assert subflow.state.name == "TimedOut" and "exceeded timeout of 2.0 second(s)" in subflow.state.message
    again = preprocess_flow(data_dir=str(root.root), preprocess=config)
    assert again["counts"]["processed"] == 4 and crops(root) == {f"{sha}-0" for sha in shas}
