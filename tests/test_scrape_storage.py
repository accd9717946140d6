"""Storage and re-crawls: content addressing, conditional requests, takedowns, kill and resume, reports."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError
from scraper.__main__ import load
from scraper.config import ScrapeConfig
from scraper.crawl import crawl
from scraper.manifest import Manifest
from tests.website import TEST_AGENT, Reply, Website, jpeg, manifest_rows, scrape_config

REPO = Path(__file__).resolve().parents[1]


def photos(photos_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((photos_dir / "webmorph-neutral").glob("*.jpg"))[:n]]


def test_same_bytes_from_two_urls_are_stored_once_with_provenance_for_both(tmp_path, photos_dir):
    root = DataRoot(tmp_path)
    face, other = photos(photos_dir, 2)
    with Website(2) as web:
        a, b = web.hosts
        a.page(
            "/",
            '<figure><img src="/face.jpg" alt="A portrait"><figcaption>Jane, 1890</figcaption>'
            '<a rel="license" href="https://creativecommons.org/publicdomain/zero/1.0/">CC0</a></figure>'
            f'<img src="{b.url("/copy.jpg")}" alt="the same portrait"><img src="/other.jpg">',
        )
        a.image("/face.jpg", face)
        a.image("/other.jpg", other)
        b.image("/copy.jpg", face)

        report = crawl(scrape_config(web, [a.url("/")], licence="unknown, assumed public domain"), root)

        files = manifest_rows(root, "files", "sha256")
        urls = manifest_rows(root, "urls")
        sha = sha256_bytes(face)
        assert set(files) == {sha, sha256_bytes(other)}
        assert sorted(p.name for p in root.raw_dir.glob("*/*")) == sorted(f"{s}.jpg" for s in files)
        assert (root.root / files[sha]["path"]).read_bytes() == face
        assert files[sha]["width"] > 0 and files[sha]["type"] == "jpeg"
        first, copy = urls[a.url("/face.jpg")], urls[b.url("/copy.jpg")]
        assert {first["status"], copy["status"]} == {"fetched", "duplicate"}
        assert first["sha256"] == copy["sha256"] == sha
        assert first["page_url"] == copy["page_url"] == a.url("/")
        assert first["alt"] == "A portrait" and first["caption"] == "Jane, 1890"
        assert first["licence"] == "https://creativecommons.org/publicdomain/zero/1.0/"
        assert copy["licence"] == "unknown, assumed public domain"  # the config's, as the page states none
        assert first["fetched_at"] and first["bytes"] == len(face) and first["host"] == a.netloc
        assert report.counts["duplicate"] == 1 and report.counts["fetched"] == 2
        assert report.outputs == {"raw": str(root.raw_dir), "manifest": str(root.raw_manifest)}


def test_recrawl_sends_etag_and_last_modified_and_force_refetches(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/tagged.jpg"><img src="/dated.jpg"><img src="/changing.jpg">', etag='"page-1"')
        a.image("/tagged.jpg", jpeg(64, 64, 1), etag='"v1"')
        a.image("/dated.jpg", jpeg(64, 64, 2), last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
        a.image("/changing.jpg", jpeg(64, 64, 3), etag='"c1"')
        config = scrape_config(web, [a.url("/")])
        crawl(config, root)
        stored = {p: p.stat().st_mtime_ns for p in root.raw_dir.glob("*/*")}

        a.clear()
        a.image("/changing.jpg", jpeg(64, 64, 4), etag='"c2"')  # the site replaced one picture
        report = crawl(config, root)

        sent = {s.path: s.headers for s in a.requests()}
        assert sent["/"]["If-None-Match"] == '"page-1"'  # unchanged page: its links come from the manifest
        assert sent["/tagged.jpg"]["If-None-Match"] == '"v1"'
        assert sent["/dated.jpg"]["If-Modified-Since"] == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert report.counts["not_modified"] == 2 and report.counts["fetched"] == 1
        assert {p: p.stat().st_mtime_ns for p in stored} == stored  # nothing rewritten
        urls = manifest_rows(root, "urls")
        assert urls[a.url("/tagged.jpg")]["status"] == "not_modified"
        assert urls[a.url("/changing.jpg")]["sha256"] == sha256_bytes(jpeg(64, 64, 4))
        assert len(manifest_rows(root, "files", "sha256")) == 4  # the old version stays for provenance

        a.clear()
        report = crawl(config, root, force=True)
        assert all(
            "If-None-Match" not in s.headers and "If-Modified-Since" not in s.headers for s in a.requests()
        )
        assert sorted(a.paths()) == ["/", "/changing.jpg", "/dated.jpg", "/tagged.jpg"]  # all again
        # The same bytes from the same URL are not_modified, asked conditionally or not.
        assert report.counts["not_modified"] == 3 and report.counts["fetched"] == 0
        assert {r["status"] for r in manifest_rows(root, "urls").values()} == {"not_modified"}


def test_forgotten_urls_are_never_requested_and_forgotten_bytes_never_stored(tmp_path):
    root = DataRoot(tmp_path)
    taken_down, mirrored = jpeg(64, 64, 1), jpeg(64, 64, 2)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/gone.jpg"><img src="/kept.jpg"><a href="/taken-page">p</a>')
        a.page("/taken-page", '<img src="/on-taken-page.jpg">')
        a.image("/gone.jpg", taken_down)
        a.image("/kept.jpg", jpeg(64, 64, 3))
        a.image("/mirror.jpg", mirrored)
        a.image("/on-taken-page.jpg", jpeg(64, 64, 4))
        with Manifest(root.raw_manifest) as manifest, manifest.db:  # taken down before this crawl
            manifest.db.executemany(
                "INSERT INTO forgotten(key, sha256, at) VALUES (?, ?, 'now')",
                [(a.url("/gone.jpg"), None), (a.url("/taken-page"), None), (sha256_bytes(mirrored), None)],
            )
        crawl(scrape_config(web, [a.url("/")]), root)
        a.page("/", '<img src="/mirror.jpg"><img src="/kept.jpg">')  # the same picture under a new name
        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert not {"/gone.jpg", "/taken-page", "/on-taken-page.jpg"} & set(a.paths())
        urls = manifest_rows(root, "urls")
        assert set(urls) == {a.url("/kept.jpg")}
        assert set(manifest_rows(root, "files", "sha256")) == {sha256_bytes(jpeg(64, 64, 3))}
        assert len(list(root.raw_dir.glob("*/*"))) == 1
        assert report.counts["forgotten"] == 1


def test_progress_is_reported_to_the_callback_and_as_a_bar(tmp_path, capsys):
    calls = []
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", "".join(f'<img src="/{i}.jpg">' for i in range(5)))
        for i in range(5):
            a.image(f"/{i}.jpg", jpeg(64, 64, i))
        config = scrape_config(web, [a.url("/")])
        report = crawl(
            config, DataRoot(tmp_path), on_progress=lambda *args: calls.append(args), progress_bar=True
        )

    assert calls[-1][:2] == (6, 6) and all(isinstance(m, str) for _, _, m in calls)
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert "scrape" in capsys.readouterr().err  # the tqdm bar
    assert report.tables["hosts"][0]["host"] == a.netloc and report.tables["hosts"][0]["fetched"] == 5
    assert report.notes[0].startswith(f"{a.netloc}: fetched 5")
    assert "| fetched | 5 |" in report.markdown()


def test_a_killed_crawl_resumes_without_refetching_or_losing_a_row(tmp_path, photos_dir):
    root = DataRoot(tmp_path / "data")
    images = photos(photos_dir, 24)
    with Website(2) as web:
        for h, host in enumerate(web.hosts):
            host.robots("User-agent: *\nCrawl-delay: 0.1\n")
            host.page("/", "".join(f'<a href="/g{g}">gallery {g}</a>' for g in range(3)))
            for g in range(3):
                host.page(f"/g{g}", "".join(f'<img src="/p{g}-{i}.jpg">' for i in range(4)))
                for i in range(4):
                    host.image(f"/p{g}-{i}.jpg", images[h * 12 + g * 4 + i])
        config = scrape_config(web, [h.url("/") for h in web.hosts])
        config_file = tmp_path / "scrape.json"
        config_file.write_text(json.dumps(config.model_dump()))
        command = [
            sys.executable,
            "-m",
            "scraper",
            str(config_file),
            "--data-dir",
            str(root.root),
            "--no-progress",
        ]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while len(rows_now(root)) < 6:
                assert process.poll() is None, process.stderr.read().decode()
                time.sleep(0.02)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        killed_at = time.monotonic()
        done_before = rows_now(root)
        assert 6 <= len(done_before) < 24  # it really was cut off mid-crawl

        report = crawl(config, root)

        after = [s for h in web.hosts for s in h.requests() if s.start > killed_at]
        refetched = [
            s for h in web.hosts for s in h.requests() if s.start > killed_at and h.url(s.path) in done_before
        ]
        assert refetched == []  # nothing stored before the kill is asked for again
        for host in web.hosts:  # the Crawl-delay holds across the kill, from the server's view
            before = [s for s in host.requests() if s.start <= killed_at]
            resumed = [s for s in host.requests() if s.start > killed_at]
            if before and resumed:
                last = max(before, key=lambda s: s.start)
                assert min(s.start for s in resumed) - last.end >= 0.1, (host.netloc, last.path)
        assert not [s for s in after if s.path == "/"]  # nor the seed pages it had read
        image_requests = [s for h in web.hosts for s in h.requests() if s.path.endswith(".jpg")]
        assert len(image_requests) <= 24 + 2  # at most one download per host was lost in flight
        urls = manifest_rows(root, "urls")
        assert len(urls) == 24 and all(r["status"] == "fetched" for r in urls.values())
        assert {r["sha256"] for r in urls.values()} == {sha256_bytes(b) for b in images}
        assert len(list(root.raw_dir.glob("*/*"))) == 24  # a file written just before the kill is reused
        assert any(n.startswith("resumed an interrupted crawl") for n in report.notes)


def rows_now(root: DataRoot) -> set[str]:
    if not root.raw_manifest.is_file():
        return set()
    try:
        return set(manifest_rows(root, "urls"))
    except sqlite3.OperationalError:  # the tables are not there yet
        return set()


def test_bad_configs_are_refused_with_the_key_and_the_fix(tmp_path):
    root = DataRoot(tmp_path)
    with pytest.raises(BadInputError, match="seeds is empty"):
        crawl(ScrapeConfig(), root)
    with pytest.raises(BadInputError, match="user_agent is the placeholder"):
        crawl(ScrapeConfig(seeds=["https://example.org/gallery"]), root)
    with pytest.raises(BadInputError, match="allowed_hosts"):
        crawl(
            ScrapeConfig(
                seeds=["https://example.org/"], allowed_hosts=["example.com"], user_agent=TEST_AGENT
            ),
            root,
        )
    for bad, key in (
        ({"seeds": ["ftp://example.org/"]}, "seeds"),
        ({"allow_networks": ["localhost"]}, "allow_networks"),
        ({"follow_pattern": "("}, "follow_pattern"),
        ({"follow": "a[["}, "follow"),
        ({"user_agent": "mybot"}, "user_agent"),
        ({"max_depth": -1}, "max_depth"),
        ({"robots_max_age": 2 * 86_400}, "robots_max_age"),
        ({"max_images_per_page": 0}, "max_images_per_page"),
        ({"resolve": {"staging.example": "not-an-address"}}, "resolve"),
        ({"seed": ["https://example.org/"]}, "seed"),  # a typo
    ):
        with pytest.raises(ValidationError, match=key):
            ScrapeConfig(**bad)
    assert not root.raw_dir.exists()  # nothing was written


def test_the_wikimedia_example_config_loads_and_names_a_contact_to_fill_in(tmp_path):
    config = load(REPO / "configs" / "wikimedia-commons.toml")
    assert all(s.startswith("https://commons.wikimedia.org/") for s in config.seeds)
    assert {"commons.wikimedia.org", "upload.wikimedia.org"} <= set(config.allowed_hosts)
    assert config.default_delay >= 1 and config.connections_per_host == 1 and config.allow_networks == []
    with pytest.raises(BadInputError, match="user_agent is the placeholder"):
        crawl(config, DataRoot(tmp_path))  # refuses to run until a real contact is set
    bad = tmp_path / "bad.toml"
    bad.write_text("[scrape]\nseeds = ['https://example.org/']\nmax_pages = 0\n")
    with pytest.raises(BadInputError, match="max_pages"):
        load(bad)


def test_a_reply_without_a_body_is_an_error_not_a_crash(tmp_path):
    """Odd answers a real site gives: 204, a 304 nobody asked for, a 404 page, an HTML page as an image."""
    with Website(1) as web:
        (a,) = web.hosts
        a.page(
            "/",
            '<img src="/empty.jpg"><img src="/unasked.jpg"><img src="/missing.jpg"><a href="/x.jpg">x</a>',
        )
        a.add("/empty.jpg", Reply(204))
        a.add("/unasked.jpg", Reply(304))
        report = crawl(scrape_config(web, [a.url("/")]), DataRoot(tmp_path))
    urls = manifest_rows(DataRoot(tmp_path), "urls")
    assert {u.rsplit("/", 1)[1]: r["error"] for u, r in urls.items()} == {
        "empty.jpg": "HTTP 204",
        "unasked.jpg": "HTTP 304 to a plain GET",
        "missing.jpg": "HTTP 404",
        "x.jpg": "HTTP 404",
    }
    assert report.counts["failed"] == 4
