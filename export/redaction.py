"""The pictures of an export that show training crops, and taking them out for a takedown.

Only memorisation.png shows real crops: each sample beside its nearest training crop, rows of the snapshot
that metrics.json names (`reference_dataset`, `memorisation.nearest_index`). Everything else in an export
is generated or numbers. `validate.takedown` decides which exports showed the image taken down and calls
`remove_training_crops` on them: the picture is deleted and the export marked, so the next export of the
run is redone (not skipped, not served from the flows' cache) and draws it again from the crops left.
Imports nothing heavy: a takedown runs without torch.
"""

from pathlib import Path

from common.clock import now_iso
from common.files import atomic_write_json, atomic_write_text, read_json

TRAINING_CROP_FILES = ("memorisation.png",)
NEEDS_REEXPORT = "needs_reexport"  # export.json key a takedown sets


def shows_training_crops(export_dir: Path) -> bool:
    return any((export_dir / name).is_file() for name in TRAINING_CROP_FILES)


def shown_rows(export_dir: Path) -> tuple[str, list[int]] | None:
    """(snapshot id, rows of its images.npy) of the crops memorisation.png shows; None when metrics.json
    does not say (missing, damaged or older)."""
    metrics = read_json(export_dir / "metrics.json")
    try:
        rows = [int(row) for row in metrics["memorisation"]["nearest_index"]]
        return str(metrics["reference_dataset"]), rows
    except (KeyError, TypeError, ValueError):
        return None


def remove_training_crops(export_dir: Path) -> tuple[list[Path], list[Path]]:
    """Delete the export's pictures of training crops and mark it for re-export in export.json and
    MODEL_CARD.md. Marked first, so a killed takedown never leaves an unmarked export without its picture.
    Returns (files deleted, files rewritten)."""
    deleted = [export_dir / name for name in TRAINING_CROP_FILES if (export_dir / name).is_file()]
    if not deleted:
        return [], []
    at, names = now_iso(), [p.name for p in deleted]
    info = read_json(export_dir / "export.json")
    info[NEEDS_REEXPORT] = True
    info.setdefault("takedowns", []).append({"at": at, "removed": names})
    rewritten = [atomic_write_json(export_dir / "export.json", info)]
    card = export_dir / "MODEL_CARD.md"
    if card.is_file():
        line = (
            f"\n{', '.join(names)} was removed by a takedown on {at}: it showed a training image that was "
            f"taken down. Export the run again (`faces export --run {info.get('run', export_dir.name)}`) to "
            "draw it from the crops that are left.\n"
        )
        rewritten.append(atomic_write_text(card, card.read_text(encoding="utf-8") + line))
    for path in deleted:
        path.unlink()
    return deleted, rewritten
