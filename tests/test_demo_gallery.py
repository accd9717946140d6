"""The demo gallery: a real website on 127.0.0.1 whose painted faces YuNet finds, one per image."""

import io
import json
import time
from datetime import timedelta
from email.utils import format_datetime
from urllib.parse import urljoin, urlsplit

import cv2
import numpy as np
import pytest
import requests
from bs4 import BeautifulSoup
from PIL import Image
from protego import Protego

from common.report import BadInputError
from demo import DemoGallery, make_faces
from preprocess.config import PreprocessConfig
from preprocess.detect import FaceDetector

N_FACES = 48
MIN_DETECTION_RATE = 0.95


@pytest.fixture(scope="module")
def gallery():
    with DemoGallery(n_faces=N_FACES, seed=0, crawl_delay=0.25) as g:
        yield g


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(PreprocessConfig(detector="yunet", score_threshold=0.7, nms_threshold=0.3))


def _get(gallery: DemoGallery, path: str, **kwargs) -> requests.Response:
    return requests.get(urljoin(gallery.base_url, path), timeout=10, **kwargs)


def _decode(body: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)


def _crawl_pages(gallery: DemoGallery) -> dict[str, BeautifulSoup]:
    """Every public HTML page reachable from the seed by links, as a browser would find them."""
    pages, queue = {}, [gallery.seed_url]
    while queue:
        url = queue.pop()
        path = urlsplit(url).path
        if path in pages or path.startswith("/private/"):
            continue
        response = _get(gallery, path)
        assert response.status_code == 200, url
        assert response.headers["Content-Type"].startswith("text/html")
        pages[path] = soup = BeautifulSoup(response.text, "html.parser")
        queue += [
            urljoin(url, a["href"]) for a in soup.find_all("a", href=True) if a["href"].endswith(".html")
        ]
    return pages


def test_pages_link_every_image_in_all_four_embeddings(gallery):
    pages = _crawl_pages(gallery)
    public = [im for im in gallery.images if not im.private]
    assert len([p for p in pages if p.startswith("/page/")]) >= 4  # pagination: several gallery pages
    srcs, srcsets, lazy, links, alts = set(), [], set(), set(), []
    for soup in pages.values():
        for img in soup.find_all("img"):
            srcs.add(img["src"])
            alts.append(img.get("alt"))
            if img.get("srcset"):
                srcsets.append(img["srcset"])
            if img.get("data-src"):
                assert img["src"].startswith("data:image/"), "lazy images carry a data: URI placeholder"
                lazy.add(img["data-src"])
        links |= {urlsplit(a["href"]).path for a in soup.find_all("a", href=True) if "/images/" in a["href"]}
        assert soup.find("link", rel="license")["href"].startswith(
            "https://creativecommons.org/publicdomain/zero"
        )
        json_ld = json.loads(soup.find("script", type="application/ld+json").string)
        assert "publicdomain/zero" in json_ld["license"]

    largest_in_srcset = {max(s.split(", "), key=lambda c: int(c.split()[1][:-1])).split()[0] for s in srcsets}
    reachable = srcs | largest_in_srcset | lazy | links
    assert {im.path for im in public} <= reachable, "every public image's full size is reachable"
    assert srcsets and lazy and links, "srcset, data-src and <a href> are all used"
    assert any(alt for alt in alts) and "/private/index.html" in {
        a["href"] for soup in pages.values() for a in soup.find_all("a", href=True)
    }, "alt texts, and a link into the disallowed area that robots.txt must stop"


def test_srcset_candidates_are_resized_copies_and_largest_is_full(gallery):
    soup = BeautifulSoup(_get(gallery, "/page/1.html").text, "html.parser")
    img = soup.find("img", srcset=True)
    candidates = [c.split() for c in img["srcset"].split(", ")]
    assert len(candidates) >= 3
    widths = []
    for url, descriptor in candidates:
        decoded = _decode(_get(gallery, url).content)
        assert decoded.shape[1] == int(descriptor.removesuffix("w")), (
            f"{url} is as wide as its descriptor says"
        )
        widths.append(decoded.shape[1])
    assert max(widths) == 256 and len(set(widths)) == len(widths)


def test_robots_txt_disallows_private_area_and_sets_crawl_delay(gallery):
    response = _get(gallery, "/robots.txt")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    robots = Protego.parse(response.text)
    assert robots.crawl_delay("faces-pipeline") == pytest.approx(0.25)
    assert not robots.can_fetch(gallery.url("/private/index.html"), "faces-pipeline")
    assert not robots.can_fetch(gallery.url("/private/images/member-01.jpg"), "faces-pipeline")
    assert robots.can_fetch(gallery.url("/page/1.html"), "faces-pipeline")
    # The private area is real, so a crawler that ignored robots.txt would get faces from it...
    private = [im for im in gallery.images if im.private]
    assert private and _get(gallery, private[0].path).status_code == 200
    # ...and the request log is how a test notices.
    assert any(r.path == private[0].path and r.status == 200 for r in gallery.request_log)


def test_request_log_records_path_time_and_agent(gallery):
    before = time.monotonic()
    _get(gallery, "/page/2.html?from=test", headers={"User-Agent": "gallery-test/1.0"})
    _get(gallery, "/no-such-page.html")
    last_two = gallery.request_log[-2:]
    assert [(r.path, r.status) for r in last_two] == [
        ("/page/2.html?from=test", 200),
        ("/no-such-page.html", 404),
    ]
    assert last_two[0].user_agent == "gallery-test/1.0"
    assert before <= last_two[0].time <= last_two[1].time <= time.monotonic()


def test_conditional_requests_get_304(gallery):
    path = gallery.images_of("face")[0].path
    first = _get(gallery, path)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert first.status_code == 200 and first.content
    by_etag = _get(gallery, path, headers={"If-None-Match": etag})
    assert by_etag.status_code == 304 and by_etag.content == b""
    assert _get(gallery, path, headers={"If-Modified-Since": last_modified}).status_code == 304
    earlier = format_datetime(gallery.last_modified - timedelta(days=1), usegmt=True)
    assert _get(gallery, path, headers={"If-Modified-Since": earlier}).status_code == 200
    # A changed ETag wins over a date that would say "not modified".
    stale = {"If-None-Match": '"something-else"', "If-Modified-Since": last_modified}
    assert _get(gallery, path, headers=stale).status_code == 200


def test_broken_image_is_a_truncated_jpeg(gallery):
    (broken,) = gallery.images_of("broken")
    response = _get(gallery, broken.path)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff", "it looks like a JPEG..."
    assert _decode(response.content) is None, "...but OpenCV cannot decode it"
    with pytest.raises(OSError):
        Image.open(io.BytesIO(response.content)).load()


def test_yunet_finds_one_face_per_face_image_and_none_elsewhere(gallery, detector):
    faces = gallery.images_of("face")
    assert len(faces) == N_FACES
    formats = {_get(gallery, im.path).headers["Content-Type"] for im in faces}
    assert formats == {"image/jpeg", "image/png"}
    counts = [len(detector.detect(_decode(_get(gallery, im.path).content))) for im in faces]
    rate = counts.count(1) / len(counts)
    assert rate >= MIN_DETECTION_RATE, f"YuNet found exactly one face in {rate:.0%} of the gallery's faces"
    for im in gallery.images_of("non_face"):
        assert detector.detect(_decode(_get(gallery, im.path).content)) == [], f"{im.path} has no face"


@pytest.mark.parametrize("seed", [11, 12])
def test_make_faces_detected_across_seeds_and_reproducible(seed, detector):
    faces = make_faces(40, seed)
    counts = [len(detector.detect(img)) for img in faces]
    assert counts.count(1) / len(counts) >= MIN_DETECTION_RATE
    assert all(img.shape == (256, 256, 3) and img.dtype == np.uint8 for img in faces)
    again = make_faces(2, seed)
    assert np.array_equal(again[0], faces[0]) and not np.array_equal(faces[0], faces[1])


def test_faces_vary_in_skin_tone_and_background():
    faces = make_faces(24, seed=5)
    centres = np.array([img[118:138, 118:138].reshape(-1, 3).mean(0) for img in faces])  # mid-face skin
    corners = np.array([img[:16, :16].reshape(-1, 3).mean(0) for img in faces])
    assert np.ptp(centres.mean(1)) > 60, "skin tones range from light to dark"
    assert np.ptp(corners, axis=0).min() > 80, "backgrounds vary in colour"


def test_bad_size_and_stopped_server():
    with pytest.raises(BadInputError, match="n_faces"):
        DemoGallery(n_faces=0)
    gallery = DemoGallery(n_faces=1, seed=3).start()
    url = gallery.seed_url
    assert requests.get(url, timeout=10).status_code == 200
    gallery.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)
