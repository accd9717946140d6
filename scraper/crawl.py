"""The scrape stage: a polite, resumable crawl from seed pages to content-addressed images.

The engine and scheduler of the crawler: hosts are crawled in parallel, one worker thread per host
connection, each claiming that host's next frontier item, handing it to the page or image handler
and counting what it came to. The parts (docs/scraper.md, "How it works"):
  manifest.Manifest          frontier (persisted), URL and page records, robots cache, raw manifest
  fetcher.Fetcher            checks, redirects, pacing and retries for one item's request
  robots.RobotsCache         robots.txt per origin, Crawl-delay
  politeness.HostThrottle    per-host delay, connection cap, Retry-After pauses and backoff (kept across runs)
  downloader.Downloader      one guarded, streamed, capped request (SSRF guard on every hop, hard deadline)
  page_handler.PageHandler   a page's links and images into the frontier
  image_handler.ImageHandler an image's checks, storage and manifest row
  crawl_report               counts, progress and the stage's report
"""

import ipaddress
import logging
import sqlite3
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from functools import partial
from urllib.parse import urlsplit

from common.layout import DataRoot
from common.report import BadInputError, StageReport
from scraper.config import PLACEHOLDER_CONTACT, ScrapeConfig
from scraper.crawl_report import ItemDone, Progress, ProgressReporter, Tally, build_report
from scraper.downloader import AddressGuard, Downloader
from scraper.fetcher import Fetcher
from scraper.hosts import Host, HostGivenUp
from scraper.image_handler import ImageHandler
from scraper.manifest import Item, Manifest
from scraper.page_handler import PageHandler
from scraper.politeness import HostThrottle, Stopped
from scraper.robots import RobotsCache, agent_token
from scraper.store import RawStore, raw_lock
from scraper.urls import allowed_hosts, host_allowed, host_key, normalize

log = logging.getLogger(__name__)


def crawl(
    config: ScrapeConfig,
    root: DataRoot,
    *,
    force: bool = False,
    on_progress: Progress | None = None,
    progress_bar: bool | None = None,
) -> StageReport:
    """Crawl `config.seeds` politely into `root.raw_dir`; see docs/scraper.md.

    Resumes an interrupted crawl from its frontier; otherwise visits every page again, sending
    stored ETag/Last-Modified so unchanged images are not downloaded again (`force` sends none).
    `progress_bar`: a tqdm bar on stderr; None shows one when stderr is a terminal.
    """
    started = time.monotonic()
    check_config(config)
    bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    with raw_lock(root.raw_dir), Manifest(root.raw_manifest) as manifest:
        crawler = Crawler(config, root, manifest, force=force, on_progress=on_progress, progress_bar=bar)
        report = crawler.run()
    report.outputs = {"raw": str(root.raw_dir), "manifest": str(root.raw_manifest)}
    report.seconds = time.monotonic() - started
    return report


def check_config(config: ScrapeConfig) -> None:
    """BadInputError unless there are seeds, all on allowed hosts, and a real User-Agent where needed."""
    if not config.seeds:
        raise BadInputError(
            '[scrape] seeds is empty: add at least one start page URL, e.g. seeds = ["https://…"]'
        )
    allowed = allowed_hosts(config.allowed_hosts, config.seeds)
    for seed in config.seeds:
        if not host_allowed(normalize(seed) or seed, allowed):
            raise BadInputError(
                f"[scrape] seed {seed} is on a host missing from allowed_hosts {config.allowed_hosts}; "
                "add its host to allowed_hosts"
            )
        if PLACEHOLDER_CONTACT in config.user_agent and not _local(seed, config.allow_networks):
            raise BadInputError(
                "[scrape] user_agent is the placeholder; real sites require a User-Agent that names your "
                "project and a contact, e.g. 'myfaces/1.0 (+https://example.org/contact; me@example.org)'"
            )


def _local(url: str, allow_networks: list[str]) -> bool:
    """True for a seed on an address the config allows explicitly (the demo, the tests)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n, strict=False) for n in allow_networks)


class Crawler:
    """One crawl: schedules the frontier's hosts on worker threads and counts what each item came to."""

    def __init__(
        self,
        config: ScrapeConfig,
        root: DataRoot,
        manifest: Manifest,
        *,
        force: bool,
        on_progress: Progress | None,
        progress_bar: bool,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.force = force
        self.guard = AddressGuard(config.allow_networks, config.resolve)
        self.limits = {"page": config.max_pages, "image": config.max_images}
        self.stop = threading.Event()
        token = agent_token(config.user_agent)
        robots = RobotsCache(config, manifest, token)
        fetcher = Fetcher(config, manifest, robots, token, self.stop, force=force, host_for=self._host)
        self.pages = PageHandler(config, manifest, fetcher, token, self.limits)
        self.store = RawStore(root)
        self.images = ImageHandler(config, manifest, fetcher, self.store, token)
        self.hosts: dict[str, Host] = {}
        self.tally = Tally()
        self.progress = ProgressReporter(on_progress, progress_bar)
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self.done = self.total = 0
        self.interrupted = False

    def run(self) -> StageReport:
        if removed := self.store.remove_leftovers():
            self.tally.note(f"removed {removed} unfinished file(s) a stopped crawl left in raw/")
        self.interrupted = self.manifest.interrupted()  # its last requests may have been in flight
        run_id, resumed = self.manifest.begin(fresh=self.force)
        seeds = [Item(url, "page", host_key(url)) for url in map(normalize, self.config.seeds) if url]
        self.manifest.enqueue(seeds, self.limits)
        self.done, self.total = self.manifest.frontier_counts()
        if resumed:
            self.tally.note(f"resumed an interrupted crawl: {self.done} of {self.total} URLs were done")
        try:
            self._schedule()
        finally:
            for host in self.hosts.values():
                host.downloader.close()
                if (last_end := host.throttle.last_end()) is not None:  # for the next crawler's delay
                    self.manifest.record_host_times(host.key, "last_end", last_end)
            self.progress(self.done, self.total, "done", final=True)
            self.progress.close()
        given_up = sum(1 for h in self.hosts.values() if h.given_up is not None)
        report = build_report(self.tally, given_up, self.config)
        self.manifest.finish(run_id, report.counts)
        return report

    def _schedule(self) -> None:
        """Run workers for hosts with pending URLs, `connections_per_host` each, until none is left."""
        per_host = self.config.connections_per_host
        slots = self.config.max_parallel_hosts * per_host
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(slots, thread_name_prefix="scrape") as pool:
            try:
                while True:
                    busy = Counter(running.values())
                    for key, pending in self.manifest.pending_by_host().items():
                        for _ in range(min(per_host, pending) - busy[key]):
                            if len(running) < slots:
                                running[pool.submit(self._work, key)] = key
                                busy[key] += 1
                    if not running:
                        return
                    finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in finished:
                        del running[future]
                        future.result()  # a disk or manifest error stops the crawl; the frontier stays
            except BaseException:
                self.stop.set()
                raise

    def _work(self, key: str) -> None:
        host = self._host(key)
        while not self.stop.is_set():
            if host.given_up is not None:
                return self._sweep(host)
            item = self._claim(key)
            if item is None:
                return
            try:
                self._finished(item, host.key, self._process(item, host))
            except HostGivenUp as e:
                self._release(item)  # the sweep records this item too
                self._give_up(host, e)
            except Stopped:
                return
            except (OSError, sqlite3.Error, MemoryError):
                raise  # the disk or the manifest: the crawl stops, and the frontier keeps its place
            except Exception as e:  # a bug that one item sets off: recorded, or every resume dies on it
                self._bug(item, host, e)
            finally:
                self._release(item)

    def _bug(self, item: Item, host: Host, error: Exception) -> None:
        # The log names the host, not the URL: Prefect's database keeps logs, a takedown cannot reach it.
        log.error("scrape: a bug on a %s of %s; recorded as failed", item.kind, host.key, exc_info=error)
        reason = f"internal error, please report it: {type(error).__name__}: {error}"[:500]
        self._finished(item, host.key, self._handler(item).record_unfetched(item, "failed", reason))

    def _claim(self, key: str) -> Item | None:
        with self._lock:
            item = self.manifest.next_pending(key, self._claimed)
            if item is not None:
                self._claimed.add(item.url)
            return item

    def _release(self, item: Item) -> None:
        with self._lock:
            self._claimed.discard(item.url)

    def _host(self, key: str) -> Host:
        with self._lock:
            if key not in self.hosts:
                c = self.config
                on_pause = partial(self.manifest.record_host_times, key, "paused_until")
                throttle = HostThrottle.for_host(c, on_pause)
                throttle.restore(*self.manifest.host_times(key), self.interrupted)
                self.hosts[key] = Host(
                    key=key,
                    throttle=throttle,
                    downloader=Downloader(
                        c.user_agent,
                        self.guard,
                        timeout=c.timeout,
                        total_timeout=c.total_timeout,
                        connections=c.connections_per_host,
                    ),
                )
            return self.hosts[key]

    def _process(self, item: Item, host: Host) -> ItemDone:
        if self.manifest.forgotten(item.url):
            self.manifest.mark_done(item.url)
            return ItemDone("forgotten")
        return self._handler(item).handle(item, host)

    def _handler(self, item: Item) -> PageHandler | ImageHandler:
        return self.pages if item.kind == "page" else self.images

    def _finished(self, item: Item, host: str, result: ItemDone) -> None:
        if result.over_limit:
            self.tally.add(host, "over_limit", result.over_limit)
        if result.over_page_limit:
            self.tally.add(host, "over_page_limit", result.over_page_limit)
            self.tally.capped(item.url)
        self.tally.add(host, result.status)
        with self._lock:
            self.done += 1
            self.total += result.added
            done, total = self.done, self.total
        # Host, not URL: progress messages end up in Prefect's database, which a takedown cannot reach.
        self.progress(done, total, f"{result.status} on {host}")

    # ------------------------------------------------------------ hosts that are out

    def _give_up(self, host: Host, error: HostGivenUp) -> None:
        if host.given_up is None:
            host.given_up = error
            self.tally.note(f"{host.key}: given up: {error.reason}")
        self._sweep(host)

    def _sweep(self, host: Host) -> None:
        """Record every pending URL of a given-up host with the reason, so the crawl can finish."""
        error = host.given_up
        while (item := self._claim(host.key)) is not None:
            try:
                done = self._handler(item).record_unfetched(item, error.status, error.reason)
                self._finished(item, host.key, done)
            finally:
                self._release(item)
