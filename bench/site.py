"""Loopback hosts for the scrape benchmark: each serves one page of small JPEGs and records requests.

Built on demo.server's recording server, as the demo gallery and the tests' websites are. Hosts
listen on 127.0.0.2, 127.0.0.3, …, so each is its own host for the crawler's per-host delay.
"""

import cv2
import numpy as np

from demo.server import RecordingHandler, RecordingServer


def small_jpeg(seed: int, width: int = 96, height: int = 72) -> bytes:
    """A colour ramp between two seeded colours: a few KB, and different bytes for every seed."""
    rng = np.random.default_rng(seed)
    left, right = rng.integers(0, 256, (2, 3))
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    picture = np.broadcast_to((1 - ramp) * left + ramp * right, (height, width, 3)).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(picture))
    assert ok, "OpenCV could not encode a JPEG"
    return data.tobytes()


class ImageHost(RecordingServer[str]):
    """One host: `/` links `images` JPEGs, `/<k>.jpg`; it records the path of every request."""

    def __init__(self, address: str, images: int, first_seed: int) -> None:
        super().__init__(_Handler, host=address)
        page = "".join(f'<img src="/{k}.jpg">' for k in range(images)).encode()
        self.files = {"/": (page, "text/html; charset=utf-8")}
        self.files |= {f"/{k}.jpg": (small_jpeg(first_seed + k), "image/jpeg") for k in range(images)}
        self.start()


class ImageSite:
    """`hosts` image hosts sharing `images` between them; a context manager that stops them all."""

    def __init__(self, hosts: int, images: int) -> None:
        self.hosts = [ImageHost(f"127.0.0.{2 + h}", images // hosts, h * 100_000) for h in range(hosts)]

    def __enter__(self) -> "ImageSite":
        return self

    def __exit__(self, *exc) -> None:
        for host in self.hosts:
            host.stop()

    def requests(self) -> int:
        return sum(len(host.requests()) for host in self.hosts)


class _Handler(RecordingHandler):
    owner: ImageHost

    def do_GET(self) -> None:
        self.owner.record(self.path)
        body, content_type = self.owner.files.get(self.path, (b"not found\n", "text/plain"))
        self.send_response(200 if self.path in self.owner.files else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
