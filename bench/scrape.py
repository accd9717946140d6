"""Scrape benchmark: how close a polite crawl gets to its politeness floor, and raw throughput.

    python bench/scrape.py [--images 120] [--hosts 4] [--delay 0.1] [--fast-images 400]

Serves N small JPEGs from H loopback hosts (bench/site.py), crawls them with a per-host delay d
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

from bench.site import ImageSite  # noqa: E402
from common.layout import DataRoot  # noqa: E402
from scraper.config import ScrapeConfig  # noqa: E402
from scraper.crawl import crawl  # noqa: E402


def timed_crawl(site: ImageSite, **settings) -> tuple[float, dict, int]:
    """One crawl of the whole site into a fresh data root: wall seconds, the counts, requests served."""
    config = ScrapeConfig(
        seeds=[host.url("/") for host in site.hosts],
        allowed_hosts=[host.host for host in site.hosts],
        allow_networks=["127.0.0.0/8"],  # loopback is refused by default
        user_agent="faces-bench/1.0 (+http://127.0.0.1/contact)",
        delay_jitter=0.0,
        **settings,
    )
    for host in site.hosts:
        host.clear()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = crawl(config, DataRoot(tmp), progress_bar=False)
        wall = time.perf_counter() - start
    return wall, report.counts, site.requests()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="N, images in the polite run")
    parser.add_argument("--hosts", type=int, default=4, help="H, loopback hosts")
    parser.add_argument("--delay", type=float, default=0.1, help="d, seconds between requests to one host")
    parser.add_argument("--fast-images", type=int, default=400, help="images in the no-delay runs")
    args = parser.parse_args()
    n, h, d = args.images, args.hosts, args.delay

    with ImageSite(hosts=h, images=n) as site:
        wall, counts, requests = timed_crawl(site, default_delay=d)
        per_host = requests / h  # robots.txt and the page count too
        floor, strict_floor = n / h * d, (per_host - 1) * d
        print(f"polite crawl: N={n} images, H={h} hosts, d={d:g} s: ", end="")
        print(f"{requests} requests, {counts['fetched']} fetched")
        print(f"  wall time               {wall:7.2f} s")
        print(f"  floor N/H*d             {floor:7.2f} s   (wall / floor = {wall / floor:.2f})")
        print(f"  floor with robots+page  {strict_floor:7.2f} s   (wall / floor = {wall / strict_floor:.2f})")
        print(f"  overhead per request    {(wall - strict_floor) / per_host * 1000:7.1f} ms")

    with ImageSite(hosts=h, images=args.fast_images) as site:
        for connections in (1, 4):
            wall, counts, requests = timed_crawl(site, default_delay=0.0, connections_per_host=connections)
            print(
                f"no delay, {connections} connection(s)/host: {requests} requests in {wall:.2f} s = "
                f"{requests / wall:.0f} requests/s, {counts['fetched'] / wall:.0f} images/s"
            )


if __name__ == "__main__":
    main()
