"""What an adversarial website tried, as its servers saw it: slow drips, split headers, redirects
across hosts, restarts, odd host names, meta refreshes, huge pages, repeated bytes, killed writes."""

import sys
import threading
import time

import pytest
from bs4 import BeautifulSoup

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError
from scraper.crawl import crawl
from scraper.extract import extract
from scraper.urls import allowed_hosts, host_allowed, normalize
from tests.website import Reply, Website, jpeg, manifest_rows, png, scrape_config

BIG = 70 * 1024  # over the downloader's 64 KiB read size
DRIP = {"drip": 0.05, "drip_bytes": 1, "give_up_after": 6.0}  # 20 B/s; the server hangs up after 6 s


def ordered(host) -> list:
    return sorted(host.requests(), key=lambda s: s.start)


def settled(seen, timeout: float = 10.0):
    """The request once its server thread is done with it (it notices a hang-up on its next write)."""
    until = time.monotonic() + timeout
    while not seen.end and time.monotonic() < until:
        time.sleep(0.01)
    return seen


def gaps(seen: list) -> list[float]:
    """Time from the end of each request to the start of the next, as the server saw them."""
    return [b.start - a.end for a, b in zip(seen, seen[1:], strict=False)]


def test_total_timeout_holds_against_a_slow_drip_for_pages_images_and_robots_txt(tmp_path):
    root = DataRoot(tmp_path)
    with Website(4) as web:
        page_host, image_host, robots_host, header_host = web.hosts
        page_host.page("/", "<html><body>" + "x" * BIG + "</body></html>", **DRIP)
        header_host.add("/", Reply(drip_headers=True, **DRIP))  # headers that never end
        image_host.page("/", '<img src="/slow.jpg">')
        image_host.image("/slow.jpg", jpeg(64, 64, 1) + bytes(BIG), **DRIP)
        robots_host.robots("User-agent: *\nDisallow:\n" + "#" * BIG + "\n", **DRIP)
        robots_host.page("/", '<img src="/never.jpg">')
        seeds = [h.url("/") for h in web.hosts]
        # The read timeout never fires (a byte comes every 50 ms); only the whole-download deadline can.
        config = scrape_config(web, seeds, timeout=2.0, total_timeout=1.0, max_retries=0)

        crawl(config, root)

        dripped = {
            "page": page_host.requests("/")[0],
            "image": image_host.requests("/slow.jpg")[0],
            "robots.txt": robots_host.requests("/robots.txt")[0],
            "headers": header_host.requests("/")[0],
        }
        for what, seen in dripped.items():
            settled(seen)
            # The crawler hung up long before the body was complete, and before the server gave up.
            assert seen.hung_up == "client", (what, seen.hung_up, seen.sent)
            assert seen.sent < BIG // 10, (what, seen.sent)
        assert robots_host.paths() == ["/robots.txt"]  # robots.txt unreadable: nothing else asked
        pages, urls = manifest_rows(root, "pages"), manifest_rows(root, "urls")
        page, image = pages[page_host.url("/")], urls[image_host.url("/slow.jpg")]
        assert page["status"] == "failed" and page["error"] == "download took over 1 s; stopped"
        assert pages[header_host.url("/")]["error"] == "download took over 1 s; stopped"
        assert image["status"] == "failed" and image["error"] == "download took over 1 s; stopped"
        robots_page = pages[robots_host.url("/")]
        assert robots_page["status"] == "robots" and "download took over 1 s" in robots_page["error"]


def test_each_x_robots_tag_header_line_is_its_own_scope(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/opted.jpg"><img src="/others.jpg"><a href="/gallery">more</a>')
        a.image("/opted.jpg", jpeg(64, 64, 1), headers={"X-Robots-Tag": ["otherbot: noindex", "noai"]})
        a.image(
            "/others.jpg", jpeg(64, 64, 2), headers={"X-Robots-Tag": ["otherbot: noai", "otherbot: none"]}
        )
        a.page(
            "/gallery",
            '<img src="/spared.jpg">',
            headers={"X-Robots-Tag": ["otherbot: noindex", "noimageai"]},
        )
        a.image("/spared.jpg", jpeg(64, 64, 3))

        crawl(scrape_config(web, [a.url("/")]), root)

        assert "/gallery" in a.paths() and "/spared.jpg" not in a.paths()  # the page's opt-out held
        urls = manifest_rows(root, "urls")
        opted, spared, others = (urls[a.url(p)] for p in ("/opted.jpg", "/spared.jpg", "/others.jpg"))
        assert (opted["status"], opted["opt_out"], opted["sha256"]) == ("opted_out", "noai", None)
        assert (spared["status"], spared["opt_out"]) == ("opted_out", "noimageai")
        assert others["status"] == "fetched"  # directives for another bot only
        assert set(manifest_rows(root, "files", "sha256")) == {sha256_bytes(jpeg(64, 64, 2))}


def test_a_robots_txt_redirect_to_another_host_keeps_that_hosts_delay(tmp_path):
    with Website(2) as web:
        a, b = web.hosts
        a.add("/robots.txt", Reply(301, headers={"Location": b.url("/robots-for-a.txt")}))
        b.add(
            "/robots-for-a.txt", Reply(body=b"User-agent: *\nDisallow: /private\n", content_type="text/plain")
        )
        b.robots("User-agent: *\nRequest-rate: 2/1s\n")  # b: 0.5 s between requests
        a.page("/", '<img src="/private/x.jpg"><img src="/y.jpg">')
        a.image("/private/x.jpg", jpeg(64, 64, 1))
        a.image("/y.jpg", jpeg(64, 64, 2))
        b.page("/", "".join(f'<img src="/{i}.jpg">' for i in range(3)))
        for i in range(3):
            b.image(f"/{i}.jpg", jpeg(64, 64, 10 + i))
        config = scrape_config(web, [a.url("/"), b.url("/")], default_delay=0.25)

        crawl(config, DataRoot(tmp_path))

        assert "/private/x.jpg" not in a.paths() and "/y.jpg" in a.paths()  # a's rules, from b
        seen = ordered(b)
        assert "/robots-for-a.txt" in [s.path for s in seen] and len(seen) == 6
        assert min(gaps(seen)) >= 0.25, gaps(seen)  # the default delay, before b's robots.txt was read
        after_robots = seen[[s.path for s in seen].index("/robots.txt") :]
        assert min(gaps(after_robots)) >= 0.5, gaps(after_robots)  # b's Request-rate from then on


def test_a_robots_txt_redirect_reaches_no_host_outside_allowed_hosts_or_the_allowed_networks(tmp_path):
    root = DataRoot(tmp_path)
    with Website(4) as web:
        a, b, outside, private = web.hosts
        a.add("/robots.txt", Reply(302, headers={"Location": outside.url("/robots.txt")}))
        b.add("/robots.txt", Reply(302, headers={"Location": private.url("/robots.txt")}))
        for host in web.hosts:
            host.page("/", '<img src="/x.jpg">')
            host.image("/x.jpg", jpeg(64, 64))
        config = scrape_config(
            web,
            [a.url("/"), b.url("/")],
            allowed_hosts=[a.address, b.address, private.address],
            allow_networks=[f"{h.address}/32" for h in (a, b, outside)],
        )

        report = crawl(config, root)

        assert outside.requests() == [] and private.requests() == []
        assert a.paths() == ["/robots.txt"] and b.paths() == ["/robots.txt"]
        pages = manifest_rows(root, "pages")
        assert (
            pages[a.url("/")]["status"] == "robots" and "not in allowed_hosts" in pages[a.url("/")]["error"]
        )
        assert pages[b.url("/")]["status"] == "robots" and "SSRF guard" in pages[b.url("/")]["error"]
        assert report.counts["hosts_given_up"] == 2


def test_back_to_back_crawls_keep_each_hosts_delay_and_a_pending_retry_after(tmp_path):
    root = DataRoot(tmp_path)
    with Website(2) as web:
        slow, busy = web.hosts
        slow.robots("User-agent: *\nCrawl-delay: 0.5\n")
        slow.page("/", '<img src="/a.jpg">')
        slow.image("/a.jpg", jpeg(64, 64, 1))
        busy.page("/", '<img src="/b.jpg">')
        busy.add("/b.jpg", Reply(503, b"busy", headers={"Retry-After": "1"}))
        config = scrape_config(web, [slow.url("/"), busy.url("/")], max_retries=0)
        crawl(config, root)
        first = {host.address: ordered(host) for host in web.hosts}

        crawl(config, root)  # a new crawler: it knows only what the manifest kept

        for host, wait in ((slow, 0.5), (busy, 1.0)):
            before = first[host.address]
            after = ordered(host)[len(before) :]
            assert after and after[0].start - before[-1].end >= wait, (host.address, before[-1].path)


def test_internationalised_host_names_match_allowed_hosts_in_either_spelling(tmp_path):
    with Website(1) as web:
        (a,) = web.hosts
        unicode, ascii_name = f"bücher.localhost:{a.port}", f"xn--bcher-kva.localhost:{a.port}"
        # One host, one key: the IDNA form, whichever spelling a page or the config uses.
        assert (
            normalize(f"http://{unicode}/x")
            == normalize(f"http://{ascii_name}/x")
            == f"http://{ascii_name}/x"
        )
        for spelling in ("bücher.localhost", "xn--bcher-kva.localhost", "*.localhost"):
            assert host_allowed(f"http://{unicode}/x", allowed_hosts([spelling], [])), spelling
        a.page(
            "/", f'<img src="http://{unicode}/u.jpg"><img src="http://{ascii_name}/p.jpg"><img src="/r.jpg">'
        )
        for i, path in enumerate(["/u.jpg", "/p.jpg", "/r.jpg"]):
            a.image(path, jpeg(64, 64, i))
        for run, (allowed, name) in enumerate(
            (
                (["bücher.localhost"], "xn--bcher-kva.localhost"),
                (["xn--bcher-kva.localhost"], "bücher.localhost"),
            )
        ):
            a.clear()
            root = DataRoot(tmp_path / str(run))
            # *.localhost need not resolve here: `resolve` pins the name to the test server's address.
            config = scrape_config(
                web, [f"http://{unicode}/"], allowed_hosts=allowed, resolve={name: a.address}
            )

            report = crawl(config, root)

            assert sorted(a.paths()) == ["/", "/p.jpg", "/r.jpg", "/robots.txt", "/u.jpg"]
            assert {s.headers["Host"] for s in a.requests()} == {ascii_name}
            assert report.counts["fetched"] == 3
            assert set(manifest_rows(root, "urls")) == {
                f"http://{ascii_name}{p}" for p in ("/u.jpg", "/p.jpg", "/r.jpg")
            }


def test_a_meta_refresh_is_followed_like_a_link_within_depth_and_robots(tmp_path):
    with Website(1) as web:
        (a,) = web.hosts
        a.robots("User-agent: *\nDisallow: /private\n")
        a.page("/", '<html><head><meta http-equiv="refresh" content="0; url=/gallery"></head></html>')
        a.page("/gallery", '<meta http-equiv="Refresh" content="5;URL=\'/too-deep\'"><img src="/x.jpg">')
        a.page("/old", "<meta http-equiv=refresh content=\"0; URL = '/private/page'\">")
        a.page("/too-deep", '<img src="/y.jpg">')
        a.page("/private/page", '<img src="/z.jpg">')
        for i, path in enumerate(["/x.jpg", "/y.jpg", "/z.jpg"]):
            a.image(path, jpeg(64, 64, i))

        report = crawl(scrape_config(web, [a.url("/"), a.url("/old")], max_depth=1), DataRoot(tmp_path))

        assert {"/gallery", "/x.jpg"} <= set(a.paths())
        assert not {"/too-deep", "/private/page", "/y.jpg", "/z.jpg"} & set(a.paths())
        assert report.counts["fetched"] == 1


def test_one_page_cannot_take_the_whole_image_budget(tmp_path):
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/big", "".join(f'<img src="/big-{i}.jpg">' for i in range(30)))
        a.page("/small", '<img src="/single.jpg">')
        for i in range(30):
            a.image(f"/big-{i}.jpg", jpeg(40, 40, i))
        a.image("/single.jpg", jpeg(40, 40, 99))
        config = scrape_config(web, [a.url("/big"), a.url("/small")], max_images=20, max_images_per_page=10)

        report = crawl(config, DataRoot(tmp_path))

        assert [p for p in a.paths() if p.startswith("/big-")] == [f"/big-{i}.jpg" for i in range(10)]
        assert "/single.jpg" in a.paths()
        assert report.counts["fetched"] == 11 and report.counts["over_page_limit"] == 20
        assert any("max_images_per_page 10" in note and "/big" in note for note in report.notes)


def test_broken_image_errors_say_what_is_wrong_without_python_object_reprs(tmp_path):
    root = DataRoot(tmp_path)
    junk = bytes(range(256)) * 4
    whole_png = png(64, 64, 1)
    broken = {
        "/junk.jpg": b"\xff\xd8\xff" + junk,
        "/junk.png": b"\x89PNG\r\n\x1a\n" + junk,
        "/junk.webp": b"RIFF\x00\x00\x00\x00WEBP" + junk,
        "/cut.png": whole_png[: len(whole_png) // 2],
        "/bad-crc.png": whole_png[:40] + b"\x00" + whole_png[41:],
    }
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", "".join(f'<img src="{p}">' for p in broken))
        for path, data in broken.items():
            a.image(path, data)

        crawl(scrape_config(web, [a.url("/")]), root)

    urls = manifest_rows(root, "urls")
    for path in broken:
        row = urls[a.url(path)]
        kind = {"jpg": "jpeg"}.get(path.rsplit(".", 1)[1], path.rsplit(".", 1)[1])
        assert row["status"] == "not_image" and row["error"].startswith(f"corrupt {kind}: "), row["error"]
        assert " at 0x" not in row["error"] and "<_io" not in row["error"], row["error"]
    assert "truncated" in urls[a.url("/cut.png")]["error"]


def test_a_crawl_cleans_up_what_a_killed_crawl_left_but_never_another_crawls_files(tmp_path):
    root = DataRoot(tmp_path)
    kept = jpeg(64, 64, 1)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/x.jpg">', delay=0.5)  # keeps the first crawl busy for a while
        a.image("/x.jpg", kept)
        config = scrape_config(web, [a.url("/")])
        errors: list[BaseException] = []

        def first_crawl() -> None:
            try:
                crawl(config, root)
            except BaseException as e:
                errors.append(e)

        running = threading.Thread(target=first_crawl)
        running.start()
        try:
            while not a.requests("/"):
                assert running.is_alive(), errors
                running.join(0.01)
            # What a write in progress looks like (a killed crawl leaves the same): a full-size copy.
            sha = "ab" * 32
            leftover = root.raw_dir / "ab" / f".{sha}.jpg.x1y2z3.tmp"
            leftover.parent.mkdir(parents=True, exist_ok=True)
            leftover.write_bytes(kept)

            with pytest.raises(BadInputError, match="another crawl"):
                crawl(config, root)  # the same data root while the first crawl runs

            assert leftover.exists()  # nothing deleted that the running crawl may still be writing
        finally:
            running.join()
        assert not errors and leftover.exists() and [s.path for s in a.requests()].count("/") == 1

        crawl(config, root)

    assert not leftover.exists()
    stored = [p.name for p in root.raw_dir.glob("*/*")]
    assert stored == [f"{sha256_bytes(kept)}.jpg"]


def test_json_ld_nested_deeper_than_python_parses_is_skipped_and_every_crawl_finishes(tmp_path):
    root = DataRoot(tmp_path)
    blocks = [
        "[" * 5000 + "]" * 5000,
        '{"a":' * 5000 + "1" + "}" * 5000,
        '{"license": "https://lic.example/"}',
    ]
    with Website(1) as web:
        (a,) = web.hosts
        scripts = "".join(f'<script type="application/ld+json">{b}</script>' for b in blocks)
        a.page("/", scripts + '<img src="/a.jpg"><a href="/next">next</a>')
        a.page("/next", "<p>more</p>")
        a.image("/a.jpg", jpeg(64, 64, 1))
        config = scrape_config(web, [a.url("/")])

        first, second = crawl(config, root), crawl(config, root)  # a crash here broke every resume too

        assert a.paths().count("/next") == 2 and a.paths().count("/a.jpg") == 2
    assert (first.counts["fetched"], second.counts["not_modified"]) == (1, 1)
    assert manifest_rows(root, "urls")[a.url("/a.jpg")]["licence"] == "https://lic.example/"  # the good block
    assert all(row["finished_at"] for row in manifest_rows(root, "crawls", "id").values())


class TooMuchWork(Exception):
    pass


def python_calls(work, budget: int) -> int:
    """The Python function calls `work()` makes: a measure of work no clock or machine load skews.
    Past `budget` calls it is stopped with TooMuchWork."""
    calls = 0

    def count(frame, event, arg) -> None:
        nonlocal calls
        if event == "call":
            calls += 1
            if calls > budget:
                raise TooMuchWork(f"over {budget} calls")

    sys.setprofile(count)
    try:
        work()
    finally:
        sys.setprofile(None)
    return calls


def test_a_page_of_nested_unclosed_tags_is_extracted_with_linear_work_and_crawled(tmp_path):
    # Each element inside the one before: bs4's find/find_parent/get_text per element were quadratic.
    unit = '<a href="/p{i}"><figure><figcaption>c{i}<picture><source srcset="/s{i}.avif" type="image/avif">'
    page = "".join(unit.format(i=i) for i in range(2500)) + '<b><img src="/photo.jpg" alt="deep">'
    assert len(page) > 200_000
    parse = python_calls(lambda: BeautifulSoup(page, "html.parser"), 10**8)  # linear in the page
    # Quadratic extraction makes over 50 times the parse's calls on this page; linear, about 5 times.
    python_calls(lambda: extract(page, "http://127.0.0.2/"), 10 * parse)
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", page)
        a.image("/photo.jpg", jpeg(64, 64, 1))

        report = crawl(scrape_config(web, [a.url("/")], max_depth=0), root)

        assert a.paths() == ["/robots.txt", "/", "/photo.jpg"]
    assert report.counts["pages"] == 1 and report.counts["fetched"] == 1
    row = manifest_rows(root, "urls")[a.url("/photo.jpg")]
    assert (row["alt"], row["caption"]) == ("deep", "c2499")  # its own figure's caption


def test_a_bug_that_one_page_sets_off_is_recorded_and_the_crawl_goes_on(tmp_path, monkeypatch, caplog):
    # Fault injection: extraction fails on one page, as five parser bugs an audit found once made it
    # (RecursionError, ValueError, UnicodeError): each stopped the crawl, and every resume after it.
    from scraper import page_handler

    def extract_with_a_bug(html, url, **kwargs):
        if url.endswith("/bad"):
            raise RecursionError("maximum recursion depth exceeded")
        return extract(html, url, **kwargs)

    monkeypatch.setattr(page_handler, "extract", extract_with_a_bug)
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (site,) = web.hosts
        site.page("/", '<a href="/bad">b</a><a href="/good">g</a>')
        site.page("/bad", '<img src="/never.jpg">')
        site.page("/good", '<img src="/face.jpg">')
        site.image("/face.jpg", jpeg(64, 64, 1))

        report = crawl(scrape_config(web, [site.url("/")]), root)

        assert "/never.jpg" not in site.paths()
    pages = manifest_rows(root, "pages")
    bad = pages[site.url("/bad")]
    assert bad["status"] == "failed" and bad["error"].startswith(
        "internal error, please report it: Recursion"
    )
    assert manifest_rows(root, "urls")[site.url("/face.jpg")]["status"] == "fetched"
    assert report.counts["fetched"] == 1 and report.counts["pages_failed"] == 1
    (logged,) = [r for r in caplog.records if r.name == "scraper.crawl" and r.levelname == "ERROR"]
    assert (
        site.url("/bad") not in logged.getMessage() and logged.exc_info is not None
    )  # a traceback to report
