"""Which training runs learnt from an image since taken down (`faces forget`): runs/<run>/taken_down.json.

A trained generator cannot forget one face, so a takedown (validate.takedown) marks every run that
learnt from the image, and every run warm-started from such a run; models.runs never warm-starts from
a marked run, nor from one that descends from a marked run. The mark is a file of its own rather than
a run.json key: a run still training during the takedown rewrites run.json from memory when it
finishes, which would drop the key. Imports nothing heavy: a takedown runs without torch.
"""

from datetime import datetime
from pathlib import Path
from typing import Any

from common.files import atomic_write_json, read_json
from common.layout import DataRoot

MARK = "taken_down.json"
# why a run is marked: its snapshot held the image (and was deleted by the takedown); its snapshot was
# already gone (pruned), so that cannot be told; or it was warm-started from a marked run
TRAINED_ON, SNAPSHOT_GONE, DESCENDANT = "trained_on", "snapshot_gone", "descendant"


def marks(run_dir: Path) -> list[dict[str, Any]]:
    """The takedowns that marked the run, oldest first; [] for a run that learnt from none."""
    return list(read_json(run_dir / MARK).get("takedowns", []))


def taken_down_ancestor(root: DataRoot, run_dir: Path) -> str | None:
    """The run, `run_dir`'s or one it descends from through run.json `parent`, that is marked."""
    seen: set[str] = set()
    while run_dir.name not in seen:
        seen.add(run_dir.name)
        if marks(run_dir):
            return run_dir.name
        parent = read_json(run_dir / "run.json").get("parent")
        if not parent:
            return None
        run_dir = root.run_dir(parent)
    return None


def deleted_by_takedown(run_dir: Path, dataset_id: str) -> dict[str, Any] | None:
    """The takedown that deleted the run's snapshot `dataset_id`, when one did."""
    found = [m for m in marks(run_dir) if m.get("kind") == TRAINED_ON and m.get("dataset_id") == dataset_id]
    return found[0] if found else None


def mark_runs(root: DataRoot, at: str, held: set[str], since: str | None) -> dict[str, list[str]]:
    """Mark the runs that learnt from an image taken down at `at`: those trained on a snapshot in `held`
    (the snapshots holding it, before they are deleted), those whose snapshot is already gone when they
    may have (started after `since`, when the image was first stored; None: not known), and the runs
    warm-started from any marked run. Returns the names marked, by kind.

    The mark names no image (no hash or URL may outlive a takedown); a run already marked for the same
    snapshot or parent is not marked again, so a killed takedown can simply be run again."""
    runs = _runs(root)
    found: dict[str, dict[str, Any]] = {}
    for name, info in runs.items():
        dataset = info.get("dataset_id")
        if dataset in held:
            found[name] = {"kind": TRAINED_ON, "dataset_id": dataset}
        elif dataset and not (root.dataset_dir(dataset) / "images.npy").is_file() and _may_hold(info, since):
            found[name] = {"kind": SNAPSHOT_GONE, "dataset_id": dataset}
    grew = True
    while grew:  # descendants of descendants, in any order
        grew = False
        for name, info in runs.items():
            parent = info.get("parent")
            if name not in found and parent and (parent in found or marks(root.run_dir(parent))):
                found[name], grew = {"kind": DESCENDANT, "parent": parent}, True
    by_kind: dict[str, list[str]] = {TRAINED_ON: [], SNAPSHOT_GONE: [], DESCENDANT: []}
    for name, entry in sorted(found.items()):
        _add_mark(root.run_dir(name), {"at": at, **entry})
        by_kind[entry["kind"]].append(name)
    return by_kind


def _runs(root: DataRoot) -> dict[str, dict[str, Any]]:
    """Every run folder's run.json, by run name (runs/latest is a link, not a run)."""
    if not root.runs_dir.is_dir():
        return {}
    folders = (p for p in root.runs_dir.iterdir() if p.is_dir() and not p.is_symlink())
    return {p.name: info for p in sorted(folders) if (info := read_json(p / "run.json"))}


def _may_hold(info: dict[str, Any], since: str | None) -> bool:
    """Whether the run's (gone) snapshot may have held an image first stored at `since`: its snapshot
    was built before the run started, so a run started earlier cannot have seen it."""
    try:
        return since is None or datetime.fromisoformat(info["started"]) >= datetime.fromisoformat(since)
    except (KeyError, TypeError, ValueError):  # no start time, or not comparable: assume it may
        return True


def _add_mark(run_dir: Path, entry: dict[str, Any]) -> None:
    taken = marks(run_dir)
    same = ("dataset_id", "parent")
    if any(all(m.get(k) == entry.get(k) for k in same) for m in taken):
        return
    atomic_write_json(run_dir / MARK, {"takedowns": [*taken, entry]})
