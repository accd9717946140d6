"""After a takedown no new run descends from a run that learnt the image, and the old runs' cards say
their data is gone: real crops, real validation, real (tiny, 64 px, CPU) training and export."""

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from common.layout import DataRoot
from export.stage import export
from models.train import train
from tests.export_data import small_export
from tests.train_helpers import tiny
from tests.validate_data import Root, pupils
from validate.config import ValidateConfig
from validate.stage import validate
from validate.takedown import forget

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = pupils()
TRAIN = tiny(image_size=64, steps=2, checkpoint_every=2, sample_every=2, eval_every=1000)
EXPORT = small_export(onnx=False, n_samples=1, interpolation_steps=2, eval_samples=16, diversity_samples=4)
REFUSED = "it learnt from images since taken down (faces forget)"


def trained(root: DataRoot) -> tuple[str, dict, list[str]]:
    """Train on the latest snapshot: the run's name, its run.json and its report's notes."""
    report = train(TRAIN, root)
    run_dir = Path(report.outputs["run_dir"])
    return run_dir.name, json.loads((run_dir / "run.json").read_text()), report.notes


def opt_out(r: Root, crop_id: str) -> None:
    """The image's site opts it out (robots noai): the next snapshot leaves it out."""
    with closing(sqlite3.connect(r.root.raw_manifest)) as con, con:
        con.execute("UPDATE urls SET opt_out = 'noai' WHERE sha256 = ?", (crop_id[:64],))


def test_after_a_takedown_the_next_run_trains_from_scratch_and_the_old_runs_card_says_why(tmp_path):
    r = Root(tmp_path / "data")
    ids = [r.add_photo(row) for row in ROWS[:10]]
    config = ValidateConfig(min_images=8, workers=1)
    old_dataset = Path(validate(config, r.root).outputs["dataset"]).name
    old, _, _ = trained(r.root)

    report = forget(ids[0][:64], r.root, config)  # in the dataset `old` trained on
    validate(config, r.root)  # the nightly run: a new snapshot (forget built it), then training
    new, info, notes = trained(r.root)

    assert f"runs trained on a deleted snapshot, kept: runs/{old}" in report.notes
    assert new != old and info["parent"] is None and "parent_step" not in info
    assert f"no warm start from {old}: {REFUSED}; training from scratch" in notes
    # the old run's export: its own dataset is gone, said plainly; the stand-in is not described as its
    exported = export(EXPORT, r.root, run=old, force=True)
    card = Path(exported.outputs["model_card"]).read_text()
    latest = r.root.latest_dataset.resolve().name
    gone = f"The dataset this model was trained on, `{old_dataset}`, is no longer under `datasets/`: deleted"
    assert f"{gone} by a takedown (faces forget) on " in card
    assert f"measured against the latest snapshot, `{latest}` (9 images)" in card
    assert "| dataset | `" + old_dataset + "` (gone, its size and sources not known;" in card
    assert "127.0.0.1 |" not in card and "CC BY 4.0" not in card  # no hosts or licences of the stand-in
    assert "9 images, trained at" not in card and "distinct source images" not in card
    assert "## Taken down since" in card
    assert any("is gone: deleted by a takedown (faces forget) on " in n for n in exported.notes)


def test_no_run_warm_starts_from_a_run_descending_from_one_that_learnt_a_taken_down_image(tmp_path):
    """The image left the dataset (opted out) before its takedown, and its snapshot was pruned: the run
    that may have learnt it, and the run warm-started from that one, are both refused."""
    r = Root(tmp_path / "data")
    ids = [r.add_photo(row) for row in ROWS[:10]]
    config = ValidateConfig(min_images=8, workers=1, retention=1)
    validate(config, r.root)
    first, _, _ = trained(r.root)
    opt_out(r, ids[0])
    validate(config, r.root)  # without it; the first snapshot is pruned (retention = 1)
    second, second_info, _ = trained(r.root)
    assert second_info["parent"] == first

    report = forget(ids[0][:64], r.root, config)
    r.add_photo(ROWS[10])
    validate(config, r.root)
    third, info, notes = trained(r.root)

    said = "\n".join(report.notes)
    assert (
        f"runs that may have learnt from it (their snapshot was already gone, so unknown), kept: runs/{first}"
        in said
    )
    assert f"runs warm-started from those, kept: runs/{second}" in said
    assert info["parent"] is None
    assert f"no warm start from {second}: {REFUSED}; training from scratch" in notes


def test_without_a_takedown_a_run_whose_snapshot_was_pruned_still_warm_starts_and_its_card_says_so(tmp_path):
    r = Root(tmp_path / "data")
    for row in ROWS[:10]:
        r.add_photo(row)
    config = ValidateConfig(min_images=8, workers=1, retention=1)
    first_dataset = Path(validate(config, r.root).outputs["dataset"]).name
    first, _, _ = trained(r.root)
    r.add_photo(ROWS[10])
    validate(config, r.root)  # prunes the first snapshot
    second, info, _ = trained(r.root)

    assert not r.root.dataset_dir(first_dataset).exists()
    assert info["parent"] == first  # pruning is no takedown: the warm start stands
    card = Path(export(EXPORT, r.root, run=first).outputs["model_card"]).read_text()
    assert f"`{first_dataset}`, is no longer under `datasets/`: pruned by [validate] retention, " in card
    assert "11 images" in card and "## Taken down since" not in card
