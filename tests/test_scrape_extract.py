"""Extraction: which image a page really offers, with its alt text, caption and licence."""

import codecs

from common.layout import DataRoot
from scraper.crawl import crawl
from scraper.extract import extract, largest, parse_srcset
from scraper.politeness import retry_after_seconds
from scraper.robots import decode_robots, header_opt_out
from scraper.urls import normalize
from tests.website import Reply, Website, jpeg, manifest_rows, scrape_config, webp

PAGE = "https://gallery.example/people/index.html"


def images(html: str, **options) -> dict[str, dict]:
    return {c.url: c.to_dict() for c in extract(html, PAGE, **options).images}


def test_srcset_is_parsed_as_the_html_standard_says_and_the_largest_wins():
    assert parse_srcset("a.jpg 100w, b.jpg 400w,c.jpg 200w") == [
        ("a.jpg", 100, "w"),
        ("b.jpg", 400, "w"),
        ("c.jpg", 200, "w"),
    ]
    # Commas inside URLs belong to them; a trailing comma ends a URL without descriptors.
    crops = "/img/f_auto,q_80,w_300/a.jpg 300w, /img/f_auto,q_80,w_900/a.jpg 900w"
    assert largest(parse_srcset(crops)) == "/img/f_auto,q_80,w_900/a.jpg"
    assert parse_srcset("x.jpg, y.jpg 2x") == [("x.jpg", 1.0, "x"), ("y.jpg", 2.0, "x")]
    assert largest(parse_srcset("s.jpg 1x, m.jpg 1.5x, l.jpg 2x")) == "l.jpg"
    # Invalid candidates are dropped, as browsers drop them.
    assert parse_srcset("bad.jpg 100w 2x, neg.jpg -1w, ok.jpg 50w") == [("ok.jpg", 50, "w")]
    assert parse_srcset("") == [] and largest([]) is None


def test_every_kind_of_image_reference_is_found_resolved_and_deduplicated():
    html = """
    <html><head>
      <base href="https://cdn.example/media/">
      <meta property="og:image" content="https://cdn.example/og/cover.jpg">
      <meta property="og:image:alt" content="The cover">
    </head><body>
      <img src="plain.jpg" alt="  A   plain
         photo ">
      <img src="small.jpg" srcset="small.jpg 320w, large,version=2.jpg 1280w, medium.jpg 640w">
      <picture>
        <source type="image/avif" srcset="huge.avif 4000w">
        <source type="image/webp" srcset="pic-800.webp 800w, pic-1600.webp 1600w">
        <img src="pic-400.jpg" alt="In a picture">
      </picture>
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="lazy-real.jpg">
      <img src="/static/placeholder.gif" data-lazy-src="lazy2.jpg" data-srcset="lazy2-2x.jpg 2x">
      <img class="lazyload" data-original="lazy3.jpg">
      <a href="full/original.jpg"><img src="thumbs/original-thumb.jpg" alt="thumbnail of the original"></a>
      <a href="loose.png">A full-size picture</a>
      <img src="plain.jpg" alt="the same again">
      <img src="javascript:alert(1)"><img src="ftp://cdn.example/x.jpg"><img src="mailto:x@y">
    </body></html>
    """
    found = images(html)
    assert set(found) == {
        "https://cdn.example/og/cover.jpg",
        "https://cdn.example/media/plain.jpg",
        "https://cdn.example/media/large,version=2.jpg",
        "https://cdn.example/media/pic-1600.webp",
        "https://cdn.example/media/lazy-real.jpg",
        "https://cdn.example/media/lazy2-2x.jpg",
        "https://cdn.example/media/lazy3.jpg",
        "https://cdn.example/media/full/original.jpg",  # the thumbnail is not fetched
        "https://cdn.example/media/loose.png",
    }
    assert found["https://cdn.example/media/plain.jpg"]["alt"] == "A plain photo"
    assert found["https://cdn.example/media/full/original.jpg"]["alt"] == "thumbnail of the original"
    assert found["https://cdn.example/media/loose.png"]["alt"] == "A full-size picture"
    assert found["https://cdn.example/og/cover.jpg"]["alt"] == "The cover"
    # A source type we do not keep is skipped; with jpeg only, the <img> itself is taken.
    only_jpeg = images(html, allowed_types=("jpeg",))
    assert "https://cdn.example/media/pic-400.jpg" in only_jpeg


def test_captions_and_licences_come_from_figures_rel_license_and_json_ld():
    html = """
    <html><head>
      <link rel="license" href="https://creativecommons.org/licenses/by/4.0/">
      <script type="application/ld+json">
        {"@context": "https://schema.org", "@graph": [
          {"@type": "ImageObject", "contentUrl": "https://gallery.example/people/ld.jpg",
           "license": "https://creativecommons.org/publicdomain/zero/1.0/"}]}
      </script>
      <script type="application/ld+json">{ not json </script>
    </head><body>
      <figure>
        <img src="fig.jpg" alt="Ada">
        <figcaption>Ada Lovelace, 1840. <a rel="license" href="/licences/pd">Public domain</a></figcaption>
      </figure>
      <img src="ld.jpg"><img src="page.jpg">
    </body></html>
    """
    found = images(html)
    fig = found["https://gallery.example/people/fig.jpg"]
    assert fig["caption"] == "Ada Lovelace, 1840. Public domain"
    assert fig["licence"] == "https://gallery.example/licences/pd"
    assert found["https://gallery.example/people/ld.jpg"]["licence"].endswith("/zero/1.0/")
    assert found["https://gallery.example/people/page.jpg"]["licence"].endswith("/licenses/by/4.0/")
    # With an image scope, a site-wide rel=license outside it is not taken for the images'.
    scoped = images(html.replace("<figure>", '<figure id="main">'), image_scope="#main")
    assert set(scoped) == {"https://gallery.example/people/fig.jpg"}


def test_links_follow_the_selector_and_pattern_and_meta_robots_is_read():
    html = """
    <meta name="robots" content="NoIndex, nofollow"><meta name="otherbot" content="noai">
    <a href="page2.html" class="next">next</a><a href="/about">about</a>
    <a href="https://gallery.example/people/File:Face.jpg">a file page</a>
    <a href="mailto:me@example.org">mail</a><a href="#top">top</a>
    """
    page = extract(html, PAGE, follow="a.next")
    assert page.links == ["https://gallery.example/people/page2.html"]
    assert page.robots == {"noindex", "nofollow"}  # otherbot's noai is not ours
    pattern = extract(html, PAGE, follow="a[href]", follow_pattern=r"/File:")
    assert pattern.links == ["https://gallery.example/people/File:Face.jpg"]
    assert pattern.images == []  # a followed page, not an image, although it ends in .jpg
    everything = extract(html, PAGE)
    assert everything.links == ["https://gallery.example/people/page2.html", "https://gallery.example/about"]


def test_robots_txt_decoding_opt_out_headers_and_retry_after():
    assert "Disallow: /x" in decode_robots(codecs.BOM_UTF8 + b"User-agent: *\nDisallow: /x\n")
    assert "Disallow: /x" in decode_robots(codecs.BOM_UTF16_LE + "Disallow: /x".encode("utf-16-le"))
    assert "caf\u00e9" in decode_robots("# caf\u00e9\n".encode("latin-1"), "text/plain; charset=iso-8859-1")
    cut = decode_robots("a\u00e9".encode() * 200_000)  # 600 KB: cut at 500 KiB, inside an é
    assert cut == "a\u00e9" * 170_666 + "a"
    assert header_opt_out("noai", "faces") == "noai"
    assert header_opt_out("googlebot: noindex, faces: noimageai", "faces") == "noimageai"
    assert header_opt_out("unavailable_after: 25 Jun 2030 15:00:00 PST, none", "faces") == "none"
    assert header_opt_out("otherbot: noai, nofollow", "faces") is None
    assert header_opt_out(None, "faces") is None
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None and retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0


def test_the_crawler_requests_only_the_chosen_candidates(tmp_path):
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page(
            "/",
            '<img src="/s.jpg" srcset="/s.jpg 200w, /l,crop=1.jpg 800w" alt="srcset">'
            '<img src="data:image/gif;base64,R0lGOD" data-src="/lazy.jpg">'
            '<a href="/full.jpg"><img src="/thumb.jpg" alt="thumb"></a>'
            '<picture><source srcset="/p1.webp 1x, /p2.webp 2x" type="image/webp">'
            '<img src="/p.jpg"></picture>',
        )
        for i, path in enumerate(["/l,crop=1.jpg", "/lazy.jpg", "/full.jpg"]):
            a.image(path, jpeg(96, 64, i))

        a.image("/p2.webp", webp(96, 64, 9), content_type="image/webp")

        report = crawl(scrape_config(web, [a.url("/")]), root)

        assert sorted(p for p in a.paths() if p not in ("/", "/robots.txt")) == [
            "/full.jpg",
            "/l,crop=1.jpg",
            "/lazy.jpg",
            "/p2.webp",
        ]
        assert report.counts["fetched"] == 4
        urls = manifest_rows(root, "urls")
        assert urls[a.url("/full.jpg")]["alt"] == "thumb"
        assert urls[a.url("/p2.webp")]["type"] == "webp"


def test_percent_escapes_that_differ_only_in_case_are_one_url_one_request_one_row(tmp_path):
    assert normalize("http://h/a%2fb%3f?q=%e9") == "http://h/a%2Fb%3F?q=%E9"  # RFC 3986 6.2.2.1
    root = DataRoot(tmp_path)
    with Website(1) as web:
        (a,) = web.hosts
        a.page(
            "/", '<img src="/a%2fb.jpg"><img src="/a%2Fb.jpg"><a href="/p%3fq">1</a><a href="/p%3Fq">2</a>'
        )
        a.image("/a%2Fb.jpg", jpeg(64, 64, 1))
        a.page("/p%3Fq", "<p>one page</p>")

        crawl(scrape_config(web, [a.url("/")]), root)

        assert a.paths().count("/a%2Fb.jpg") == 1 and a.paths().count("/p%3Fq") == 1
    assert list(manifest_rows(root, "urls")) == [a.url("/a%2Fb.jpg")]
    assert len(manifest_rows(root, "pages")) == 2


def test_robots_directives_separated_by_spaces_count_like_comma_separated_ones():
    assert header_opt_out("noarchive noai", "faces") == "noai"
    assert header_opt_out(["otherbot: noindex", "faces: nosnippet noimageai"], "faces") == "noimageai"
    assert header_opt_out("otherbot: noarchive noai", "faces") is None  # still another bot's
    assert header_opt_out("max-image-preview: none", "faces") is None  # a value, not the directive
    assert extract('<meta name="robots" content="noarchive  noimageai">', PAGE).robots == {
        "noarchive",
        "noimageai",
    }


def test_a_charset_no_decoder_can_use_is_ignored_for_pages_and_robots_txt(tmp_path):
    root = DataRoot(tmp_path)
    with Website(2) as web:
        a, b = web.hosts
        a.add("/", Reply(body=b'<img src="/a.jpg">', content_type="text/html; charset=idna"))
        robots = b"# caf\xe9\nUser-agent: *\nDisallow: /private\n"  # not UTF-8: the charset is tried
        b.add("/robots.txt", Reply(body=robots, content_type="text/plain; charset=undefined"))
        b.add(
            "/",
            Reply(
                body=b'<img src="/private.jpg"><img src="/b.jpg">',
                content_type="text/html; charset=undefined",
            ),
        )
        for i, (host, path) in enumerate([(a, "/a.jpg"), (b, "/b.jpg"), (b, "/private.jpg")]):
            host.image(path, jpeg(64, 64, i))

        report = crawl(scrape_config(web, [a.url("/"), b.url("/")]), root)

        assert "/a.jpg" in a.paths() and "/b.jpg" in b.paths() and "/private.jpg" not in b.paths()
        assert report.counts["fetched"] == 2 and report.counts["robots"] == 1
