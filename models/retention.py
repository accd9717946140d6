"""Old training runs go once their export holds the generator: `[train] keep_runs`.

Nightly retraining makes a run a night, and each keeps its checkpoints (at the default width, about
350 MB: three step checkpoints and best.pt), so runs/ would grow by a hundred GB a year. After a run
finishes, the finished runs beyond the newest `keep_runs` are deleted, but only those that can go
without losing anything a user cannot get back from elsewhere:

- never the run `runs/latest` points at (the next warm start's source), nor one in use (its lock);
- only finished or stopped-early runs (a killed or failed one is resumable work, or evidence);
- only runs whose export exists (`exports/<run>/export.json`): the generator, samples, metrics and
  model card stay there, and so does the fixed-noise grids' movie, `training.gif`.

A run is renamed to `runs/.deleting-<run>` first and then deleted, so a kill midway leaves nothing
that looks like a run; the next prune finishes the job.
"""

import fcntl
import shutil

from common.layout import DataRoot
from models.runs import DONE, read_run_info

DELETING = ".deleting-"


def prune_runs(root: DataRoot, keep: int) -> list[str]:
    """Delete finished, exported runs beyond the newest `keep` (0: keep all); the names deleted."""
    for leftover in root.runs_dir.glob(f"{DELETING}*"):  # a prune killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    if keep <= 0:
        return []
    latest = root.latest_run.resolve().name if root.latest_run.exists() else None
    finished = sorted(
        (info["finished"], run_dir.name)
        for run_dir in root.runs_dir.iterdir()
        if run_dir.is_dir()
        and not run_dir.is_symlink()
        and (info := read_run_info(run_dir)).get("status") in DONE
        and info.get("finished")
    )
    deleted = []
    for _, name in finished[:-keep]:
        if name != latest and (root.export_dir(name) / "export.json").is_file() and _delete(root, name):
            deleted.append(name)
    return deleted


def _delete(root: DataRoot, name: str) -> bool:
    """Delete one run unless a process holds its lock (models.runs.run_lock); whether it went."""
    run_dir = root.run_dir(name)
    with open(run_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # being trained right now: it stays
        aside = run_dir.with_name(DELETING + name)
        run_dir.rename(aside)  # under the lock: no process can start on it meanwhile
    shutil.rmtree(aside)
    return True
