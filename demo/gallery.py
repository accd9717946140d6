"""A small photo gallery website, served from memory on 127.0.0.1, for the offline demo and the tests.

It has what a polite crawler has to cope with on a real site: an index with pagination links, gallery
pages whose `<img>` tags use a plain `src`, a `srcset` with width descriptors (the largest candidate
is the full image), lazy loading through `data-src` behind a data: URI placeholder, and `<a href>`
links from thumbnails to full-size images; a robots.txt with a disallowed /private/ area (linked
from the public pages, so a crawler that ignores robots.txt would fetch it) and a Crawl-delay; a
few images with no face, one truncated JPEG, a tiny logo, alt texts, a CC0 licence as
`<link rel="license">` and JSON-LD; ETag and Last-Modified with 304 answers to conditional requests.

    with DemoGallery(n_faces=40, seed=0) as gallery:
        crawl(gallery.seed_url, ...)
        assert not any(r.path.startswith("/private/") for r in gallery.request_log)
"""

import contextlib
import hashlib
import html
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from common.report import BadInputError
from demo.faces import draw_face, draw_non_face
from demo.server import RecordingHandler, RecordingServer

LICENCE_URL = "https://creativecommons.org/publicdomain/zero/1.0/"
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
THUMB_WIDTHS = (96, 160)  # resized variants offered in srcset; the full image (256 px) is the largest
IMAGES_PER_PAGE = 12
HTML = "text/html; charset=utf-8"
N_PRIVATE = 3


@dataclass(frozen=True)
class GalleryImage:
    """One image the site shows. `kind` is "face", "non_face" or "broken"."""

    name: str
    kind: str
    ext: str  # "jpg" or "png"
    alt: str
    private: bool = False

    @property
    def path(self) -> str:
        return f"{'/private' if self.private else ''}/images/{self.name}.{self.ext}"

    def variant_path(self, width: int) -> str:
        return self.path.replace(f".{self.ext}", f"-{width}w.{self.ext}")


@dataclass(frozen=True)
class Request:
    """One request the server answered. `time` is time.monotonic() when it arrived."""

    path: str  # as sent, with any query string
    time: float
    method: str
    status: int
    user_agent: str


@dataclass(frozen=True)
class _Resource:
    body: bytes
    content_type: str
    etag: str


def _encode(img: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, buf = cv2.imencode(f".{ext}", img, params)
    assert ok, f"OpenCV could not encode a {ext}"
    return buf.tobytes()


def _resource(body: bytes, content_type: str) -> _Resource:
    return _Resource(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


class DemoGallery(RecordingServer[Request]):
    """The demo website. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        n_faces: int = 120,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        crawl_delay: float = 0.05,
    ):
        if n_faces < 1:
            raise BadInputError(f"DemoGallery n_faces = {n_faces}: must be at least 1; ask for some faces")
        super().__init__(_Handler, host, port)
        self.n_faces, self.seed = n_faces, seed
        self.crawl_delay = crawl_delay
        # A fixed date, so that Last-Modified is the same on every run with the same seed.
        self.last_modified = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=seed % 365)
        self.images: list[GalleryImage] = []
        self._resources: dict[str, _Resource] = {}
        self.generation_seconds = 0.0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "DemoGallery":
        if self._server is not None:
            return self
        t0 = time.perf_counter()
        self.bind()  # first: the pages carry absolute URLs, which need the port
        try:
            self._build_images()
            self._build_pages()
        except BaseException:
            self.stop()
            raise
        self.generation_seconds = time.perf_counter() - t0
        super().start()
        return self

    # ------------------------------------------------------------ what tests and the demo look at

    @property
    def seed_url(self) -> str:
        return self.base_url + "/"

    @property
    def request_log(self) -> list[Request]:
        return self.requests()

    def images_of(self, kind: str, private: bool = False) -> list[GalleryImage]:
        return [im for im in self.images if im.kind == kind and im.private == private]

    def body(self, path: str) -> bytes:
        """The bytes served at `path` (no request is logged)."""
        return self._resources[path].body

    # ------------------------------------------------------------ content

    def _add(self, path: str, body: bytes, content_type: str) -> None:
        self._resources[path] = _resource(body, content_type)

    def _build_images(self) -> None:
        """Faces, non-faces, the private faces, one truncated JPEG and a logo, in a shuffled order."""
        rng = np.random.default_rng(self.seed)
        faces = [draw_face(rng) for _ in range(self.n_faces + N_PRIVATE)]
        non_faces = [draw_non_face(rng) for _ in range(max(2, self.n_faces // 10))]
        images, pixels = [], {}
        for i, img in enumerate(faces):
            private = i >= self.n_faces
            name = f"member-{i - self.n_faces + 1:02d}" if private else f"portrait-{i + 1:03d}"
            alt = "" if i % 7 == 6 else f"Portrait {i + 1}, painted for the demo"
            images.append(GalleryImage(name, "face", "png" if i % 4 == 3 else "jpg", alt, private))
            pixels[name] = img
        for i, img in enumerate(non_faces):
            images.append(GalleryImage(f"study-{i + 1:02d}", "non_face", "jpg", f"Study {i + 1}: no people"))
            pixels[f"study-{i + 1:02d}"] = img
        broken = GalleryImage("portrait-broken", "broken", "jpg", "A portrait whose upload was cut short")
        images.append(broken)

        for im in images:
            if im.kind == "broken":
                full = _encode(draw_face(rng), "jpg")
                self._add(im.path, full[: len(full) // 2], "image/jpeg")  # cut mid-scan: undecodable
                continue
            img, mime = pixels[im.name], f"image/{'jpeg' if im.ext == 'jpg' else 'png'}"
            self._add(im.path, _encode(img, im.ext), mime)
            for width in THUMB_WIDTHS:
                small = cv2.resize(img, (width, width), interpolation=cv2.INTER_AREA)
                self._add(im.variant_path(width), _encode(small, im.ext), mime)
        logo = np.full((24, 24, 3), (90, 60, 200), np.uint8)
        cv2.circle(logo, (12, 12), 8, (255, 255, 255), -1)
        self._add("/static/logo.png", _encode(logo, "png"), "image/png")

        public = [im for im in images if not im.private]
        order = np.random.default_rng(self.seed + 1).permutation(len(public))
        self.images = [public[k] for k in order] + [im for im in images if im.private]

    def _build_pages(self) -> None:
        public = [im for im in self.images if not im.private]
        pages = [public[i : i + IMAGES_PER_PAGE] for i in range(0, len(public), IMAGES_PER_PAGE)]
        for number, page_images in enumerate(pages, 1):
            self._add(f"/page/{number}.html", self._gallery_page(number, len(pages), page_images), HTML)
        self._add("/", self._index_page(len(pages), public[0]), HTML)
        self._add("/index.html", self.body("/"), HTML)
        private = [im for im in self.images if im.private]
        body = _html(
            "Members only", "<h1>Members only</h1>" + "".join(_img_tag(im, 0) for im in private), private
        )
        self._add("/private/index.html", body, HTML)
        self._add("/robots.txt", self._robots_txt().encode(), "text/plain; charset=utf-8")

    def _robots_txt(self) -> str:
        return (
            "# Demo gallery. The members' area is off limits to every crawler.\n"
            "User-agent: *\n"
            "Disallow: /private/\n"
            f"Crawl-delay: {self.crawl_delay:g}\n"
            "\n"
            "User-agent: ExampleBadBot\n"
            "Disallow: /\n"
        )

    def _index_page(self, n_pages: int, featured: GalleryImage) -> bytes:
        links = "".join(
            f'<li><a href="/page/{n}.html">Gallery page {n}</a></li>' for n in range(1, n_pages + 1)
        )
        content = (
            "<h1>Painted portraits</h1>"
            "<p>Procedurally painted faces for the faces-pipeline demo. Everything here is CC0.</p>"
            f"<h2>Featured</h2>{_img_tag(featured, 0)}"
            f"<h2>Pages</h2><ul>{links}</ul>"
            '<p><a href="/private/index.html">Members\' area</a></p>'
        )
        return _html("Painted portraits", content, [featured], base_url=self.base_url)

    def _gallery_page(self, number: int, n_pages: int, images: list[GalleryImage]) -> bytes:
        nav = ['<nav><a href="/">Home</a>']
        if number > 1:
            nav.append(f'<a rel="prev" href="/page/{number - 1}.html">Previous</a>')
        nav += [f'<a href="/page/{n}.html">{n}</a>' for n in range(1, n_pages + 1) if n != number]
        if number < n_pages:
            nav.append(f'<a rel="next" href="/page/{number + 1}.html">Next</a>')
        nav.append("</nav>")
        figures = "".join(
            f"<figure>{_img_tag(im, k + number, self.base_url)}<figcaption>{html.escape(im.alt)}</figcaption>"
            "</figure>"
            for k, im in enumerate(images)
        )
        if number == 1:  # a members' photo on a public page: the crawler must leave it alone
            member = next(im for im in self.images if im.private)
            figures += f"<figure>{_img_tag(member, 0)}<figcaption>Members only</figcaption></figure>"
        content = (
            f"<h1>Gallery page {number} of {n_pages}</h1>{''.join(nav)}<main>{figures}</main>{''.join(nav)}"
        )
        return _html(f"Gallery page {number}", content, images, base_url=self.base_url)


def _img_tag(im: GalleryImage, style: int, base_url: str = "") -> str:
    """The four ways the pages embed an image: plain src, srcset, lazy data-src, thumbnail link."""
    alt = html.escape(im.alt)
    if im.kind == "broken" or style % 4 == 0:
        return f'<img src="{im.path}" alt="{alt}" width="256" height="256">'
    small, medium = im.variant_path(THUMB_WIDTHS[0]), im.variant_path(THUMB_WIDTHS[1])
    if style % 4 == 1:
        srcset = f"{small} {THUMB_WIDTHS[0]}w, {medium} {THUMB_WIDTHS[1]}w, {im.path} 256w"
        return f'<img src="{small}" srcset="{srcset}" sizes="(max-width: 600px) 96px, 256px" alt="{alt}">'
    if style % 4 == 2:
        return f'<img class="lazy" src="{PLACEHOLDER}" data-src="{im.path}" loading="lazy" alt="{alt}">'
    # An absolute URL in the link, a relative one in the thumbnail: crawlers must resolve both.
    return f'<a href="{base_url}{im.path}"><img src="{small}" alt="{alt}" width="96" height="96"></a>'


def _html(title: str, content: str, images: list[GalleryImage], base_url: str = "") -> bytes:
    json_ld = {
        "@context": "https://schema.org",
        "@type": "ImageGallery",
        "name": title,
        "license": LICENCE_URL,
        "associatedMedia": [
            {"@type": "ImageObject", "contentUrl": base_url + im.path, "license": LICENCE_URL, "name": im.alt}
            for im in images
            if im.kind != "broken"
        ],
    }
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="license" href="{LICENCE_URL}">'
        f'<script type="application/ld+json">{json.dumps(json_ld)}</script>'
        "</head><body>"
        '<header><img src="/static/logo.png" alt="" width="24" height="24"> Painted portraits</header>'
        f"{content}"
        "<footer>All images are dedicated to the public domain (CC0 1.0).</footer></body></html>\n"
    )
    return page.encode()


class _Handler(RecordingHandler):
    """Answers from the gallery's resources, with 304s to conditional requests."""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        arrived = time.monotonic()
        gallery: DemoGallery = self.owner
        resource = gallery._resources.get(unquote(urlsplit(self.path).path))
        if resource is None:
            status, body = 404, b"Not found\n"
        else:
            status = 304 if self._not_modified(resource, gallery.last_modified) else 200
            body = b"" if status == 304 else resource.body
        # Logged before answering: a client that has its response finds its request in the log.
        agent = self.headers.get("User-Agent", "")
        gallery.record(Request(self.path, arrived, self.command, status, agent))
        self.send_response(status)
        if resource is None:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        else:
            self.send_header("Content-Type", resource.content_type)
            self.send_header("ETag", resource.etag)
            self.send_header("Last-Modified", format_datetime(gallery.last_modified, usegmt=True))
            self.send_header("Cache-Control", "max-age=0, must-revalidate")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _not_modified(self, resource: _Resource, last_modified: datetime) -> bool:
        """RFC 9110: If-None-Match wins over If-Modified-Since when both are sent."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            return "*" in tags or resource.etag in tags
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_modified_since:
            try:
                return last_modified <= parsedate_to_datetime(if_modified_since)
            except (TypeError, ValueError):
                return False  # an unreadable date is ignored, as the RFC says
        return False


def main() -> None:
    """Serve the gallery until Ctrl-C: `python -m demo.gallery --port 8000`."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve the demo gallery on 127.0.0.1.")
    parser.add_argument("--faces", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with DemoGallery(args.faces, args.seed, port=args.port) as gallery:
        print(f"Demo gallery at {gallery.seed_url} ({len(gallery.images)} images); Ctrl-C stops it.")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
