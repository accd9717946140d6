import csv
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.layout import DataRoot
from common.report import BadInputError
from tests.validate_data import NEUTRAL, Root, face_crop, png, pupils
from validate import snapshot
from validate.checks import NearDuplicateIndex, phash
from validate.config import ValidateConfig
from validate.quarantine import list_quarantine, release
from validate.stage import input_fingerprint, validate

ROWS = pupils()
CONFIG = ValidateConfig(min_images=8, workers=1)


def real_root(tmp_path, n=12) -> tuple[Root, list[str]]:
    r = Root(tmp_path / "data")
    return r, [r.add_photo(row) for row in ROWS[:n]]


def rgb_rows(root: Root) -> np.ndarray:
    return np.load(root.root.latest_dataset / "images.npy", mmap_mode="r")


def test_real_crops_become_a_snapshot_with_provenance_and_card(tmp_path):
    r, ids = real_root(tmp_path)
    report = validate(CONFIG, r.root)

    assert report.counts["accepted"] == 12 and report.counts["quarantined"] == 0
    folder = r.root.latest_dataset.resolve()
    assert report.outputs["dataset"] == str(folder) and r.root.latest_dataset.is_symlink()
    images = np.load(folder / "images.npy", mmap_mode="r")
    assert isinstance(images, np.memmap) and images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    # rows follow collection order and hold the crops' pixels as RGB
    assert np.array_equal(images[3], cv2.imread(str(r.root.faces_dir / f"{ids[3]}.png"))[:, :, ::-1])
    with open(folder / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [row["crop_id"] for row in index] == ids
    assert (
        index[0]["source_url"].startswith("http://127.0.0.1:8001/img/") and index[0]["licence"] == "CC BY 4.0"
    )
    card = (folder / "README.md").read_text()
    assert "| 127.0.0.1 | 12 |" in card and "| CC BY 4.0 | 12 |" in card
    assert "2024-01-01T12:00:00Z to 2024-01-12T12:00:00Z" in card and "< 50.0" in card
    sheet = cv2.imread(str(folder / "accepted.png"))
    assert sheet is not None and sheet.shape[0] >= 3 * 64
    assert "**12 accepted**" in (folder / "report.md").read_text()
    assert report.tables["checks"][0]["check"] == "opted_out"


def crafted_root(tmp_path) -> tuple[Root, dict[str, str]]:
    """Ten good crops, then one crafted crop per soft check, each named by the check it should fail."""
    r, ids = real_root(tmp_path, n=10)
    good = [face_crop(row) for row in ROWS[:10]]
    ok, jpeg = cv2.imencode(".jpg", good[1], [cv2.IMWRITE_JPEG_QUALITY, 70])
    photo = cv2.imread(str(NEUTRAL / ROWS[0]["file"]))
    neck = cv2.resize(photo[380:510, 250:380], (64, 64), interpolation=cv2.INTER_AREA)  # chin, neck, shirt
    gray = cv2.cvtColor(cv2.cvtColor(good[5], cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    crafted = {
        "duplicate": good[0].copy(),
        "near_duplicate": cv2.imdecode(jpeg, cv2.IMREAD_COLOR),
        "blurry": cv2.GaussianBlur(good[2], (9, 9), 0),
        "dark": cv2.convertScaleAbs(good[3], alpha=0.12),
        "bright": cv2.convertScaleAbs(good[4], alpha=0.3, beta=200),
        "flat": cv2.convertScaleAbs(good[6], alpha=0.15, beta=110),
        "grayscale": gray,
        "no_face": neck,
    }
    named = {reason: r.add_crafted(img) for reason, img in crafted.items()}
    named["opted_out"] = r.add_photo(ROWS[10], opt_out="noai")
    named["good"] = ids
    return r, named


def test_each_soft_check_quarantines_its_crafted_crop_and_keeps_it_on_disk(tmp_path):
    r, named = crafted_root(tmp_path)
    report = validate(CONFIG, r.root)

    quarantined = {q["crop_id"]: q for q in list_quarantine(r.root)}
    for reason, crop_id in named.items():
        if reason == "good":
            continue
        assert crop_id in quarantined, reason
        assert reason in quarantined[crop_id]["reasons"].split(","), (reason, quarantined[crop_id])
        assert [q["crop_id"] for q in list_quarantine(r.root, reason)].count(crop_id) == 1
        assert r.root.crop_path(crop_id[:64], 0).is_file()  # quarantine, never delete
    assert report.counts["accepted"] == 10 and report.counts["quarantined"] == 9
    assert set(quarantined) == {v for k, v in named.items() if k != "good"}
    # the earliest copy is kept: the duplicate names the first crop it copies
    assert named["good"][0] in quarantined[named["duplicate"]]["detail"]
    assert named["good"][1] in quarantined[named["near_duplicate"]]["detail"]
    assert "noai" in quarantined[named["opted_out"]]["detail"]
    folder = r.root.latest_dataset
    for reason in ("duplicate", "near_duplicate", "blurry", "dark", "bright", "flat", "grayscale", "no_face"):
        assert cv2.imread(str(folder / f"rejected-{reason}.png")) is not None, reason
    blurry_section = (folder / "report.md").read_text().split("## blurry (")[1].split("##")[0]
    assert f"`{named['blurry']}`: blurry: sharpness" in blurry_section
    with pytest.raises(BadInputError, match="unknown quarantine reason 'fuzzy'"):
        list_quarantine(r.root, "fuzzy")


def test_duplicates_keep_the_earliest_collected_not_the_first_by_name(tmp_path):
    r, ids = real_root(tmp_path, n=9)
    late = r.add_crafted(face_crop(ROWS[0]))  # same pixels, collected later
    validate(CONFIG, r.root)
    assert [q["crop_id"] for q in list_quarantine(r.root, "duplicate")] == [late]


def test_unusable_crops_stop_validation_and_name_each_offender(tmp_path):
    r, _ = real_root(tmp_path, n=10)
    good = face_crop(ROWS[0])
    bad = {
        r.add_crafted(b"\x89PNG\r\n\x1a\n not really a png"): "does not decode",
        r.add_crafted(cv2.resize(good, (32, 32))): "is 32x32, not 64x64",
        r.add_crafted(png(cv2.cvtColor(good, cv2.COLOR_BGR2GRAY))): "has 1 channel(s), not 3 (RGB)",
        r.add_crafted(png(good.astype(np.uint16) * 256)): "is uint16, not uint8",
    }
    missing = r.add_crafted(good[:, ::-1].copy())
    r.root.crop_path(missing[:64], 0).unlink()
    bad[missing] = "is missing"

    with pytest.raises(BadInputError) as e:
        validate(CONFIG, r.root)
    message = str(e.value)
    assert message.startswith("5 crop(s) cannot be used")
    for crop_id, problem in bad.items():
        assert f"{crop_id}: {problem}" in message
    assert "faces preprocess --force" in message
    assert not r.root.latest_dataset.exists() and snapshot.list_snapshots(r.root) == []


def test_too_few_accepted_crops_stop_validation_but_the_quarantine_can_be_listed(tmp_path):
    r, ids = real_root(tmp_path, n=6)
    blurred = r.add_crafted(cv2.GaussianBlur(face_crop(ROWS[7]), (9, 9), 0))
    with pytest.raises(BadInputError, match=r"only 6 of 7 crops passed validation.*min_images = 8.*blurry 1"):
        validate(CONFIG, r.root)
    assert [q["crop_id"] for q in list_quarantine(r.root)] == [blurred]
    assert not r.root.latest_dataset.exists()


def test_identical_input_gives_identical_id_and_no_new_snapshot(tmp_path):
    r, _ = real_root(tmp_path, n=10)
    first = validate(CONFIG, r.root)
    again = validate(CONFIG, r.root)
    forced = validate(CONFIG, r.root, force=True)

    dataset = first.outputs["dataset"]
    assert again.skipped and again.outputs["dataset"] == dataset
    assert (
        not forced.skipped and forced.outputs["dataset"] == dataset and "no new snapshot" in forced.notes[0]
    )
    assert len(snapshot.list_snapshots(r.root)) == 1
    # an independent data root holding the same crops gives the same id
    copy = tmp_path / "copy"
    for part in ("raw", "faces"):
        shutil.copytree(r.root.root / part, copy / part)
    assert validate(CONFIG, copy).outputs["dataset"].endswith("/" + dataset.rsplit("/", 1)[1])
    # a config change that accepts the same crops re-runs, and still makes no new snapshot
    looser = validate(CONFIG.model_copy(update={"min_sharpness": 10.0}), r.root)
    assert not looser.skipped and looser.outputs["dataset"] == dataset
    assert input_fingerprint(CONFIG, r.root) != input_fingerprint(
        CONFIG.model_copy(update={"min_contrast": 1}), r.root
    )
    assert input_fingerprint(CONFIG, r.root) == input_fingerprint(
        CONFIG.model_copy(update={"workers": 3}), r.root
    )


def test_the_same_crops_collected_in_another_order_give_the_same_id(tmp_path):
    # Two crawls of one site store the same photos a second apart in another order (the demo's did).
    r, ids = real_root(tmp_path, n=10)
    first = validate(CONFIG, r.root)
    copy = tmp_path / "copy"
    for part in ("raw", "faces"):
        shutil.copytree(r.root.root / part, copy / part)
    db = sqlite3.connect(DataRoot(copy).raw_manifest)
    with db:  # the newest first: the copy collected them in the reverse order
        db.execute("UPDATE files SET first_seen = strftime('%Y-%m-%dT%H:%M:%S', 'now', -rowid || ' seconds')")
    db.close()

    again = validate(CONFIG, DataRoot(copy))

    assert Path(again.outputs["dataset"]).name == Path(first.outputs["dataset"]).name
    with open(Path(again.outputs["dataset"]) / "index.csv", newline="") as f:
        assert [row["crop_id"] for row in csv.DictReader(f)] == ids[::-1]  # its own order, the same set


def test_a_released_crop_joins_the_next_snapshot_and_opt_outs_cannot_be_released(tmp_path):
    r, _ = real_root(tmp_path, n=10)
    blurred = r.add_crafted(cv2.GaussianBlur(face_crop(ROWS[11]), (7, 7), 0))
    opted = r.add_photo(ROWS[12], opt_out="noai")
    before = validate(CONFIG, r.root)

    release(blurred, r.root)
    fingerprint = input_fingerprint(CONFIG, r.root)
    after = validate(CONFIG, r.root)
    assert after.counts["accepted"] == before.counts["accepted"] + 1 and after.counts["released"] == 1
    assert after.outputs["dataset"] != before.outputs["dataset"] and fingerprint
    assert blurred not in [q["crop_id"] for q in list_quarantine(r.root)]
    with open(r.root.latest_dataset / "index.csv") as f:
        assert blurred in f.read()
    with pytest.raises(BadInputError, match="cannot be released: its source opted out"):
        release(opted, r.root)
    with pytest.raises(BadInputError, match="is not in quarantine"):
        release("nope-0", r.root)


def test_old_snapshots_beyond_retention_are_removed_and_latest_is_newest(tmp_path):
    r, _ = real_root(tmp_path, n=8)
    config = CONFIG.model_copy(update={"retention": 2})
    made = []
    for row in ROWS[8:11]:
        made.append(validate(config, r.root).outputs["dataset"])
        r.add_photo(row)
    report = validate(config, r.root)
    made.append(report.outputs["dataset"])

    kept = {str(p) for p in snapshot.list_snapshots(r.root)}
    assert kept == set(made[-2:]) and len(set(made)) == 4
    assert str(r.root.latest_dataset.resolve()) == made[-1]
    assert any("retention" in n for n in report.notes)


def test_a_snapshot_appears_whole_or_not_at_all(tmp_path):
    r, ids = real_root(tmp_path, n=10)
    stale = r.root.datasets_dir / ".tmp-0123456789abcdef-999999999"
    stale.mkdir(parents=True)  # left by a killed run whose process is gone

    def change_a_crop_while_writing(done, total, message):
        if message.startswith("writing dataset"):  # a crop changes between checking and copying
            r.root.crop_path(ids[4][:64], 0).write_bytes(png(face_crop(ROWS[20])))

    with pytest.raises(RuntimeError, match="changed while validating"):
        validate(CONFIG, r.root, on_progress=change_a_crop_while_writing)
    # neither the half-written snapshot nor the dead run's leftover remains, and latest was never made
    assert sorted(p.name for p in r.root.datasets_dir.iterdir()) == ["validate.sqlite"]
    assert validate(CONFIG, r.root).counts["accepted"] == 10  # the next run succeeds


def test_near_duplicate_index_finds_exactly_what_brute_force_finds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (500, 3)).astype(np.uint64)
    near = base[:500] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]  # within 3 bits of a stored hash
    queries = np.concatenate([near, rng.integers(0, 2**64, 500, dtype=np.uint64)])
    for distance in (0, 3, 5):
        index = NearDuplicateIndex(distance)
        for h in base:
            index.add(int(h))
        for q in queries:
            d = np.bitwise_count(base ^ q)
            best = int(np.argmin(d))  # the earliest of the closest
            assert index.nearest(int(q)) == ((best, int(d[best])) if d[best] <= distance else None)
        assert index.comparisons < len(queries) * len(base) / 20  # far from quadratic


def test_perceptual_hash_tells_recompressed_copies_from_other_faces():
    crops = [face_crop(row) for row in ROWS[:30]]
    hashes = [phash(c) for c in crops]
    others = min((a ^ b).bit_count() for i, a in enumerate(hashes) for b in hashes[i + 1 :])
    copies = max(
        (phash(cv2.imdecode(cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 1)) ^ h).bit_count()
        for c, h in zip(crops, hashes, strict=True)
    )
    assert copies <= ValidateConfig().near_duplicate_distance < others


def test_crops_made_by_preprocess_pass_and_its_copies_of_one_photo_are_caught(tmp_path):
    from preprocess.config import PreprocessConfig
    from preprocess.pipeline import preprocess

    r = Root(tmp_path / "data")
    for row in ROWS[:9]:
        r.add_source((NEUTRAL / row["file"]).read_bytes(), "jpg")
    original = (NEUTRAL / ROWS[0]["file"]).read_bytes()
    same_pixels = r.add_source(original + b"\0", "jpg")  # the same JPEG with a trailing byte
    photo = cv2.imread(str(NEUTRAL / ROWS[0]["file"]))
    reencoded = r.add_source(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(), "jpg")
    preprocess(PreprocessConfig(workers=1), r.root)

    report = validate(CONFIG, r.root)

    assert report.counts["accepted"] == 9 and report.counts["no_face"] == 0
    quarantine = {q["crop_id"][:64]: q["reasons"] for q in list_quarantine(r.root)}
    assert quarantine == {same_pixels: "duplicate", reencoded: "near_duplicate"}


def test_a_source_that_opts_out_later_leaves_the_next_snapshot(tmp_path):
    r, ids = real_root(tmp_path, n=10)
    before = validate(CONFIG, r.root)
    with closing(sqlite3.connect(r.root.raw_manifest)) as con, con:  # a re-crawl finds a noai directive
        con.execute("UPDATE urls SET opt_out = 'noai' WHERE sha256 = ?", (ids[2][:64],))

    after = validate(CONFIG, r.root)

    assert not after.skipped and after.outputs["dataset"] != before.outputs["dataset"]
    assert list_quarantine(r.root, "opted_out")[0]["crop_id"] == ids[2]
    assert "its source opted out (noai)" in list_quarantine(r.root)[0]["detail"]
    assert after.counts["accepted"] == 9
