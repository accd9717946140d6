"""Politeness as the servers see it: robots.txt, delays, parallel hosts, Retry-After, backoff, opt-outs."""

import codecs
import time
from email.utils import formatdate

from common.layout import DataRoot
from scraper.crawl import crawl
from tests.website import Reply, Website, jpeg, manifest_rows, scrape_config


def gaps(host) -> list[float]:
    """Time between the end of each request and the start of the next, as the server saw them."""
    seen = sorted(host.requests(), key=lambda s: s.start)
    return [b.start - a.end for a, b in zip(seen, seen[1:], strict=False)]


def gallery(host, n: int, seed: int = 0, prefix: str = "/img") -> None:
    """A page "/" with n distinct images on the same host."""
    imgs = "".join(f'<img src="{prefix}{i}.jpg" alt="photo {i}">' for i in range(n))
    host.page("/", f"<html><body>{imgs}</body></html>")
    for i in range(n):
        host.image(f"{prefix}{i}.jpg", jpeg(96, 80, seed * 100 + i))


def test_robots_disallowed_urls_are_never_requested_and_robots_txt_is_cached(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        # Everyone else is shut out; our group (by product token) only loses /private, except one file.
        a.robots(
            "User-agent: *\nDisallow: /\n\n"
            "User-agent: faces-test\nDisallow: /private\nAllow: /private/ok.jpg\n"
        )
        a.page(
            "/",
            '<a href="/more">more</a><a href="/private/page">secret</a>'
            '<img src="/private/x.jpg"><img src="/private/ok.jpg"><img src="/pub.jpg">',
        )
        a.page("/more", '<img src="/pub2.jpg">')
        for i, path in enumerate(["/private/x.jpg", "/private/ok.jpg", "/pub.jpg", "/pub2.jpg"]):
            a.image(path, jpeg(64, 64, i))

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert "/private/page" not in a.paths() and "/private/x.jpg" not in a.paths()
        assert a.paths().count("/robots.txt") == 1 and a.paths()[0] == "/robots.txt"
        assert {"/private/ok.jpg", "/pub.jpg", "/pub2.jpg"} <= set(a.paths())
        urls = manifest_rows(root, "urls")
        assert urls[a.url("/private/x.jpg")]["status"] == "robots"
        assert manifest_rows(root, "pages")[a.url("/private/page")]["status"] == "robots"
        assert report.counts["robots"] == 2 and report.counts["fetched"] == 3

        a.clear()  # a second crawl within 24 h: robots.txt comes from the cache
        crawl(scrape_config(web, [a.url("/")]), root)
        assert "/robots.txt" not in a.paths() and "/" in a.paths()


def test_robots_status_codes_redirects_encodings_and_size_cap(tmp_path):
    root = DataRoot(tmp_path)
    with Website(4) as web:
        missing, broken, moved, huge = web.hosts
        for i, host in enumerate(web.hosts):
            host.page("/", '<img src="/a.jpg"><img src="/b.jpg">')
            host.image("/a.jpg", jpeg(64, 64, 10 * i))
            host.image("/b.jpg", jpeg(64, 64, 10 * i + 1))
        # 404: everything allowed. 503: nothing allowed, the host is left alone.
        broken.robots("oops", status=503)
        # A redirect to a UTF-8 file with a BOM and CRLF line ends, with a Latin-1 comment in it.
        moved.add("/robots.txt", Reply(301, headers={"Location": "/real-robots.txt"}))
        body = codecs.BOM_UTF8 + "# caf\u00e9\r\nUser-agent: *\r\nDisallow: /a.jpg\r\n".encode()
        moved.add("/real-robots.txt", Reply(body=body, content_type="text/plain"))
        # Over 500 KiB: rules after the cap are not read.
        padding = "# " + "x" * 1000 + "\n"
        huge.robots("User-agent: *\nDisallow: /a.jpg\n" + padding * 520 + "Disallow: /b.jpg\n")

        report = crawl(scrape_config(web, [h.url("/") for h in web.hosts], max_retries=1), root)

        assert set(missing.paths()) == {"/robots.txt", "/", "/a.jpg", "/b.jpg"}
        assert set(broken.paths()) == {"/robots.txt"}  # retried, then nothing else
        assert any("RFC 9309 says disallow all" in n and broken.netloc in n for n in report.notes)
        assert "/a.jpg" not in moved.paths() and "/b.jpg" in moved.paths()
        assert "/real-robots.txt" in moved.paths()
        assert "/a.jpg" not in huge.paths() and "/b.jpg" in huge.paths()
        assert manifest_rows(root, "pages")[broken.url("/")]["status"] == "robots"

        # Once robots.txt answers again, the next crawl visits the host.
        broken.robots("User-agent: *\nDisallow:\n")
        crawl(scrape_config(web, [broken.url("/")]), root)
        assert {"/a.jpg", "/b.jpg"} <= set(broken.paths())


def test_delays_are_kept_per_host_with_one_connection_while_hosts_run_in_parallel(tmp_path):
    root = DataRoot(tmp_path)
    with Website(3) as web:
        delayed, rated, default = web.hosts
        delayed.robots("User-agent: *\nCrawl-delay: 0.2\n")
        rated.robots("User-agent: faces-test\nRequest-rate: 5/1s\n")  # 0.2 s per request
        for i, host in enumerate(web.hosts):
            gallery(host, 4, seed=i)
        config = scrape_config(web, [h.url("/") for h in web.hosts], default_delay=0.15, delay_jitter=0.5)

        report = crawl(config, root)

        assert report.counts["fetched"] == 12
        for host, delay in ((delayed, 0.2), (rated, 0.2), (default, 0.15)):
            assert len(host.requests()) == 6  # robots.txt, the page, four images
            assert min(gaps(host)) >= delay, (host.netloc, gaps(host))
            assert len({s.client_port for s in host.requests()}) == 1  # one keep-alive connection
        # In parallel: every host's crawl overlaps the others' in time.
        spans = [(min(s.start for s in h.requests()), max(s.end for s in h.requests())) for h in web.hosts]
        assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_retry_after_pauses_the_host_in_seconds_and_as_a_date(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/busy.jpg"><img src="/down.jpg"><img src="/fine.jpg">')
        answers = {"/busy.jpg": [], "/down.jpg": []}
        retry_at: list[float] = []

        def busy(seen) -> Reply:
            answers["/busy.jpg"].append(seen)
            if len(answers["/busy.jpg"]) == 1:
                return Reply(429, headers={"Retry-After": "1"})
            return Reply(body=jpeg(64, 64, 1), content_type="image/jpeg")

        def down(seen) -> Reply:
            answers["/down.jpg"].append(seen)
            if len(answers["/down.jpg"]) == 1:
                retry_at.append(int(time.time()) + 2.0)  # HTTP dates count whole seconds
                return Reply(503, headers={"Retry-After": formatdate(retry_at[0], usegmt=True)})
            return Reply(body=jpeg(64, 64, 2), content_type="image/jpeg")

        a.add("/busy.jpg", busy)
        a.add("/down.jpg", down)
        a.image("/fine.jpg", jpeg(64, 64, 3))

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert report.counts["fetched"] == 3
        seen = sorted(a.requests(), key=lambda s: s.start)
        after_429 = seen[seen.index(answers["/busy.jpg"][0]) + 1]
        after_503 = seen[seen.index(answers["/down.jpg"][0]) + 1]
        # The whole host waits: the next request, whatever its URL, comes after the pause.
        assert after_429.start - answers["/busy.jpg"][0].end >= 1.0
        assert after_503.wall >= retry_at[0] - 0.01


def test_failing_host_backs_off_then_is_given_up_while_the_rest_goes_on(tmp_path):
    root = DataRoot(tmp_path)
    with Website(2) as web:
        failing, healthy = web.hosts
        failing.page("/", "".join(f'<img src="/e{i}.jpg">' for i in range(5)))
        for i in range(5):
            failing.add(f"/e{i}.jpg", Reply(500, b"boom"))
        gallery(healthy, 3, seed=7)
        config = scrape_config(
            web, [failing.url("/"), healthy.url("/")], max_retries=1, max_host_failures=3, backoff=0.1
        )

        report = crawl(config, root)

        image_requests = [s for s in failing.requests() if s.path.startswith("/e")]
        assert len(image_requests) == 3  # two tries of the first image, one of the second
        first, second, third = image_requests
        assert second.start - first.end >= 0.1 and third.start - second.end >= 0.2  # exponential
        assert report.counts["hosts_given_up"] == 1 and report.counts["fetched"] == 3
        assert any(failing.netloc in n and "3 failures in a row" in n for n in report.notes)
        urls = manifest_rows(root, "urls")
        failed = [u for u in urls.values() if u["host"] == failing.netloc]
        assert len(failed) == 5 and all(u["status"] == "failed" and u["error"] for u in failed)


def test_opt_outs_in_headers_and_meta_tags_are_honoured_and_recorded(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page(
            "/",
            '<a href="/noimageai">1</a><a href="/none">2</a><a href="/header">3</a>'
            '<img src="/ok.jpg"><img src="/tagged.jpg"><img src="/otherbot.jpg">',
        )
        a.page("/noimageai", '<meta name="robots" content="noimageai"><img src="/s1.jpg"><a href="/deeper">')
        a.page("/deeper", '<img src="/d.jpg">')
        a.page("/none", '<meta name="faces-test" content="none"><img src="/s2.jpg"><a href="/hidden">')
        a.page("/hidden", '<img src="/h.jpg">')
        a.page("/header", '<img src="/s3.jpg">', headers={"X-Robots-Tag": "noindex"})
        for i, path in enumerate(["/ok.jpg", "/s1.jpg", "/d.jpg", "/s2.jpg", "/h.jpg", "/s3.jpg"]):
            a.image(path, jpeg(64, 64, i))
        a.image("/tagged.jpg", jpeg(64, 64, 20), headers={"X-Robots-Tag": "noai, noimageai"})
        a.image("/otherbot.jpg", jpeg(64, 64, 21), headers={"X-Robots-Tag": "otherbot: noai"})

        report = crawl(scrape_config(web, [a.url("/")]), root)

        paths = set(a.paths())
        assert not {"/s1.jpg", "/s2.jpg", "/s3.jpg", "/hidden", "/h.jpg"} & paths  # spared
        assert {"/ok.jpg", "/deeper", "/d.jpg", "/otherbot.jpg", "/tagged.jpg"} <= paths  # noindex follows
        urls = manifest_rows(root, "urls")
        opt_outs = {u.rsplit("/", 1)[1]: r["opt_out"] for u, r in urls.items() if r["opt_out"]}
        assert opt_outs == {
            "s1.jpg": "noimageai",
            "s2.jpg": "none",
            "s3.jpg": "noindex",
            "tagged.jpg": "noai",
        }
        assert urls[a.url("/otherbot.jpg")]["status"] == "fetched"
        assert urls[a.url("/tagged.jpg")]["sha256"] is None
        assert len(manifest_rows(root, "files", "sha256")) == 3
        assert report.counts["opted_out"] == 4


def test_more_connections_per_host_only_when_configured(tmp_path):
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", "".join(f'<img src="/{i}.jpg">' for i in range(6)))
        for i in range(6):
            a.image(f"/{i}.jpg", jpeg(64, 64, i), delay=0.15)  # a slow server: requests would pile up

        crawl(scrape_config(web, [a.url("/")], connections_per_host=2), DataRoot(tmp_path))

    images = [s for s in a.requests() if s.path.endswith(".jpg")]
    in_flight = [sum(o.start <= s.start < o.end for o in images) for s in images]
    assert max(in_flight) == 2 and len({s.client_port for s in images}) == 2


def test_x_robots_tag_nofollow_is_obeyed_like_the_meta_tag(tmp_path):
    values = {
        "/plain": "nofollow",
        "/list": "noarchive, nofollow",
        "/spaces": "noarchive nofollow",
        "/ours": "faces-test: nofollow",
        "/theirs": "otherbot: nofollow",  # another bot's: links followed
    }
    with Website(1) as web:
        (a,) = web.hosts
        for i, (path, value) in enumerate(values.items()):
            a.page(
                path, f'<a href="{path}/next">n</a><img src="{path}.jpg">', headers={"X-Robots-Tag": value}
            )
            a.page(f"{path}/next", "<p>next</p>")
            a.image(f"{path}.jpg", jpeg(64, 64, i))

        report = crawl(scrape_config(web, [a.url(p) for p in values]), DataRoot(tmp_path))

        assert [p for p in a.paths() if p.endswith("/next")] == ["/theirs/next"]
        assert report.counts["fetched"] == 5  # nofollow spares the links, not the images
