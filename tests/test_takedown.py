import sqlite3
from contextlib import closing

import cv2
import numpy as np
import pytest

from common.report import BadInputError
from tests.validate_data import NEUTRAL, Root, face_crop, files_containing, png, pupils
from validate import snapshot
from validate.config import ValidateConfig
from validate.stage import validate
from validate.takedown import forget

ROWS = pupils()
CONFIG = ValidateConfig(min_images=8, workers=1)
PAGE = "http://127.0.0.1:8001/people/ann.html"


def forgotten(r: Root) -> dict[str, str | None]:
    with closing(sqlite3.connect(r.root.raw_manifest)) as con:
        return dict(con.execute("SELECT key, sha256 FROM forgotten"))


def pixel_rows(bgr: np.ndarray) -> list[bytes]:
    """A row of the crop as stored in PNGs (BGR) and in images.npy (RGB): 192 bytes no other image has."""
    return [bgr[32].tobytes(), bgr[32, :, ::-1].tobytes()]


def test_forgetting_a_page_leaves_no_byte_of_its_images_and_rebuilds_the_dataset(tmp_path):
    r = Root(tmp_path / "data")
    for row in ROWS[:9]:
        r.add_photo(row)
    blurred = cv2.GaussianBlur(face_crop(ROWS[20]), (9, 9), 0)
    blurred_url = "http://127.0.0.1:8001/img/ann-blurred.png"
    blurred_sha = r.add_crafted(blurred, url=blurred_url, page_url=PAGE)[:64]
    first = validate(CONFIG, r.root).outputs["dataset"]  # shows the blurred one as rejected
    photo_url = "http://127.0.0.1:8001/img/ann.jpg"
    photo_crop_id = r.add_photo(ROWS[21], url=photo_url, page_url=PAGE)
    second = validate(CONFIG, r.root).outputs["dataset"]  # holds the photo
    r.add_photo(ROWS[22])
    third = validate(CONFIG, r.root).outputs["dataset"]
    photo_sha = photo_crop_id[:64]
    raw_photo = (NEUTRAL / ROWS[21]["file"]).read_bytes()
    needles = [
        raw_photo[4000:4064],
        png(blurred)[200:264],
        *pixel_rows(face_crop(ROWS[21])),
        *pixel_rows(blurred),
    ]
    assert all(files_containing(r.root.root, needle) for needle in needles)  # the search does find them

    report = forget(PAGE, r.root, CONFIG)

    first_id, second_id, third_id = (p.rsplit("/", 1)[1] for p in (first, second, third))
    assert f"snapshots that contained it, deleted: {third_id}, {second_id}" in report.notes
    assert f"snapshots that showed it as rejected, redacted: {first_id}" in report.notes
    assert report.counts["images"] == 2 and report.counts["crops removed"] == 2
    assert forgotten(r) == {
        PAGE: None,
        photo_url: photo_sha,
        blurred_url: blurred_sha,
        photo_sha: photo_sha,
        blurred_sha: blurred_sha,
    }
    # no byte of either image anywhere: raw bytes, crop pixels (decoded PNGs and images.npy)
    for needle in needles:
        assert files_containing(r.root.root, needle) == []
    # the hashes and URLs survive only as the takedown record
    manifest = [r.root.raw_manifest]
    for text in (photo_sha, blurred_sha, photo_url, blurred_url, PAGE):
        assert files_containing(r.root.root, text.encode()) == manifest, text
    # the first snapshot never held them: it stays, redacted; a new one is built without them
    assert [p.name for p in snapshot.list_snapshots(r.root)] == [
        report.outputs["dataset"].rsplit("/", 1)[1],
        first_id,
    ]
    redacted = snapshot.load_report(r.root.dataset_dir(first_id))
    assert redacted["counts"]["quarantined"] == 0 and redacted["sheets"]["rejected-blurry.png"] == [""]
    latest = np.load(r.root.latest_dataset / "images.npy", mmap_mode="r")
    assert latest.shape[0] == 10
    assert validate(CONFIG, r.root).skipped


def test_forgetting_by_hash_covers_every_url_that_served_it(tmp_path):
    r = Root(tmp_path / "data")
    ids = [r.add_photo(row) for row in ROWS[:9]]
    sha = ids[4][:64]
    mirror = "http://127.0.0.2:8001/mirror/same.jpg"
    r.add_source((NEUTRAL / ROWS[4]["file"]).read_bytes(), "jpg", url=mirror)  # same bytes, second URL
    validate(CONFIG, r.root)

    report = forget(sha.upper(), r.root, CONFIG)  # hashes are matched case-insensitively

    assert mirror in forgotten(r) and forgotten(r)[sha] == sha
    assert not list(r.root.raw_dir.rglob(f"{sha}*")) and not list(r.root.faces_dir.glob(f"{sha}*"))
    # 8 crops left, as many as min_images: the new snapshot still builds
    assert (
        report.counts["snapshots removed"] == 1
        and np.load(r.root.latest_dataset / "images.npy").shape[0] == 8
    )
    again = forget(sha, r.root, CONFIG)  # a second takedown (or a rerun after a kill) finds nothing left
    assert again.counts["files removed"] == 0 and "no snapshot contained it" in again.notes


def test_a_takedown_that_leaves_too_few_crops_still_removes_everything(tmp_path):
    r = Root(tmp_path / "data")
    ids = [r.add_photo(row) for row in ROWS[:8]]
    validate(CONFIG, r.root)

    report = forget(ids[0][:64], r.root, CONFIG)

    assert not r.root.latest_dataset.exists() and snapshot.list_snapshots(r.root) == []
    assert any("no new snapshot could be built" in n and "min_images = 8" in n for n in report.notes)
    assert files_containing(r.root.root, pixel_rows(face_crop(ROWS[0]))[1]) == []


def test_keys_that_name_nothing_are_recorded_and_malformed_keys_are_refused(tmp_path):
    r = Root(tmp_path / "data")
    url = "https://127.0.0.1:8443/never-fetched.jpg"
    report = forget(url, r.root, CONFIG)
    assert report.counts["images"] == 0 and "never fetch it" in report.notes[0]
    assert forgotten(r) == {url: None}
    with pytest.raises(BadInputError, match="not an http\\(s\\) URL or a sha256"):
        forget("ann.jpg", r.root, CONFIG)
