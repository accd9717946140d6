import json
import sqlite3
from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError
from export.stage import export
from models.train import train
from scraper.crawl import crawl
from scraper.manifest import Manifest
from tests.export_data import small_export
from tests.train_helpers import tiny
from tests.validate_data import (
    NEUTRAL,
    Root,
    Traces,
    crawl_photos,
    face_crop,
    files_containing,
    png,
    pupils,
)
from tests.website import Website, manifest_rows, scrape_config
from validate import snapshot
from validate.config import ValidateConfig
from validate.stage import validate
from validate.takedown import forget

ROWS = pupils()
CONFIG = ValidateConfig(min_images=8, workers=1)
EXPORT = small_export(onnx=False, n_samples=1, interpolation_steps=2, eval_samples=16, diversity_samples=4)
PAGE = "http://127.0.0.1:8001/people/ann.html"


def forgotten(r: Root | DataRoot) -> dict[str, str | None]:
    root = r.root if isinstance(r, Root) else r
    with closing(sqlite3.connect(root.raw_manifest)) as con:
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
    assert f"snapshots that contained it, deleted: datasets/{third_id}, datasets/{second_id}" in report.notes
    assert (
        f"datasets/{first_id} showed it as rejected, redacted: datasets/{first_id}/rejected-blurry.png, "
        f"datasets/{first_id}/report.json, datasets/{first_id}/report.md, datasets/{first_id}/README.md"
    ) in report.notes
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


def test_forgetting_an_image_url_leaves_nothing_of_it_under_the_data_root_exports_included(
    tmp_path, one_thread
):
    root = DataRoot(tmp_path / "data")
    pages = crawl_photos(root, ROWS[:10])  # the real crawler: files, urls, pages, frontier
    r = Root(root.root)  # and the crops, as preprocess leaves them
    for row in ROWS[:10]:
        r.add_crop(sha256_of(row), face_crop(row))
    validate(CONFIG, root)
    run = Path(
        train(
            tiny(image_size=64, steps=2, checkpoint_every=2, sample_every=2, eval_every=1000), root
        ).outputs["run_dir"]
    ).name
    export(EXPORT, root)
    # the training crop memorisation.png shows beside the samples: its image is taken down by URL
    metrics = json.loads((root.export_dir(run) / "metrics.json").read_text())
    dataset = root.dataset_dir(metrics["reference_dataset"])
    shown = snapshot.read_index(dataset)[metrics["memorisation"]["nearest_index"][0]]
    url, sha = shown["source_url"], shown["sha256"]
    raw_file = next(root.raw_dir.glob(f"*/{sha}.*"))
    traces = Traces(
        original=raw_file.read_bytes()[3000:3064],
        crop=np.load(dataset / "images.npy")[int(shown["row"])],
        texts=[url, sha],
    )
    before = traces.search(root, tmp_path / "scratch")
    assert before["original"] == [str(raw_file.relative_to(root.root))]
    assert {
        f"exports/{run}/memorisation.png",
        f"datasets/{dataset.name}/images.npy",
        f"faces/{sha}-0.png",
    } <= set(before["crop"])
    assert "raw/manifest.sqlite" in before[url]  # urls, pages.images, frontier

    report = forget(url, root, CONFIG)

    assert traces.search(root, tmp_path / "scratch") == traces.nowhere()
    said = "\n".join(report.notes)
    for path in (
        str(raw_file.relative_to(root.root)),
        f"faces/{sha}-0.png",
        f"datasets/{dataset.name}",
        f"exports/{run}/memorisation.png",
        f"exports/{run}/export.json",
        f"exports/{run}/MODEL_CARD.md",
        "raw/manifest.sqlite",
        "faces/manifest.sqlite",
        "datasets/validate.sqlite",
        f"runs/{run}",
    ):
        assert path in said, path
    # the export says what was taken from it; the run stays (its weights cannot forget one face)
    info = json.loads((root.export_dir(run) / "export.json").read_text())
    assert info["needs_reexport"] is True and info["takedowns"][0]["removed"] == ["memorisation.png"]
    assert (
        "memorisation.png was removed by a takedown" in (root.export_dir(run) / "MODEL_CARD.md").read_text()
    )
    assert (root.run_dir(run) / "run.json").is_file()
    # the crawler's records of the page keep its other images
    page = pages[url]
    others = sorted(u for u, p in pages.items() if p == page and u != url)
    assert sorted(i["url"] for i in json.loads(manifest_rows(root, "pages")[page]["images"])) == others
    frontier = manifest_rows(root, "frontier")
    assert url not in frontier and set(others) <= set(frontier)
    # exporting again is not skipped: memorisation.png comes back, from the crops that are left
    again = export(EXPORT, root, run=run)
    assert not again.skipped and (root.export_dir(run) / "memorisation.png").is_file()
    assert "needs_reexport" not in json.loads((root.export_dir(run) / "export.json").read_text())
    assert traces.search(root, tmp_path / "scratch") == traces.nowhere()


def test_a_takedown_leaves_no_deleted_copy_of_a_url_in_the_manifests_free_pages(tmp_path):
    root = DataRoot(tmp_path / "data")
    pages = crawl_photos(root, ROWS[:4], per_page=2)
    with Manifest(root.raw_manifest) as crawler:  # the next crawl starts on a SQLite built without
        crawler.db.execute("PRAGMA secure_delete = OFF")  # SECURE_DELETE, upstream's default:
        crawler.begin(fresh=True)  # it empties the frontier, and the rows stay in free pages
    url = sorted(pages)[0]
    traces = Traces(original=b"", crop=face_crop(ROWS[0]), texts=[url, sha256_of(ROWS[0])])

    report = forget(url, root, CONFIG)

    assert report.counts["images"] == 1
    assert "rows deleted and databases rebuilt: raw/manifest.sqlite" in report.notes
    found = traces.search(root, tmp_path / "scratch")
    assert found[url] == [] and found[sha256_of(ROWS[0])] == []


def test_forgetting_a_page_takes_down_the_images_listed_on_it_even_those_never_fetched(tmp_path):
    root = DataRoot(tmp_path / "data")
    first, second = ((NEUTRAL / row["file"]).read_bytes() for row in ROWS[:2])
    with Website(1) as web:
        (host,) = web.hosts
        host.page("/", '<a href="/ann.html">ann</a>')
        host.page("/ann.html", '<img src="/img/1.jpg" alt="Ann"><img src="/img/2.jpg" alt="Ann again">')
        host.image("/img/1.jpg", first)
        host.image("/img/2.jpg", second)
        crawl(scrape_config(web, [host.url("/")], max_images=1), root)  # the second: listed, not fetched
        page, urls = host.url("/ann.html"), [host.url("/img/1.jpg"), host.url("/img/2.jpg")]
        traces = Traces(original=first[3000:3064], crop=face_crop(ROWS[0]), texts=[page, *urls])

        report = forget(page, root, CONFIG)

        assert report.counts["images"] == 1 and set(urls) <= set(forgotten(root))
        # the page's row, the index page's link to it, the frontier: only the takedown record names them
        assert traces.search(root, tmp_path / "scratch") == traces.nowhere()
        # another page shows the image that was never fetched: the next crawl leaves it alone
        host.page("/", '<a href="/ann.html">ann</a> <a href="/bob.html">bob</a>')
        host.page("/bob.html", '<img src="/img/2.jpg" alt="Ann, elsewhere">')
        crawl(scrape_config(web, [host.url("/")]), root)
        assert host.requests("/bob.html") and not host.requests("/img/2.jpg")
        assert len(host.requests("/ann.html")) == 1
        # and writes neither URL back: not in the index page's links, bob's images or the frontier
        assert traces.search(root, tmp_path / "scratch") == traces.nowhere()


def test_an_export_is_redacted_when_it_showed_the_image_or_its_snapshot_is_gone_and_kept_otherwise(tmp_path):
    r = Root(tmp_path / "data")
    ids = [r.add_photo(row) for row in ROWS[:9]]
    dataset = Path(validate(CONFIG, r.root).outputs["dataset"]).name
    index = snapshot.read_index(r.root.dataset_dir(dataset))
    row_of = {line["sha256"]: int(line["row"]) for line in index}
    showing = {  # export -> (snapshot it drew memorisation.png from, the rows shown)
        "showed-it": (dataset, [row_of[ids[1][:64]], row_of[ids[0][:64]]]),
        "snapshot-gone": ("0123456789abcdef", [0]),
        "other-crops": (dataset, [row_of[ids[1][:64]], row_of[ids[2][:64]]]),
    }
    for run, (reference, rows) in showing.items():
        folder = r.root.export_dir(run)
        folder.mkdir(parents=True)
        (folder / "memorisation.png").write_bytes(png(face_crop(ROWS[1])))
        (folder / "metrics.json").write_text(
            json.dumps({"reference_dataset": reference, "memorisation": {"nearest_index": rows}})
        )
        (folder / "export.json").write_text(json.dumps({"run": run, "fingerprint": "f"}))
        (folder / "MODEL_CARD.md").write_text(f"# Model card: `{run}`\n")

    report = forget(ids[0][:64], r.root, CONFIG)

    for run in ("showed-it", "snapshot-gone"):
        folder = r.root.export_dir(run)
        assert not (folder / "memorisation.png").exists()
        assert json.loads((folder / "export.json").read_text())["needs_reexport"] is True
        assert f"exports/{run}/memorisation.png" in "\n".join(report.notes)
    kept = r.root.export_dir("other-crops")
    assert (kept / "memorisation.png").is_file() and "needs_reexport" not in (
        kept / "export.json"
    ).read_text()
    assert report.counts["exports redacted"] == 2


def sha256_of(row: dict) -> str:
    return sha256_bytes((NEUTRAL / row["file"]).read_bytes())
