"""The scrape stage: a polite, resumable crawl from seed pages to content-addressed images.

Parts, each behind a small interface:
  manifest.Manifest     frontier (persisted), URL and page records, robots cache, raw manifest
  politeness.HostThrottle  per-host delay, connection cap, Retry-After pauses and backoff
  robots                robots.txt policies (Protego) and noai/noindex opt-outs
  downloader.Downloader    one guarded, streamed, capped request (SSRF guard on every hop)
  extract.extract       HTML -> links and image candidates
  images.inspect_image  magic bytes, header dimensions, full decode
  store.RawStore        raw/<aa>/<sha256>.<ext>
This module schedules hosts in parallel (one worker thread per host connection) and decides what
each response means.
"""

import ipaddress
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tqdm import tqdm

from common.files import sha256_bytes
from common.layout import DataRoot
from common.report import BadInputError, StageReport
from scraper.config import PLACEHOLDER_CONTACT, ScrapeConfig
from scraper.downloader import AddressGuard, Downloader, Fetched, FetchError
from scraper.extract import ImageCandidate, extract
from scraper.images import SNIFF_BYTES, NotAnImage, describe, inspect_image, sniff_type
from scraper.manifest import URL_COLUMNS, Item, Manifest, now_iso
from scraper.politeness import HostThrottle, Stopped, retry_after_seconds
from scraper.robots import (
    MAX_ROBOTS_BYTES,
    RobotsPolicy,
    agent_token,
    decode_robots,
    directives_opt_out,
    header_opt_out,
)
from scraper.store import RawStore
from scraper.urls import host_allowed, host_key, normalize, origin, trap_reason

IMAGE_STATUSES = (
    "fetched",
    "not_modified",
    "duplicate",
    "robots",
    "opted_out",
    "too_small",
    "not_image",
    "failed",
)
REDIRECTS = (301, 302, 303, 307, 308)
HTML_TYPES = ("text/html", "application/xhtml+xml")
Progress = Callable[[int, int, str], None]


class HostGivenUp(Exception):
    """A host is out for this crawl (refused address, unreachable robots.txt, keeps failing)."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # what its remaining images are recorded as


@dataclass
class Outcome:
    """What asking for one frontier item came to, redirects followed."""

    kind: str  # response, redirected, robots, forgotten, failed
    url: str
    fetched: Fetched | None = None
    reason: str = ""


@dataclass
class Host:
    key: str
    throttle: HostThrottle
    downloader: Downloader
    policies: dict[str, RobotsPolicy] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failures: int = 0  # transient failures in a row
    given_up: HostGivenUp | None = None


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
    root.raw_dir.mkdir(parents=True, exist_ok=True)
    with Manifest(root.raw_manifest) as manifest:
        crawler = Crawler(config, root, manifest, force=force, on_progress=on_progress, progress_bar=bar)
        report = crawler.run()
    report.outputs = {"raw": str(root.raw_dir), "manifest": str(root.raw_manifest)}
    report.seconds = time.monotonic() - started
    return report


def check_config(config: ScrapeConfig) -> None:
    if not config.seeds:
        raise BadInputError(
            '[scrape] seeds is empty: add at least one start page URL, e.g. seeds = ["https://…"]'
        )
    allowed = allowed_hosts(config)
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


def allowed_hosts(config: ScrapeConfig) -> list[str]:
    return config.allowed_hosts or sorted({urlsplit(s).hostname or "" for s in config.seeds})


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


class Tally:
    """Counts by host and status, shared by the worker threads."""

    def __init__(self) -> None:
        self.by_host: dict[str, Counter] = defaultdict(Counter)
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def add(self, host: str, status: str, n: int = 1) -> None:
        with self._lock:
            self.by_host[host][status] += n

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def totals(self) -> Counter:
        total: Counter = Counter()
        for counts in self.by_host.values():
            total.update(counts)
        return total


class ProgressReporter:
    """on_progress(done, total, message) at most every `interval` seconds, and a tqdm bar."""

    def __init__(self, callback: Progress | None, bar: bool, interval: float = 0.2) -> None:
        self.callback = callback
        self.interval = interval
        self.bar = tqdm(
            total=0, unit="url", desc="scrape", disable=not bar, file=sys.stderr, dynamic_ncols=True
        )
        self.last = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int, message: str, final: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not final and now - self.last < self.interval:
                return
            self.last = now
            self.bar.total, self.bar.n = total, done
            self.bar.set_postfix_str(message[-60:], refresh=False)
            self.bar.refresh()
            if self.callback is not None:
                self.callback(done, total, message)

    def close(self) -> None:
        self.bar.close()


class Crawler:
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
        self.store = RawStore(root)
        self.guard = AddressGuard(config.allow_networks)
        self.token = agent_token(config.user_agent)
        self.allowed = allowed_hosts(config)
        self.limits = {"page": config.max_pages, "image": config.max_images}
        self.hosts: dict[str, Host] = {}
        self.tally = Tally()
        self.stop = threading.Event()
        self.progress = ProgressReporter(on_progress, progress_bar)
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self.done = self.total = 0

    # ------------------------------------------------------------ the run

    def run(self) -> StageReport:
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
            self.progress(self.done, self.total, "done", final=True)
            self.progress.close()
        report = self._report()
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
                        future.result()  # a bug in a worker stops the crawl; the frontier keeps its place
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
                self._process(item, host)
            except HostGivenUp as e:
                self._release(item)  # the sweep records this item too
                self._give_up(host, e)
            except Stopped:
                return
            finally:
                self._release(item)

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
                self.hosts[key] = Host(
                    key=key,
                    throttle=HostThrottle(c.default_delay, c.delay_jitter, c.connections_per_host),
                    downloader=Downloader(
                        c.user_agent,
                        self.guard,
                        timeout=c.timeout,
                        total_timeout=c.total_timeout,
                        connections=c.connections_per_host,
                    ),
                )
            return self.hosts[key]

    def _finished(self, item: Item, host: str, status: str, added: int = 0) -> None:
        self.tally.add(host, status)
        with self._lock:
            self.done += 1
            self.total += added
            done, total = self.done, self.total
        self.progress(done, total, f"{status} {item.url}")

    # ------------------------------------------------------------ one item

    def _process(self, item: Item, host: Host) -> None:
        if self.manifest.forgotten(item.url):
            self.manifest.mark_done(item.url)
            return self._finished(item, host.key, "forgotten")
        if item.kind == "page":
            self._visit_page(item, host)
        else:
            self._fetch_image(item, host)

    def _request(self, item: Item, host: Host, **get_options) -> Outcome:
        """GET the item's URL, following same-host redirects here and handing cross-host ones to the
        frontier (so the other host's robots.txt and delay apply). Every hop is checked again; a hop
        that is refused is recorded against the last URL actually requested."""
        url, last = item.url, None
        for hop in range(self.config.max_redirects - item.hops + 1):
            via = f"redirected to {url}: " if last else ""
            if last and self.manifest.forgotten(url):
                return Outcome("forgotten", url)
            if last and (reason := self._refusal(url)):
                return Outcome("failed", last, reason=via + reason)
            policy = self._policy(host, url)
            if not policy.allows(url, self.token):
                return Outcome(
                    "robots", last or url, reason=f"{via}disallowed by robots.txt {policy.reason}".strip()
                )
            headers = {} if self.force else self._conditional_headers(url, item.kind)
            try:
                fetched = self._get(host, url, headers=headers, **get_options)
            except FetchError as e:
                return Outcome("failed", url, reason=e.reason)
            location = fetched.headers.get("Location")
            if fetched.status not in REDIRECTS or not location:
                return Outcome("response", url, fetched)
            target = normalize(location, url)
            if target is None:
                return Outcome("failed", url, reason=f"redirect to a non-http(s) URL {location[:200]!r}")
            if host_key(target) != host.key:
                return self._redirect_elsewhere(item, url, target, item.hops + hop + 1)
            last, url = url, target
        return Outcome("failed", last or url, reason=f"more than {self.config.max_redirects} redirects")

    def _redirect_elsewhere(self, item: Item, source: str, target: str, hops: int) -> Outcome:
        if hops > self.config.max_redirects:
            return Outcome("failed", source, reason=f"more than {self.config.max_redirects} redirects")
        if reason := self._refusal(target):
            return Outcome("failed", source, reason=f"redirected to {target}: {reason}")
        moved = Item(target, item.kind, host_key(target), item.depth, item.page_url, item.meta, hops)
        added, _ = self.manifest.enqueue([moved], {})
        with self._lock:
            self.total += added
        return Outcome("redirected", target)

    def _refusal(self, url: str) -> str | None:
        if not host_allowed(url, self.allowed):
            return "host not in allowed_hosts"
        return trap_reason(url, self.config.max_url_length)

    def _get(self, host: Host, url: str, **options) -> Fetched:
        """One request with this host's pacing, retried after transient errors with exponential
        backoff; 429/503 pause the whole host for Retry-After. Returns the last response if every
        try was an error status; raises FetchError if every try failed outright."""
        c = self.config
        fetched: Fetched | None = None
        for attempt in range(c.max_retries + 1):
            backoff = c.backoff * 2**attempt
            try:
                with host.throttle.turn(self.stop):
                    fetched = host.downloader.get(url, **options)
            except FetchError as e:
                if e.refused:
                    raise HostGivenUp(e.reason) from None
                if not e.transient or attempt == c.max_retries:
                    self._failure(host, backoff, e.reason, e.transient)
                    raise
                self._failure(host, backoff, e.reason)
                continue
            if fetched.status != 429 and fetched.status < 500:
                host.failures = 0
                return fetched
            wait_s = retry_after_seconds(fetched.headers.get("Retry-After"))
            if wait_s is not None and wait_s > c.max_retry_after:
                raise HostGivenUp(
                    f"asked to come back in {wait_s:.0f} s (Retry-After), over max_retry_after "
                    f"{c.max_retry_after:g} s; try again later"
                )
            self._failure(host, backoff if wait_s is None else wait_s, f"HTTP {fetched.status}")
        return fetched

    def _failure(self, host: Host, pause: float, reason: str, transient: bool = True) -> None:
        if not transient:
            return
        host.failures += 1
        if host.failures >= self.config.max_host_failures:
            raise HostGivenUp(f"{host.failures} failures in a row, the last: {reason}")
        host.throttle.pause(pause)

    def _conditional_headers(self, url: str, kind: str) -> dict[str, str]:
        if kind == "page":
            row = self.manifest.page_row(url)
            usable = row is not None and row["status"] in ("fetched", "not_modified")
        else:
            row = self.manifest.url_row(url)
            usable = row is not None and row["status"] not in ("failed", "robots", "opted_out")
        if not usable:
            return {}
        headers = {}
        if row["etag"]:
            headers["If-None-Match"] = row["etag"]
        if row["last_modified"]:
            headers["If-Modified-Since"] = row["last_modified"]
        return headers

    # ------------------------------------------------------------ robots.txt

    def _policy(self, host: Host, url: str) -> RobotsPolicy:
        """The robots.txt policy for the URL's origin: from memory, the manifest (under 24 h) or the site."""
        key = origin(url)
        with host.lock:
            policy = host.policies.get(key)
            if policy is None:
                policy = self.manifest.robots(key)
                if policy is None or not policy.fresh(self.config.robots_max_age):
                    policy = self._fetch_robots(host, key)
                    self.manifest.save_robots(key, policy)
                host.policies[key] = policy
                self._apply_delay(host, policy)
        if policy.verdict == "disallow_all":
            raise HostGivenUp(policy.reason, status="robots")
        return policy

    def _fetch_robots(self, host: Host, key: str) -> RobotsPolicy:
        url = f"{key}/robots.txt"
        for _ in range(6):  # RFC 9309: follow at least five redirects
            try:
                fetched = self._get(host, url, max_bytes=MAX_ROBOTS_BYTES, truncate=True)
            except FetchError as e:
                return _unreachable(f"{url} unreachable ({e.reason})")
            location = fetched.headers.get("Location")
            if fetched.status in REDIRECTS and location and (target := normalize(location, url)):
                url = target
                continue
            if fetched.status == 200:
                text = decode_robots(fetched.body, fetched.headers.get("Content-Type"))
                return RobotsPolicy("rules", text, fetched_at=time.time())
            if 400 <= fetched.status < 500 and fetched.status != 429:
                return RobotsPolicy(
                    "allow_all", reason=f"({url}: HTTP {fetched.status})", fetched_at=time.time()
                )
            return _unreachable(f"{url} answered HTTP {fetched.status}")
        return RobotsPolicy("allow_all", reason="(robots.txt redirects too often)", fetched_at=time.time())

    def _apply_delay(self, host: Host, policy: RobotsPolicy) -> None:
        delay = policy.delay(self.token)
        if delay is None:
            return
        if delay > self.config.max_crawl_delay:
            raise HostGivenUp(
                f"robots.txt asks for {delay:g} s between requests, over max_crawl_delay "
                f"{self.config.max_crawl_delay:g} s",
                status="robots",
            )
        host.throttle.set_delay(delay)

    # ------------------------------------------------------------ pages

    def _visit_page(self, item: Item, host: Host) -> None:
        out = self._request(item, host, max_bytes=self.config.max_page_bytes, check_headers=_html_only)
        row = {"url": out.url, "host": host_key(out.url), "fetched_at": now_iso()}
        if out.kind in ("redirected", "forgotten"):
            self.manifest.mark_done(item.url)
            return self._finished(item, host.key, out.kind)
        if out.kind in ("robots", "failed"):
            status = "robots" if out.kind == "robots" else "pages_failed"
            self.manifest.finish_page(item.url, row | {"status": out.kind, "error": out.reason}, [], {})
            return self._finished(item, host.key, status)
        fetched = out.fetched
        row |= {"http_status": fetched.status, "etag": fetched.headers.get("ETag")}
        row["last_modified"] = fetched.headers.get("Last-Modified")
        if fetched.status == 304 and (previous := self.manifest.page_row(out.url)):
            row = previous | {"status": "not_modified", "http_status": 304}
            page_opt_out, nofollow = previous["opt_out"], bool(previous["nofollow"])
            links = _json_list(previous["links"])
            images = [ImageCandidate(**d) for d in _json_list(previous["images"])]
        elif fetched.status != 200 or fetched.stopped:
            error = fetched.stopped or f"HTTP {fetched.status}"
            self.manifest.finish_page(item.url, row | {"status": "failed", "error": error}, [], {})
            return self._finished(item, host.key, "pages_failed")
        else:
            page = extract(
                _decode_html(fetched),
                out.url,
                follow=self.config.follow,
                follow_pattern=self.config.follow_pattern,
                image_scope=self.config.image_scope,
                agent_token=self.token,
                allowed_types=tuple(self.config.allowed_types),
            )
            header = header_opt_out(fetched.headers.get("X-Robots-Tag"), self.token)
            page_opt_out = header or directives_opt_out(page.robots)
            nofollow = bool({"nofollow", "none"} & page.robots) or header == "none"
            links, images = page.links, page.images
            row |= {"status": "fetched", "opt_out": page_opt_out, "nofollow": int(nofollow)}
            row |= {"links": json.dumps(links), "images": json.dumps([c.to_dict() for c in images])}
        found = self._found(item, out.url, links if not nofollow else [], images, page_opt_out)
        added, over = self.manifest.finish_page(item.url, row, found, self.limits)
        if over:
            self.tally.add(host.key, "over_limit", over)
        self._finished(item, host.key, "pages", added)

    def _found(
        self, item: Item, page_url: str, links: list[str], images: list[ImageCandidate], opt_out: str | None
    ) -> list[Item]:
        """Frontier items for a page's links (within depth, hosts and trap limits) and images."""
        found = []
        if item.depth < self.config.max_depth:
            for url in links:
                if self._refusal(url) is None:
                    found.append(Item(url, "page", host_key(url), item.depth + 1, page_url))
        for candidate in images:
            if self._refusal(candidate.url) is None:
                meta = candidate.to_dict() | ({"opt_out": opt_out} if opt_out else {})
                meta.pop("url")
                found.append(
                    Item(candidate.url, "image", host_key(candidate.url), item.depth + 1, page_url, meta)
                )
        return found

    # ------------------------------------------------------------ images

    def _fetch_image(self, item: Item, host: Host) -> None:
        if item.meta.get("opt_out"):
            directive = item.meta["opt_out"]
            row = self._image_row(
                item, item.url, "opted_out", opt_out=directive, error=f"page says {directive}"
            )
            return self._record(item, host, row)
        out = self._request(
            item,
            host,
            max_bytes=self.config.max_bytes,
            check_headers=self._image_headers,
            check_head=self._image_head,
        )
        if out.kind in ("redirected", "forgotten"):
            self.manifest.mark_done(item.url)
            return self._finished(item, host.key, out.kind)
        if out.kind in ("robots", "failed"):
            return self._record(item, host, self._image_row(item, out.url, out.kind, error=out.reason))
        fetched = out.fetched
        validators = {
            "etag": fetched.headers.get("ETag"),
            "last_modified": fetched.headers.get("Last-Modified"),
        }
        if fetched.status == 304:
            return self._not_modified(item, host, out.url, validators)
        if fetched.status != 200:
            row = self._image_row(
                item, out.url, "failed", http_status=fetched.status, error=f"HTTP {fetched.status}"
            )
            return self._record(item, host, row)
        fields = {"http_status": 200, **validators}
        if fetched.stopped and fetched.stopped.startswith("opt-out:"):
            directive = fetched.stopped.split(":", 1)[1]
            row = self._image_row(
                item, out.url, "opted_out", opt_out=directive, error=f"X-Robots-Tag: {directive}"
            )
            return self._record(item, host, row | fields)
        if fetched.stopped:
            return self._record(
                item, host, self._image_row(item, out.url, "not_image", error=fetched.stopped, **fields)
            )
        self._keep_image(item, host, out.url, fetched.body, fields)

    def _keep_image(self, item: Item, host: Host, url: str, body: bytes, fields: dict) -> None:
        fields |= {"bytes": len(body), "fetched_at": now_iso()}
        try:
            info = inspect_image(body, self.config.max_pixels)
        except NotAnImage as e:
            return self._record(item, host, self._image_row(item, url, "not_image", error=str(e), **fields))
        fields |= {"type": info.type, "width": info.width, "height": info.height}
        if info.type not in self.config.allowed_types:
            error = f"{info.type} is not in allowed_types"
            return self._record(item, host, self._image_row(item, url, "not_image", error=error, **fields))
        if info.width < self.config.min_width or info.height < self.config.min_height:
            error = f"{info.width}x{info.height} is under {self.config.min_width}x{self.config.min_height}"
            return self._record(item, host, self._image_row(item, url, "too_small", error=error, **fields))
        sha256 = sha256_bytes(body)
        if self.manifest.forgotten(sha256):
            self.manifest.mark_done(item.url)
            return self._finished(item, host.key, "forgotten")
        previous = self.manifest.url_row(url)
        if previous and previous["sha256"] == sha256:
            status = "fetched" if self.force else "not_modified"
        else:
            status = "duplicate" if self.manifest.has_file(sha256) else "fetched"
        file_row = self.store.put(body, info, sha256)
        self._record(item, host, self._image_row(item, url, status, sha256=sha256, **fields), file_row)

    def _not_modified(self, item: Item, host: Host, url: str, validators: dict) -> None:
        previous = self.manifest.url_row(url)
        if previous is None:
            return self._record(
                item, host, self._image_row(item, url, "failed", error="HTTP 304 to a plain GET")
            )
        row = previous | {k: v for k, v in validators.items() if v} | {"error": None}
        if previous["sha256"]:
            row["status"] = "not_modified"
        self.manifest.finish_image(item.url, row)
        self._finished(item, host.key, "not_modified")

    def _image_row(self, item: Item, url: str, status: str, **fields) -> dict:
        meta = item.meta
        row = dict.fromkeys(URL_COLUMNS)
        row |= {"url": url, "page_url": item.page_url, "host": host_key(url), "status": status}
        row |= {"alt": meta.get("alt"), "caption": meta.get("caption"), "licence": meta.get("licence")}
        row["licence"] = row["licence"] or self.config.licence
        return row | fields

    def _record(self, item: Item, host: Host, row: dict, file_row: dict | None = None) -> None:
        """Write an image's row, never trading an earlier good copy for a failure: a URL that is
        unreachable or newly disallowed keeps its stored file and provenance, with the reason noted."""
        status, previous = row["status"], self.manifest.url_row(row["url"])
        if previous and previous["sha256"] and row["status"] in ("failed", "robots"):
            row = previous | {"error": f"{row['status']} at re-crawl ({row['error']}); earlier copy kept"}
        elif previous and previous["sha256"] and row["status"] == "opted_out":
            keep = ("sha256", "bytes", "type", "width", "height", "fetched_at")
            row = row | {k: previous[k] for k in keep if row.get(k) is None}
        self.manifest.finish_image(item.url, row, file_row)
        self._finished(item, host.key, status)

    def _image_headers(self, fetched: Fetched) -> str | None:
        directive = header_opt_out(fetched.headers.get("X-Robots-Tag"), self.token)
        return f"opt-out:{directive}" if directive else None

    def _image_head(self, head: bytes) -> str | None:
        kind = sniff_type(head[:SNIFF_BYTES])
        if kind is None:
            return f"not an image: {describe(head[:SNIFF_BYTES])}"
        if kind not in self.config.allowed_types:
            return f"{kind} is not in allowed_types"
        return None

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
                if item.kind == "page":
                    row = {"url": item.url, "host": host.key, "status": error.status, "error": error.reason}
                    self.manifest.finish_page(item.url, row | {"fetched_at": now_iso()}, [], {})
                    self._finished(item, host.key, "robots" if error.status == "robots" else "pages_failed")
                else:
                    self._record(
                        item, host, self._image_row(item, item.url, error.status, error=error.reason)
                    )
            finally:
                self._release(item)

    # ------------------------------------------------------------ the summary

    def _report(self) -> StageReport:
        totals = self.tally.totals()
        counts = {s: totals.get(s, 0) for s in (*IMAGE_STATUSES, "pages")}
        for extra in ("pages_failed", "forgotten", "redirected", "over_limit"):
            if totals.get(extra):
                counts[extra] = totals[extra]
        given_up = sum(1 for h in self.hosts.values() if h.given_up is not None)
        if given_up:
            counts["hosts_given_up"] = given_up
        rows, notes = [], []
        for key in sorted(self.tally.by_host):
            c = self.tally.by_host[key]
            rows.append({"host": key, **{s: c.get(s, 0) for s in (*IMAGE_STATUSES, "pages", "pages_failed")}})
            parts = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if n)
            notes.append(f"{key}: {parts}")
        if totals.get("over_limit"):
            notes.append(
                f"{totals['over_limit']} URLs not visited: max_pages {self.config.max_pages} or "
                f"max_images {self.config.max_images} reached"
            )
        return StageReport(
            stage="scrape", counts=counts, notes=notes + self.tally.notes, tables={"hosts": rows}
        )


def _unreachable(reason: str) -> RobotsPolicy:
    return RobotsPolicy(
        "disallow_all",
        reason=f"{reason}: RFC 9309 says disallow all; tried again next crawl",
        fetched_at=time.time(),
    )


def _html_only(fetched: Fetched) -> str | None:
    kind = (fetched.headers.get("Content-Type") or "text/html").split(";")[0].strip().lower()
    return None if kind in HTML_TYPES else f"not HTML ({kind})"


def _decode_html(fetched: Fetched) -> str | bytes:
    """Text when the server names a charset, else bytes for BeautifulSoup to sniff (<meta charset>)."""
    content_type = fetched.headers.get("Content-Type") or ""
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset":
            try:
                return fetched.body.decode(value.strip("\"' "), errors="replace")
            except LookupError:
                break
    return fetched.body


def _json_list(text: str | None) -> list:
    return json.loads(text) if text else []
