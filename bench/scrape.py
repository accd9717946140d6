"""Scrape benchmark: how close a polite crawl gets to its politeness floor, and raw throughput.

    python bench/scrape.py [--images 120] [--hosts 4] [--delay 0.1] [--fast-images 400]

Serves N small JPEGs from H loopback hosts (tests/website.py), crawls them with a per-host delay d
(no jitter) and prints the wall time against the floor N/H·d: the least time any crawler keeping
that delay can take. Then crawls again with no delay and prints requests per second, with one and
with four connections per host. Everything runs on 127.0.0.x; nothing leaves the machine.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.layout import DataRoot  # noqa: E402
from scraper.crawl import crawl  # noqa: E402
from tests.website import Website, jpeg, scrape_config  # noqa: E402


def build_site(web: Website, images: int) -> None:
    per_host = images // len(web.hosts)
    for h, host in enumerate(web.hosts):
        host.page("/", "".join(f'<img src="/{i}.jpg">' for i in range(per_host)))
        for i in range(per_host):
            host.image(f"/{i}.jpg", jpeg(96, 72, seed=h * 100_000 + i))


def timed_crawl(web: Website, **settings) -> tuple[float, dict, int]:
    with tempfile.TemporaryDirectory() as tmp:
        for host in web.hosts:
            host.clear()
        config = scrape_config(web, [h.url("/") for h in web.hosts], **settings)
        start = time.perf_counter()
        report = crawl(config, DataRoot(tmp), progress_bar=False)
        wall = time.perf_counter() - start
    requests = sum(len(h.requests()) for h in web.hosts)
    return wall, report.counts, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="N, images in the polite run")
    parser.add_argument("--hosts", type=int, default=4, help="H, loopback hosts")
    parser.add_argument("--delay", type=float, default=0.1, help="d, seconds between requests to one host")
    parser.add_argument("--fast-images", type=int, default=400, help="images in the no-delay runs")
    args = parser.parse_args()
    n, h, d = args.images, args.hosts, args.delay

    with Website(hosts=h) as web:
        build_site(web, n)
        wall, counts, requests = timed_crawl(web, default_delay=d)
        per_host = requests / h  # robots.txt and the page count too
        floor, strict_floor = n / h * d, (per_host - 1) * d
        print(f"polite crawl: N={n} images, H={h} hosts, d={d:g} s: ", end="")
        print(f"{requests} requests, {counts['fetched']} fetched")
        print(f"  wall time               {wall:7.2f} s")
        print(f"  floor N/H*d             {floor:7.2f} s   (wall / floor = {wall / floor:.2f})")
        print(f"  floor with robots+page  {strict_floor:7.2f} s   (wall / floor = {wall / strict_floor:.2f})")
        print(f"  overhead per request    {(wall - strict_floor) / per_host * 1000:7.1f} ms")

    with Website(hosts=h) as web:
        build_site(web, args.fast_images)
        for connections in (1, 4):
            wall, counts, requests = timed_crawl(web, default_delay=0.0, connections_per_host=connections)
            print(
                f"no delay, {connections} connection(s)/host: {requests} requests in {wall:.2f} s = "
                f"{requests / wall:.0f} requests/s, {counts['fetched'] / wall:.0f} images/s"
            )


if __name__ == "__main__":
    main()
