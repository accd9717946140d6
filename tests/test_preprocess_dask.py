"""[preprocess] dask_address: batches run as Prefect tasks on a Dask cluster and give the same crops."""

import sqlite3
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from common.layout import DataRoot
from flows.pipeline import preprocess_flow
from preprocess.config import PreprocessConfig
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
