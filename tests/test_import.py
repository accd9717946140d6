"""`faces import`: photos enter the raw store as crawled ones do: incremental, kill-safe, forgettable."""

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError
from preprocess.config import PreprocessConfig
from preprocess.pipeline import preprocess
from scraper.config import ScrapeConfig
from scraper.crawl import crawl
from scraper.importer import import_photos
from tests.website import Website, jpeg, manifest_rows, png, scrape_config

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "photos"
CONFIG = ScrapeConfig(min_width=32, min_height=32)


def run_import(root: DataRoot, *paths, **kwargs):
    return import_photos(kwargs.pop("config", CONFIG), root, paths=[str(p) for p in paths], **kwargs)


def photo_folder(tmp_path: Path, n: int = 4) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        (folder / ("sub" if i % 2 else "") / f"p{i}.jpg").write_bytes(jpeg(96, 80, seed=i))
    return folder


def crops_of(root: DataRoot) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.faces_dir.glob("*.png"))}


def test_imported_photos_give_the_crops_a_crawl_of_the_same_photos_gives(tmp_path):
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent: the shared portraits are needed to compare real crops")
    photos = sorted(PHOTOS.glob("webmorph-*/*.jpg"))[::20][:10]
    folder = tmp_path / "photos"  # the shared folder's layout, ten photos of it (links, not copies)
    for path in photos:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).symlink_to(path)
    imported, crawled = DataRoot(tmp_path / "imported"), DataRoot(tmp_path / "crawled")
    report = run_import(imported, folder, config=ScrapeConfig())
    assert report.counts["imported"] == len(photos) and report.counts["refused"] == 0
    with Website() as web:
        site = web.hosts[0]
        site.page("/", "".join(f'<img src="/{i}.jpg">' for i in range(len(photos))))
        for i, path in enumerate(photos):
            site.image(f"/{i}.jpg", path.read_bytes())
        crawl(scrape_config(web, [site.url("/")], min_width=64, min_height=64), crawled)

    assert set(manifest_rows(imported, "files", "sha256")) == set(manifest_rows(crawled, "files", "sha256"))
    config = PreprocessConfig(workers=1)
    for root in (imported, crawled):
        preprocess(config, root)
    assert len(crops_of(imported)) >= len(photos)  # every portrait has a face
    assert crops_of(imported) == crops_of(crawled)


def test_a_second_import_reads_and_stores_nothing(tmp_path):
    folder = photo_folder(tmp_path)
    root = DataRoot(tmp_path / "data")
    first = run_import(root, folder)
    assert first.counts["imported"] == 4
    stored = {p: p.stat().st_mtime_ns for p in root.raw_dir.glob("*/*")}
    rows = manifest_rows(root, "urls")
    # Same size and time, other bytes: only a re-read would notice, and an unchanged file is not re-read.
    victim = folder / "p0.jpg"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    second = run_import(root, folder)

    assert (
        second.counts["unchanged"] == 4 and second.counts["imported"] == 0 and second.counts["refused"] == 0
    )
    assert {p: p.stat().st_mtime_ns for p in root.raw_dir.glob("*/*")} == stored
    assert manifest_rows(root, "urls") == rows
    forced = run_import(root, folder, force=True)  # --force reads every file: now it sees the change
    assert (
        forced.counts["refused"] == 1
        and "earlier copy kept" in manifest_rows(root, "urls")[victim.resolve().as_uri()]["error"]
    )


def test_each_photo_gets_one_row_with_its_provenance(tmp_path):
    folder = photo_folder(tmp_path, n=2)
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a/x.png", png(64, 64, seed=10))
        z.writestr("a/copy.jpg", jpeg(96, 80, seed=0))  # the same bytes as p0.jpg
    root = DataRoot(tmp_path / "data")

    report = run_import(root, folder, archive, licence="CC0", source_url="https://example.org/album")

    assert report.counts == {
        "files": 4, "imported": 3, "duplicate": 1, "unchanged": 0, "refused": 0, "taken down": 0,
        "ignored": 0,
    }  # fmt: skip
    urls = manifest_rows(root, "urls")
    member = f"{archive.resolve().as_uri()}#a/x.png"
    assert set(urls) == {
        (folder / "p0.jpg").resolve().as_uri(),
        (folder / "sub" / "p1.jpg").resolve().as_uri(),
        member,
        f"{archive.resolve().as_uri()}#a/copy.jpg",
    }
    row = urls[member]
    assert row["status"] == "fetched" and row["sha256"] == sha256_bytes(png(64, 64, seed=10))
    assert (row["licence"], row["page_url"], row["type"]) == ("CC0", "https://example.org/album", "png")
    assert row["fetched_at"]
    files = manifest_rows(root, "files", "sha256")
    assert (root.root / files[row["sha256"]]["path"]).read_bytes() == png(64, 64, seed=10)


def test_unreadable_files_are_named_with_their_reason_and_the_rest_imported(tmp_path):
    folder = photo_folder(tmp_path, n=2)
    (folder / "broken.jpg").write_bytes(jpeg(96, 80, seed=5)[:300])
    (folder / "tiny.png").write_bytes(png(16, 16, seed=6))
    (folder / "page.jpg").write_bytes(b"<html><body>not a photo</body></html>")
    (folder / "notes.txt").write_text("ignored: not an image file name")
    (folder / "._p0.jpg").write_bytes(b"\0\5\26\7 a macOS resource fork")  # hidden: ignored
    huge = png(300, 300, seed=7)
    (folder / "huge.png").write_bytes(huge)
    root = DataRoot(tmp_path / "data")
    config = ScrapeConfig(min_width=32, min_height=32, max_bytes=len(huge) - 1)

    report = run_import(root, folder, config=config)

    assert report.counts["imported"] == 2 and report.counts["refused"] == 4 and report.counts["ignored"] == 2
    reasons = {Path(r["file"]).name: r["reason"] for r in report.tables["refused"]}
    assert reasons["broken.jpg"].startswith("corrupt jpeg")
    assert "under [scrape] min_width" in reasons["tiny.png"]
    assert reasons["page.jpg"] == "not an image: HTML"
    assert reasons["huge.png"] == f"{len(huge)} bytes is over [scrape] max_bytes = {len(huge) - 1}"
    assert any("notes.txt" in n for n in report.notes)
    statuses = {Path(u).name: r["status"] for u, r in manifest_rows(root, "urls").items()}
    assert statuses == {
        "p0.jpg": "fetched", "p1.jpg": "fetched", "broken.jpg": "not_image", "tiny.png": "too_small",
        "page.jpg": "not_image", "huge.png": "failed",
    }  # fmt: skip


def test_bad_paths_and_source_urls_are_refused_before_anything_is_written(tmp_path):
    root = DataRoot(tmp_path / "data")
    with pytest.raises(BadInputError, match="nowhere: no such file or folder"):
        run_import(root, photo_folder(tmp_path), tmp_path / "nowhere")
    with pytest.raises(BadInputError, match="not an http"):
        run_import(root, tmp_path / "photos", source_url="ftp://example.org/x")
    assert not root.raw_dir.exists()


KILLED_IMPORT = """
import os, signal, sys
from common.layout import DataRoot
from scraper.config import ScrapeConfig
from scraper.importer import import_photos
from scraper.manifest import Manifest

finish = Manifest.finish_image
calls = []

def finish_then_die(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the third photo's file is written, its rows are not: the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
    finish(self, *args, **kwargs)

Manifest.finish_image = finish_then_die
import_photos(ScrapeConfig(min_width=32, min_height=32), DataRoot(sys.argv[1]), paths=[sys.argv[2]])
"""


def test_an_import_killed_midway_resumes_without_loss(tmp_path):
    folder = photo_folder(tmp_path, n=5)
    root = DataRoot(tmp_path / "data")
    child = subprocess.run(
        [sys.executable, "-c", KILLED_IMPORT, str(root.root), str(folder)], cwd=REPO, timeout=120
    )
    assert child.returncode == -9
    assert len(manifest_rows(root, "files", "sha256")) == 2
    assert len(list(root.raw_dir.glob("*/*.jpg"))) == 3  # one file with no row yet

    report = run_import(root, folder)

    assert report.counts["unchanged"] == 2 and report.counts["imported"] == 3
    files = manifest_rows(root, "files", "sha256")
    expected = {sha256_bytes(p.read_bytes()) for p in folder.rglob("*.jpg")}
    assert set(files) == expected
    assert sorted(p.name for p in root.raw_dir.glob("*/*")) == sorted(f"{s}.jpg" for s in expected)
    with sqlite3.connect(root.raw_manifest) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_forget_takes_an_imported_photo_down_by_its_path_and_it_is_never_imported_again(tmp_path):
    from flows.cli import main

    folder = photo_folder(tmp_path, n=3)
    root = DataRoot(tmp_path / "data")
    run_import(root, folder)
    victim = folder / "sub" / "p1.jpg"
    sha = sha256_bytes(victim.read_bytes())

    assert main(["forget", str(victim), "--data-dir", str(root.root)]) == 0

    assert sha not in manifest_rows(root, "files", "sha256")
    assert victim.resolve().as_uri() not in manifest_rows(root, "urls")
    assert not list(root.raw_dir.glob(f"*/{sha}.*"))
    again = run_import(root, folder)
    assert again.counts["taken down"] == 1 and again.counts["imported"] == 0
    assert not list(root.raw_dir.glob(f"*/{sha}.*"))


def test_forget_by_path_works_after_the_photo_itself_was_deleted(tmp_path):
    from flows.cli import main

    folder = photo_folder(tmp_path, n=2)
    root = DataRoot(tmp_path / "data")
    run_import(root, folder)
    victim = folder / "p0.jpg"
    sha = sha256_bytes(victim.read_bytes())
    victim.unlink()

    assert main(["forget", str(victim), "--data-dir", str(root.root)]) == 0

    assert sha not in manifest_rows(root, "files", "sha256") and not list(root.raw_dir.glob(f"*/{sha}.*"))
    assert len(manifest_rows(root, "files", "sha256")) == 1


def test_faces_import_prints_one_line_for_a_missing_path(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "import", str(tmp_path / "gone"), "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"faces: error: faces import: {tmp_path / 'gone'}: no such file or folder; check the path"
    ]


def test_faces_import_command_imports_and_reports(tmp_path, capsys):
    from flows.cli import main

    folder = photo_folder(tmp_path, n=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = tmp_path / "data"
    assert main(["import", str(folder), "--licence", "CC-BY-4.0", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "| imported | 2 |" in out and "broken.jpg: corrupt jpeg" in out
    assert {r["licence"] for r in manifest_rows(DataRoot(data), "urls").values()} == {"CC-BY-4.0"}


def test_the_import_flow_imports_like_the_command(tmp_path, prefect_harness):
    from flows.import_flow import import_flow

    folder = photo_folder(tmp_path, n=2)
    result = import_flow(paths=[str(folder)], data_dir=str(tmp_path / "data"), licence="CC0")
    assert result["counts"]["imported"] == 2
    assert len(manifest_rows(DataRoot(tmp_path / "data"), "files", "sha256")) == 2


def test_a_folder_as_people_keep_them_imports_every_readable_photo_and_names_the_rest(tmp_path, photos_dir):
    from PIL import Image

    folder = photo_folder(tmp_path, n=2)
    portrait = Image.open(sorted(photos_dir.rglob("*.jpg"))[0]).convert("RGB")
    # A phone's JPEG that carries a second image (an HDR gain map, a depth map): Pillow calls it MPO.
    small = portrait.resize((portrait.width // 4, portrait.height // 4))
    portrait.save(folder / "phone.jpg", "MPO", save_all=True, append_images=[small])
    with zipfile.ZipFile(tmp_path / "holiday.zip", "w") as archive:
        archive.writestr("beach.jpg", jpeg(96, 80, seed=3))
    (folder / "holiday.zip").write_bytes((tmp_path / "holiday.zip").read_bytes()[:60])  # cut short
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    with zipfile.ZipFile(folder / "twice.zip", "w") as archive:
        archive.writestr("a.jpg", jpeg(96, 80, seed=4))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("a.jpg", jpeg(96, 80, seed=5))
        archive.writestr("b.jpg", jpeg(96, 80, seed=6))
    root = DataRoot(tmp_path / "data")

    report = run_import(root, folder)

    reasons = {Path(r["file"]).name: r["reason"] for r in report.tables["refused"]}
    assert reasons.keys() == {"holiday.zip", "gone.jpg", "twice.zip:a.jpg"}, reasons
    assert (
        reasons["holiday.zip"].startswith("is not a readable zip archive")
        and "check the file" in reasons["holiday.zip"]
    )
    assert "missing" in reasons["gone.jpg"] and "2 members share this name" in reasons["twice.zip:a.jpg"]
    assert report.counts["imported"] == 4  # p0, p1, phone.jpg and twice.zip:b.jpg
    assert preprocess(PreprocessConfig(workers=1), root).counts["faces"] >= 1  # the phone's portrait
