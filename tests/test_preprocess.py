"""The preprocess stage end to end on real photos: one aligned crop per face, incremental, bad files
recorded with a reason, resumable after SIGKILL."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing, suppress
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from common.layout import DataRoot
from common.report import BadInputError
from preprocess.align import canonical_eyes, face_square, map_points, square_to_crop
from preprocess.config import PreprocessConfig
from preprocess.decode import load_image
from preprocess.detect import Face, FaceDetector
from preprocess.pipeline import (
    align_face,
    input_fingerprint,
    iter_batches,
    pending_sources,
    preprocess,
    process_batch,
    record_batch,
)
from tests.preprocess_data import add_raw_files, png_claiming_size

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
ALL_PHOTOS = sorted(PHOTOS.glob("webmorph-*/*.jpg"))
REPO = Path(__file__).resolve().parents[1]


def rows(root: DataRoot, sql: str, *args) -> list[tuple]:
    with closing(sqlite3.connect(f"{root.faces_manifest.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute(sql, args).fetchall()


def jpeg_bytes(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


@pytest.fixture(scope="module")
def all_photos(tmp_path_factory) -> tuple[DataRoot, dict, list[tuple]]:
    root = DataRoot(tmp_path_factory.mktemp("all"))
    add_raw_files(root, [p.read_bytes() for p in ALL_PHOTOS])
    progress = []
    report = preprocess(
        PreprocessConfig(workers=2, batch_size=16), root, on_progress=lambda *a: progress.append(a)
    )
    return root, report, progress


def test_every_photo_yields_exactly_one_aligned_64px_crop(all_photos):
    root, report, progress = all_photos
    assert report.counts == {
        "sources": 204,
        "processed": 204,
        "skipped": 0,
        "faces": 204,
        "no_face": 0,
        "errors": 0,
    }
    assert progress[-1][:2] == (204, 204)
    assert rows(root, "SELECT status, COUNT(*) FROM processed GROUP BY status") == [("ok", 204)]
    crops = rows(root, "SELECT crop_id, sha256, face_index, path, landmarks, detector, size, blur FROM crops")
    assert len(crops) == 204 and len({c[1] for c in crops}) == 204
    eyes = []
    for crop_id, sha, k, path, landmarks, detector, size, blur in crops:
        assert (crop_id, k, path, detector, size) == (f"{sha}-0", 0, f"faces/{sha}-0.png", "yunet", 64)
        with Image.open(root.root / path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
        assert blur > 10
        lm = np.array(json.loads(landmarks))
        eyes.append(map_points(square_to_crop(face_square(Face((0, 0, 1, 1), lm, 1), 0), 64), lm[:2]))
    # Neutral and smiling alike (a smile moves the mouth corners): the eyes land at the canonical spots.
    assert np.linalg.norm(np.array(eyes) - canonical_eyes(64), axis=2).max() <= 2


def test_crops_on_disk_are_the_aligned_faces(all_photos):
    root, _, _ = all_photos
    config = PreprocessConfig()
    detector = FaceDetector(config)
    for path in ALL_PHOTOS[:: len(ALL_PHOTOS) // 3]:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        bgr = load_image(path)
        expected, _ = align_face(config, bgr, detector.detect(bgr)[0], detector)
        assert np.array_equal(cv2.imread(str(root.crop_path(sha, 0))), expected)


def test_a_second_run_skips_everything(all_photos):
    root, _, _ = all_photos
    before = {p: p.stat().st_mtime_ns for p in root.faces_dir.glob("*.png")}
    report = preprocess(PreprocessConfig(workers=2), root)
    assert report.skipped and report.counts["processed"] == 0 and report.counts["skipped"] == 204
    assert {p: p.stat().st_mtime_ns for p in root.faces_dir.glob("*.png")} == before


@pytest.fixture
def few(tmp_path) -> tuple[DataRoot, list[str]]:
    root = DataRoot(tmp_path)
    return root, add_raw_files(root, [p.read_bytes() for p in ALL_PHOTOS[:3]])


def test_only_new_photos_and_changed_settings_are_processed(few):
    root, shas = few
    config = PreprocessConfig(workers=1)
    fingerprint = input_fingerprint(config, root)
    assert preprocess(config, root).counts["processed"] == 3
    assert input_fingerprint(config.model_copy(update={"workers": 4, "batch_size": 2}), root) == fingerprint

    add_raw_files(root, [ALL_PHOTOS[3].read_bytes()])
    assert input_fingerprint(config, root) != fingerprint
    assert [s.sha256 for s in pending_sources(config, root)] == [
        hashlib.sha256(ALL_PHOTOS[3].read_bytes()).hexdigest()
    ]
    report = preprocess(config, root)
    assert (report.counts["processed"], report.counts["skipped"]) == (1, 3)

    smaller = config.model_copy(update={"crop_size": 32})
    assert input_fingerprint(smaller, root) != input_fingerprint(config, root)
    assert preprocess(smaller, root).counts["processed"] == 4
    assert rows(root, "SELECT DISTINCT size, config_hash FROM crops") == [(32, smaller.output_hash())]
    assert rows(root, "SELECT DISTINCT config_hash FROM processed") == [(smaller.output_hash(),)]
    with Image.open(root.crop_path(shas[0], 0)) as im:
        assert im.size == (32, 32)
    assert preprocess(smaller, root, force=True).counts["processed"] == 4


def test_bad_files_are_recorded_with_a_reason_and_no_face_as_such(tmp_path):
    root = DataRoot(tmp_path)
    photo = ALL_PHOTOS[0].read_bytes()
    landscape = np.zeros((300, 400, 3), np.uint8)
    landscape[:150], landscape[150:] = (235, 206, 135), (34, 139, 34)
    bad = {
        "empty": b"",
        "truncated": photo[: len(photo) // 3],
        "corrupt": b"GIF89a" + bytes(range(256)) * 4,
        "bomb": png_claiming_size(100_000, 100_000),
        "landscape": jpeg_bytes(landscape),
    }
    sha_of = dict(zip(bad, add_raw_files(root, list(bad.values())), strict=True))
    report = preprocess(PreprocessConfig(workers=1), root)
    assert report.counts == {
        "sources": 5,
        "processed": 5,
        "skipped": 0,
        "faces": 0,
        "no_face": 1,
        "errors": 4,
    }
    recorded = {
        sha: (status, error)
        for sha, status, error in rows(root, "SELECT sha256, status, error FROM processed")
    }
    assert recorded[sha_of["landscape"]] == ("no_face", None)
    for name, reason in [("empty", "empty file"), ("truncated", "truncated"), ("corrupt", "corrupt"),
                         ("bomb", "decompression bomb")]:  # fmt: skip
        status, error = recorded[sha_of[name]]
        assert status == "error" and reason in error, (name, error)


def test_a_missing_raw_file_is_retried_next_run(few):
    root, shas = few
    path = next(root.raw_dir.glob(f"*/{shas[1]}.jpg"))
    data = path.read_bytes()
    path.unlink()
    report = preprocess(PreprocessConfig(workers=1), root)
    assert (report.counts["processed"], report.counts["errors"]) == (2, 1)
    path.write_bytes(data)
    assert preprocess(PreprocessConfig(workers=1), root).counts["processed"] == 1


def test_every_face_gets_a_crop_and_fewer_faces_remove_the_extra_crops(tmp_path):
    root = DataRoot(tmp_path)
    group = np.hstack([load_image(p) for p in ALL_PHOTOS[:3]])
    (sha,) = add_raw_files(root, [jpeg_bytes(group)])
    assert preprocess(PreprocessConfig(workers=1, max_faces=4), root).counts["faces"] == 3
    assert sorted(p.name for p in root.faces_dir.glob("*.png")) == [f"{sha}-{k}.png" for k in range(3)]
    scores = [s for (s,) in rows(root, "SELECT score FROM crops ORDER BY face_index")]
    assert scores == sorted(scores, reverse=True)
    assert preprocess(PreprocessConfig(workers=1, max_faces=1), root).counts["faces"] == 1
    assert [p.name for p in root.faces_dir.glob("*.png")] == [f"{sha}-0.png"]
    assert rows(root, "SELECT crop_id FROM crops") == [(f"{sha}-0",)]


def test_photos_taken_down_are_not_processed(few):
    root, shas = few
    with closing(sqlite3.connect(root.raw_manifest)) as db, db:
        db.execute("CREATE TABLE forgotten (key TEXT PRIMARY KEY, sha256 TEXT, at TEXT)")
        db.execute("INSERT INTO forgotten VALUES (?, ?, ?)", ("https://example.test/a.jpg", shas[0], "now"))
    assert preprocess(PreprocessConfig(workers=1), root).counts["processed"] == 2
    assert shas[0] not in {sha for (sha,) in rows(root, "SELECT sha256 FROM crops")}


def test_haar_crops_are_boxes_without_landmarks(few):
    root, _ = few
    report = preprocess(PreprocessConfig(workers=1, detector="haar"), root)
    assert report.counts["faces"] >= 3
    assert rows(root, "SELECT DISTINCT detector, landmarks FROM crops") == [("haar", None)]


def test_batches_can_run_elsewhere_and_be_recorded_by_the_parent(few):
    root, shas = few
    config = PreprocessConfig(batch_size=2)
    batches = list(iter_batches(config, root))
    assert [len(b) for b in batches] == [2, 1]
    results = [process_batch(config, root, b) for b in batches]
    assert rows(root, "SELECT COUNT(*) FROM processed") == [(0,)], "workers write no manifest"
    for result in results:
        record_batch(config, root, result)
    assert sorted(sha for (sha,) in rows(root, "SELECT sha256 FROM crops")) == sorted(shas)
    assert pending_sources(config, root) == []


def test_missing_raw_manifest_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="run the scrape stage"):
        preprocess(PreprocessConfig(), DataRoot(tmp_path))


def test_a_killed_run_resumes_without_redoing_or_half_written_crops(tmp_path):
    root = DataRoot(tmp_path)
    add_raw_files(root, [p.read_bytes() for p in ALL_PHOTOS[:60]])
    run = (
        "from common.layout import DataRoot; from preprocess.config import PreprocessConfig; "
        "from preprocess.pipeline import preprocess; "
        f"preprocess(PreprocessConfig(workers=2, batch_size=4), DataRoot({str(root.root)!r}))"
    )
    child = subprocess.Popen([sys.executable, "-c", run], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while done < 8 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
            with suppress(sqlite3.OperationalError):  # the run has not created its manifest yet
                done = rows(root, "SELECT COUNT(*) FROM processed")[0][0]
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the run and its worker processes, mid-batch
        child.wait()
    first = dict(rows(root, "SELECT sha256, at FROM processed"))
    assert 8 <= len(first) < 60, f"the kill should land mid-run ({len(first)} of 60 done)"
    for png in root.faces_dir.glob("*.png"):  # whatever is there under a crop's name is whole
        with Image.open(png) as im:
            im.load()
            assert im.size == (64, 64)

    report = preprocess(PreprocessConfig(workers=2, batch_size=4), root)
    assert (report.counts["skipped"], report.counts["processed"]) == (len(first), 60 - len(first))
    assert {sha: at for sha, at in rows(root, "SELECT sha256, at FROM processed") if sha in first} == first
    assert rows(root, "SELECT COUNT(*) FROM crops") == [(60,)]
    assert len(list(root.faces_dir.glob("*.png"))) == 60
    assert list(root.faces_dir.glob(".*.tmp")) == []


def manifest_and_crops(root: DataRoot) -> tuple[list[tuple], list[tuple], dict[str, bytes]]:
    return (
        rows(root, "SELECT * FROM processed ORDER BY sha256"),
        rows(root, "SELECT * FROM crops ORDER BY crop_id"),
        {p.name: p.read_bytes() for p in root.faces_dir.glob("*.png")},
    )


@pytest.mark.parametrize(
    "model, problem",
    [("missing.onnx", r"yunet_model = .*missing\.onnx.*no such file"),
     ("garbage.onnx", r"yunet_model = .*garbage\.onnx.*not a YuNet model")],
)  # fmt: skip
def test_a_forced_run_with_a_bad_model_file_keeps_the_manifest(few, tmp_path, model, problem):
    root, _ = few
    assert preprocess(PreprocessConfig(workers=1), root).counts["faces"] == 3
    before = manifest_and_crops(root)
    (tmp_path / "garbage.onnx").write_bytes(b"this is not an ONNX network")
    config = PreprocessConfig(workers=1, yunet_model=str(tmp_path / model))
    with pytest.raises(BadInputError, match=problem):
        preprocess(config, root, force=True)
    assert manifest_and_crops(root) == before


def test_progress_counts_each_photo_once_with_undecodable_ones_among_them(tmp_path):
    root = DataRoot(tmp_path)
    photos = [p.read_bytes() for p in ALL_PHOTOS[:2]]
    add_raw_files(root, [b"", b"GIF89a" + bytes(range(256)), photos[0], b"\xff\xd8\xff", photos[1]])
    progress = []
    report = preprocess(
        PreprocessConfig(workers=1, batch_size=2), root, on_progress=lambda *a: progress.append(a[:2])
    )
    assert report.counts["errors"] == 3 and report.counts["faces"] == 2
    assert [done for done, _ in progress] == [2, 4, 5]
    assert all(total == 5 for _, total in progress)


def test_temporary_crops_a_killed_worker_left_are_removed_by_the_next_run(few):
    root, shas = few
    config = PreprocessConfig(workers=1)
    preprocess(config, root)
    crops = {p.name: p.read_bytes() for p in root.faces_dir.glob("*.png")}
    # Named as common.files.atomic_path names them: the writer died before the rename.
    leftovers = [
        root.faces_dir / f".{shas[0]}-1.png.k3j9x_2a.tmp",
        root.faces_dir / f".{shas[1]}-0.png.q.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"half a PNG")
    assert preprocess(config, root).skipped
    assert [p for p in leftovers if p.exists()] == []
    assert {p.name: p.read_bytes() for p in root.faces_dir.glob("*.png")} == crops
