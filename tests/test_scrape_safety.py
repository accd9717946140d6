"""Safety: fakes, bombs, caps, timeouts, the SSRF guard on every hop, redirects, crawl traps."""

import gzip
import io

import pytest
import requests
from PIL import Image

from common.layout import DataRoot
from scraper.crawl import crawl
from scraper.downloader import AddressGuard, AddressRefused, Downloader, FetchError
from tests.website import Reply, Website, jpeg, manifest_rows, png_bomb, scrape_config, webp

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def gif(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "GIF")
    return out.getvalue()


def status_of(root: DataRoot, host, path: str) -> tuple[str, str | None]:
    row = manifest_rows(root, "urls")[host.url(path)]
    return row["status"], row["error"]


def test_fakes_bombs_oversized_and_tiny_files_are_rejected_and_only_real_images_stored(tmp_path):
    root = DataRoot(tmp_path)
    photo = jpeg(400, 300, 5)
    with Website(1) as web:
        (a,) = web.hosts
        files = {
            "/ok.jpg": Reply(body=photo, content_type="image/jpeg"),
            "/ok.webp": Reply(body=webp(120, 90, 6), content_type="image/webp"),
            "/html.jpg": Reply(body=b"<!DOCTYPE html><html>login</html>", content_type="image/jpeg"),
            "/vector.png": Reply(body=SVG, content_type="image/png"),
            "/bomb.png": Reply(body=png_bomb(), content_type="image/png"),
            "/big.jpg": Reply(body=jpeg(900, 700, 7), content_type="image/jpeg"),
            "/stream.jpg": Reply(body=jpeg(900, 700, 8), content_type="image/jpeg", chunked=True),
            "/tiny.jpg": Reply(body=jpeg(20, 20, 9), content_type="image/jpeg"),
            "/anim.gif": Reply(body=gif(100, 100), content_type="image/gif"),
            "/cut.jpg": Reply(body=photo[: len(photo) // 2], content_type="image/jpeg"),
        }
        for path, reply in files.items():
            a.add(path, reply)
        a.page("/", "".join(f'<img src="{p}">' for p in files))
        config = scrape_config(
            web, [a.url("/")], max_bytes=100_000, allowed_types=["jpeg", "png", "webp"], min_width=32
        )

        report = crawl(config, root)

        expected = {
            "/ok.jpg": ("fetched", None),
            "/ok.webp": ("fetched", None),
            "/html.jpg": ("not_image", "HTML"),
            "/vector.png": ("not_image", "SVG"),
            "/bomb.png": ("not_image", "refused before decoding"),
            "/big.jpg": ("failed", "Content-Length"),
            "/stream.jpg": ("failed", "byte limit"),
            "/tiny.jpg": ("too_small", "20x20"),
            "/anim.gif": ("not_image", "gif is not in allowed_types"),
            "/cut.jpg": ("not_image", "corrupt jpeg"),
        }
        for path, (status, words) in expected.items():
            got_status, error = status_of(root, a, path)
            assert got_status == status, (path, got_status, error)
            assert words is None or words in error, (path, error)
        assert report.counts["not_image"] == 5 and report.counts["fetched"] == 2
        stored = sorted(p.name for p in root.raw_dir.glob("*/*"))
        shas = manifest_rows(root, "files", "sha256")
        assert stored == sorted(f"{row['sha256']}.{row['path'].rsplit('.', 1)[1]}" for row in shas.values())
        assert len(stored) == 2 and all(
            row["path"].startswith(f"raw/{sha[:2]}/{sha}") for sha, row in shas.items()
        )


def test_slow_servers_hit_the_read_and_total_timeouts(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/stalls.jpg"><img src="/drips.jpg"><img src="/ok.jpg">')
        a.image("/stalls.jpg", jpeg(64, 64, 1), delay=1.0)  # no answer within the read timeout
        a.image("/drips.jpg", jpeg(300, 300, 2), drip=0.05)  # 1 KiB every 50 ms: never idle, never done
        a.image("/ok.jpg", jpeg(64, 64, 3))
        config = scrape_config(web, [a.url("/")], timeout=0.3, total_timeout=0.6, max_retries=0)

        crawl(config, root)

        assert status_of(root, a, "/stalls.jpg")[0] == "failed"
        assert "timed out" in status_of(root, a, "/stalls.jpg")[1]
        assert status_of(root, a, "/drips.jpg") == ("failed", "download took over 0.6 s; stopped")
        assert status_of(root, a, "/ok.jpg")[0] == "fetched"


def test_ssrf_guard_refuses_loopback_unless_allowed_and_the_server_sees_nothing(tmp_path):
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/x.jpg">')
        a.image("/x.jpg", jpeg(64, 64))

        report = crawl(scrape_config(web, [a.url("/")], allow_networks=[]), DataRoot(tmp_path))

        assert a.requests() == []
        assert report.counts["hosts_given_up"] == 1
        note = next(n for n in report.notes if "given up" in n)
        assert "127.0.0.2 is a loopback address" in note and "allow_networks" in note
        page = manifest_rows(DataRoot(tmp_path), "pages")[a.url("/")]
        assert page["status"] == "failed" and "SSRF guard" in page["error"]


def test_ssrf_guard_names_every_private_range_and_checks_the_connected_socket():
    guard = AddressGuard([])
    kinds = {
        "10.1.2.3": "private",
        "192.168.0.1": "private",
        "169.254.169.254": "link-local",
        "100.64.0.1": "carrier-grade NAT",
        "fd00::1": "IPv6 unique local",
        "::ffff:10.0.0.1": "private",
        "127.0.0.1": "loopback",
        "::1": "loopback",
        "0.0.0.0": "unspecified",
        "224.0.0.1": "multicast",
    }
    for ip, kind in kinds.items():
        assert kind in (guard.check_ip(ip) or ""), ip
    assert guard.check_ip("93.184.216.34") is None and guard.check_ip("2606:4700::1111") is None
    assert AddressGuard(["10.0.0.0/8"]).check_ip("10.1.2.3") is None
    assert "loopback" in guard.check_url("http://localhost:9/")  # names are resolved first

    # Even when the name check is skipped (DNS rebinding), the socket's peer address is checked.
    with Website(1) as web:
        (a,) = web.hosts
        a.image("/x.jpg", jpeg(64, 64))
        downloader = Downloader("t (+http://x)", guard, timeout=2, total_timeout=5)
        with pytest.raises(AddressRefused, match="loopback"):
            downloader.session.get(a.url("/x.jpg"), timeout=2)
        assert a.requests() == []
        allowed = Downloader("t (+http://x)", AddressGuard(["127.0.0.2/32"]), timeout=2, total_timeout=5)
        assert allowed.session.get(a.url("/x.jpg"), timeout=2).status_code == 200
        with pytest.raises(requests.ConnectionError):  # nothing listens there, but it is not refused
            allowed.session.get("http://127.0.0.2:9/", timeout=2)


def test_every_redirect_hop_is_checked_against_hosts_networks_robots_and_a_hop_limit(tmp_path):
    root = DataRoot(tmp_path)
    with Website(2) as web:
        a, b = web.hosts
        a.robots("User-agent: *\nDisallow: /private\n")
        hops = {
            "/to-other-network.jpg": b.url("/x.jpg"),  # b's network is not allowed
            "/to-other-site.jpg": "http://203.0.113.9/x.jpg",  # not an allowed host
            "/to-private.jpg": "/private/p.jpg",  # disallowed by robots.txt
            "/to-ftp.jpg": "ftp://127.0.0.2/x.jpg",
            "/moved.jpg": "/final.jpg",
            "/loop0.jpg": "/loop1.jpg",
        }
        hops |= {f"/loop{i}.jpg": f"/loop{i + 1}.jpg" for i in range(1, 8)}
        for path, target in hops.items():
            a.add(path, Reply(302, headers={"Location": target}))
        a.image("/final.jpg", jpeg(64, 64, 1))
        a.image("/private/p.jpg", jpeg(64, 64, 2))
        b.image("/x.jpg", jpeg(64, 64, 3))
        starts = [
            "/to-other-network.jpg",
            "/to-other-site.jpg",
            "/to-private.jpg",
            "/to-ftp.jpg",
            "/moved.jpg",
        ]
        a.page("/", "".join(f'<img src="{p}">' for p in [*starts, "/loop0.jpg"]))
        config = scrape_config(web, [a.url("/")], allow_networks=["127.0.0.2/32"])

        report = crawl(config, root)

        assert b.requests() == [] and "/private/p.jpg" not in a.paths()
        urls = manifest_rows(root, "urls")
        assert urls[a.url("/final.jpg")]["status"] == "fetched"  # the row is the URL that served it
        assert urls[b.url("/x.jpg")]["status"] == "failed" and "SSRF" in urls[b.url("/x.jpg")]["error"]
        assert "not in allowed_hosts" in urls[a.url("/to-other-site.jpg")]["error"]
        assert urls[a.url("/to-private.jpg")]["status"] == "robots"
        assert "redirected to" in urls[a.url("/to-private.jpg")]["error"]
        assert "non-http(s)" in urls[a.url("/to-ftp.jpg")]["error"]
        assert "more than 5 redirects" in urls[a.url("/loop5.jpg")]["error"]
        assert [p for p in a.paths() if p.startswith("/loop")] == [f"/loop{i}.jpg" for i in range(6)]
        assert report.counts["fetched"] == 1


def test_crawl_traps_depth_and_page_limits_stop_the_crawl(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        long_link = "/" + "x" * 2100
        a.page("/", f'<a href="{long_link}">long</a><a href="/a/a/a/a/">loop</a><a href="/d1">deeper</a>')
        a.page("/a/a/a/a/", "never")
        a.page(long_link, "never")
        for i in range(1, 5):  # each calendar page links the next, forever
            a.page(f"/d{i}", f'<a href="/d{i + 1}">next</a><img src="/i{i}.jpg">')
            a.image(f"/i{i}.jpg", jpeg(64, 64, i))

        report = crawl(scrape_config(web, [a.url("/")], max_depth=2), root)
        assert set(a.paths()) == {"/robots.txt", "/", "/d1", "/d2", "/i1.jpg", "/i2.jpg"}
        assert report.counts["pages"] == 3

        a.clear()
        report = crawl(scrape_config(web, [a.url("/")], max_depth=10, max_pages=3, max_images=1), root)
        assert [p for p in a.paths() if p.startswith("/d")] == ["/d1", "/d2"]
        assert [p for p in a.paths() if p.startswith("/i")] == ["/i1.jpg"]
        assert any("max_pages 3" in n for n in report.notes)


def test_malformed_ipv6_urls_are_ignored_in_pages_and_a_failed_redirect(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page(
            "/",
            '<a href="http://[oops/">bad</a><a href="/based">based</a><img src="/redirect.jpg">'
            '<img srcset="http://[x/big.jpg 2x, /small.jpg 1x">',  # the largest usable candidate
        )
        a.page("/based", '<base href="http://[x/"><img src="b.jpg">')  # the page's own URL instead
        a.add("/redirect.jpg", Reply(302, headers={"Location": "http://[::1/x.jpg"}))
        a.image("/small.jpg", jpeg(64, 64, 1))
        a.image("/b.jpg", jpeg(64, 64, 2))

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert {"/small.jpg", "/b.jpg"} <= set(a.paths()) and report.counts["fetched"] == 2
    status, error = status_of(root, a, "/redirect.jpg")
    assert status == "failed" and "invalid or non-http(s) URL 'http://[::1/x.jpg'" in error


def test_a_redirect_location_that_is_not_utf8_fails_that_url_and_nothing_else(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/latin1.jpg"><img src="/utf8.jpg"><img src="/ok.jpg">')
        a.add("/latin1.jpg", Reply(302, headers={"Location": "/caf\u00e9.jpg"}))  # the byte e9
        utf8 = "/caf\u00e9.jpg".encode().decode("latin-1")  # the bytes c3 a9 on the wire
        a.add("/utf8.jpg", Reply(302, headers={"Location": utf8}))
        a.image("/caf%C3%A9.jpg", jpeg(64, 64, 1))
        a.image("/ok.jpg", jpeg(64, 64, 2))

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert a.paths().count("/latin1.jpg") == 1  # not retried: it would say the same again
    assert status_of(root, a, "/latin1.jpg") == ("failed", "redirect Location is not UTF-8: '/café.jpg'")
    assert status_of(root, a, "/caf%C3%A9.jpg")[0] == "fetched"  # UTF-8 read as browsers do
    assert report.counts["fetched"] == 2 and report.counts["failed"] == 1


def test_host_names_with_an_empty_or_overlong_label_are_invalid_urls_not_a_crash(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        long = "x" * 64
        a.page(
            "/",
            f'<a href="http://x..bad.localhost/">empty label</a><img src="http://{long}.bad.localhost/i.jpg">'
            '<img src="/to-bad.jpg"><img src="/ok.jpg">',
        )
        a.add("/to-bad.jpg", Reply(302, headers={"Location": "http://y..bad.localhost/i.jpg"}))
        a.image("/ok.jpg", jpeg(64, 64, 1))
        config = scrape_config(web, [a.url("/")], allowed_hosts=[a.address, "*.bad.localhost"])

        report = crawl(config, root)

        assert report.counts["fetched"] == 1 and "hosts_given_up" not in report.counts
    assert set(manifest_rows(root, "urls")) == {a.url("/ok.jpg"), a.url("/to-bad.jpg")}
    assert "invalid or non-http(s) URL" in status_of(root, a, "/to-bad.jpg")[1]
    for name in ("x..bad.localhost", f"{long}.bad.localhost"):  # the guard's own check: no DNS query
        with pytest.raises(FetchError, match="invalid host name"):
            AddressGuard([]).check_url(f"http://{name}/")


def test_a_redirect_loop_across_two_hosts_and_an_image_redirected_to_a_page_are_recorded(tmp_path):
    root = DataRoot(tmp_path)
    with Website(2) as web:
        a, b = web.hosts
        a.page("/", f'<img src="/loop.jpg"><img src="/to-page.jpg"><a href="{b.url("/gallery")}">g</a>')
        a.add("/loop.jpg", Reply(302, headers={"Location": b.url("/y.jpg")}))
        b.add("/y.jpg", Reply(302, headers={"Location": a.url("/loop.jpg")}))
        a.add("/to-page.jpg", Reply(302, headers={"Location": b.url("/gallery")}))
        b.page("/gallery", "<p>a page</p>")

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert a.paths().count("/loop.jpg") == 1 and b.paths().count("/y.jpg") == 1
    urls = manifest_rows(root, "urls")
    assert urls[b.url("/y.jpg")]["status"] == "failed" and "redirect loop" in urls[b.url("/y.jpg")]["error"]
    to_page = urls[a.url("/to-page.jpg")]
    assert to_page["status"] == "failed" and f"redirected to {b.url('/gallery')}" in to_page["error"]
    assert report.counts["failed"] == 2 and report.counts["pages"] == 2


def test_ipv6_addresses_that_carry_an_ipv4_address_are_judged_by_it_too():
    guard = AddressGuard([])
    carried = {
        "::127.0.0.1": "loopback",  # IPv4-compatible
        "::10.0.0.1": "private",
        "2002:7f00:1::1": "loopback",  # 6to4
        "2002:a9fe:a9fe::1": "link-local",
        "64:ff9b::10.1.2.3": "private",  # NAT64
        "64:ff9b::127.0.0.1": "loopback",
        "64:ff9b:1::a00:1": "private",  # local-use NAT64 prefix
        "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    }
    for ip, kind in carried.items():
        assert kind in (guard.check_ip(ip) or "-"), (ip, guard.check_ip(ip))
    assert guard.check_ip("64:ff9b::8.8.8.8") is None and guard.check_ip("2606:4700::1111") is None


def test_a_content_encoding_chain_too_long_to_decode_fails_that_url_and_not_the_host(tmp_path):
    root = DataRoot(tmp_path)
    body = jpeg(64, 64, 1)
    for _ in range(6):  # urllib3 decodes at most 5 encodings
        body = gzip.compress(body)
    with Website(1) as web:
        (a,) = web.hosts
        a.page("/", '<img src="/chain.jpg"><img src="/ok.jpg">')
        a.image("/chain.jpg", body, headers={"Content-Encoding": ", ".join(["gzip"] * 6)})
        a.image("/ok.jpg", jpeg(64, 64, 2))
        config = scrape_config(web, [a.url("/")], max_retries=2, max_host_failures=2)

        report = crawl(config, root)

        assert a.paths().count("/chain.jpg") == 1  # a permanent failure: not tried again
    status, error = status_of(root, a, "/chain.jpg")
    assert status == "failed" and "cannot decode the body" in error and "Too many content encodings" in error
    assert report.counts["fetched"] == 1 and "hosts_given_up" not in report.counts
