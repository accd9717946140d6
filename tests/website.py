"""A test website: real HTTP servers on 127.0.0.2, 127.0.0.3, … (each one host) that record every
request they see, so tests assert on what a server saw: paths, headers, times.

    with Website(hosts=2) as web:
        a, b = web.hosts
        a.page("/", f'<img src="{b.url("/x.jpg")}">')
        b.image("/x.jpg", jpeg(200, 150, seed=1))
        ... crawl ...
        assert b.paths() == ["/robots.txt", "/x.jpg"]

Routes are static `Reply`s or functions of the `Seen` request returning one. A reply with an
`etag` or `last_modified` answers conditional requests with 304, as a real server does. A reply can
repeat a header line, wait, drip its body (or endless headers) byte by byte and give up after a
while; the `Seen` request then tells how much was sent and who hung up. Each host is a
demo.server.RecordingServer, as the demo gallery is.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from demo.server import RecordingHandler, RecordingServer


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    start: float  # time.monotonic() when the request line arrived
    end: float = 0.0  # when the response was written
    client_port: int = 0
    wall: float = 0.0  # time.time() when the request line arrived (to compare with HTTP dates)
    sent: int = 0  # body bytes written (header bytes, for a reply that drips its headers)
    hung_up: str = ""  # who ended an unfinished body: "client" (a write failed) or "server" (gave up)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str | list[str]] = field(default_factory=dict)  # a list: one header line each
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    delay: float = 0.0  # seconds before answering
    drip: float = 0.0  # seconds between body chunks of `drip_bytes` (a slow server)
    drip_bytes: int = 1024  # also the chunk size of a chunked body
    give_up_after: float | None = None  # the server hangs up itself after this many seconds of body
    drip_headers: bool = False  # drip endless header lines instead (a server that never gets to a body)
    chunked: bool = False  # no Content-Length, chunked transfer encoding


Route = Reply | Callable[[Seen], Reply]


class Host(RecordingServer[Seen]):
    """One loopback host: an HTTP server with its routes and the log of what it saw."""

    def __init__(self, address: str) -> None:
        super().__init__(_Handler, host=address)
        self.address = address
        self.routes: dict[str, Route] = {}
        self.bind()  # the port is known from the start: pages may link to any host
        self.netloc = f"{address}:{self.port}"

    # routes
    def add(self, path: str, route: Route) -> None:
        self.routes[path] = route

    def page(self, path: str, html: str, **reply) -> None:
        self.add(path, Reply(body=html.encode(), content_type="text/html; charset=utf-8", **reply))

    def image(self, path: str, data: bytes, content_type: str = "image/jpeg", **reply) -> None:
        self.add(path, Reply(body=data, content_type=content_type, **reply))

    def robots(self, text: str, **reply) -> None:
        self.add("/robots.txt", Reply(body=text.encode(), content_type="text/plain", **reply))

    # what the server saw
    def requests(self, path: str | None = None) -> list[Seen]:
        return [s for s in super().requests() if path is None or s.path == path]

    def paths(self) -> list[str]:
        return [s.path for s in self.requests()]


class Website:
    """Several hosts, started together; a context manager."""

    def __init__(self, hosts: int = 1, first: int = 2) -> None:
        self.hosts = [Host(f"127.0.0.{first + i}") for i in range(hosts)]

    def __enter__(self) -> "Website":
        for host in self.hosts:
            host.start()
        return self

    def __exit__(self, *exc) -> None:
        for host in self.hosts:
            host.stop()

    def all_requests(self) -> list[Seen]:
        return sorted((s for h in self.hosts for s in h.requests()), key=lambda s: s.start)


class _Handler(RecordingHandler):
    """Answers from the host's routes; a reply with a validator answers conditional requests with 304."""

    owner: Host

    def do_GET(self) -> None:
        host = self.owner
        seen = Seen("GET", self.path, dict(self.headers.items()), time.monotonic(), wall=time.time())
        seen.client_port = self.client_address[1]
        host.record(seen)
        route = host.routes.get(self.path) or host.routes.get(self.path.split("?")[0])
        reply = route(seen) if callable(route) else route
        if reply is None:
            reply = Reply(404, b"not found", content_type="text/plain")
        try:
            self._send(reply, seen)
        except (BrokenPipeError, ConnectionResetError):
            seen.hung_up = "client"  # the crawler hung up on purpose (a cap, an opt-out, a deadline)
        finally:
            seen.end = time.monotonic()

    def _send(self, reply: Reply, seen: Seen) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drip_headers:
            filler = "".join(f"X-Filler-{i}: {'x' * 60}\r\n" for i in range(1000))
            self._drip(f"HTTP/1.1 {reply.status} OK\r\n{filler}".encode(), reply, seen, framed=False)
            return
        headers = dict(reply.headers)
        if reply.content_type:
            headers["Content-Type"] = reply.content_type
        if reply.etag:
            headers["ETag"] = reply.etag
        if reply.last_modified:
            headers["Last-Modified"] = reply.last_modified
        if _not_modified(reply, seen.headers):
            self.send_response(304)
            for k, v in headers.items():
                if k in ("ETag", "Last-Modified"):
                    self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(reply.status)
        for k, v in headers.items():
            for line in v if isinstance(v, list) else [v]:
                self.send_header(k, line)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self._body(reply, seen)

    def _body(self, reply: Reply, seen: Seen) -> None:
        if self._drip(reply.body, reply, seen, framed=reply.chunked) and reply.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _drip(self, data: bytes, reply: Reply, seen: Seen, framed: bool) -> bool:
        """Write `data` (in drips if the reply asks, in chunked framing if `framed`); False if the
        server gave up before the end."""
        step = reply.drip_bytes if reply.drip or reply.chunked else max(len(data), 1)
        started = time.monotonic()
        for i in range(0, len(data), step):
            if reply.give_up_after is not None and time.monotonic() - started > reply.give_up_after:
                seen.hung_up = "server"
                self.close_connection = True
                return False
            chunk = data[i : i + step]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if framed else chunk)
            self.wfile.flush()
            seen.sent += len(chunk)
            if reply.drip:
                time.sleep(reply.drip)
        return True


def _not_modified(reply: Reply, headers: dict[str, str]) -> bool:
    if reply.status != 200:
        return False
    if reply.etag and headers.get("If-None-Match") == reply.etag:
        return True
    return bool(reply.last_modified and headers.get("If-Modified-Since") == reply.last_modified)


# ---------------------------------------------------------------- real images


def pixels(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth random picture: distinct per seed, compresses like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok, ext
    return data.tobytes()


def jpeg(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    return encode(pixels(width, height, seed), ".jpg")


def png(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    return encode(pixels(width, height, seed), ".png")


def webp(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    return encode(pixels(width, height, seed), ".webp")


def png_bomb(width: int = 8000, height: int = 8000) -> bytes:
    """A real PNG of a huge black canvas: 64 KB on the wire, 64 megapixels (192 MB as RGB) decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * width  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(6)
    rows_per_block = 200
    block = row * rows_per_block
    idat = b"".join(compressor.compress(block) for _ in range(height // rows_per_block))
    idat += compressor.compress(row * (height % rows_per_block)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- crawler settings for tests

TEST_AGENT = "faces-test/1.0 (+http://127.0.0.1/contact)"


def scrape_config(web: Website, seeds: list[str], **overrides):
    """A ScrapeConfig for this website: its hosts allowed, loopback allowed, no delay unless asked."""
    from scraper.config import ScrapeConfig

    settings = dict(
        seeds=seeds,
        allowed_hosts=[h.address for h in web.hosts],
        allow_networks=["127.0.0.0/8"],
        user_agent=TEST_AGENT,
        default_delay=0.0,
        delay_jitter=0.0,
        backoff=0.02,
        timeout=5.0,
        min_width=32,
        min_height=32,
    )
    return ScrapeConfig(**(settings | overrides))


def manifest_rows(root, table: str, key: str = "url") -> dict[str, dict]:
    """A raw-manifest table as {key: row} (read-only)."""
    import sqlite3

    db = sqlite3.connect(f"file:{root.raw_manifest}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {row[key]: dict(row) for row in db.execute(f"SELECT * FROM {table}")}
    finally:
        db.close()
