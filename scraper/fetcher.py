"""From a frontier item to a response: the crawler's retry and redirect middleware.

Every hop of a redirect chain is checked against forgotten URLs, `allowed_hosts`, the crawl-trap
limits and robots.txt before it is requested (and by the downloader's SSRF guard while it is).
Same-host redirects are followed here; cross-host ones go back to the frontier, so the other host's
robots.txt and delay apply. A robots.txt redirect is followed at once, each hop with the pacing of
the host it goes to. Each request waits for the host's throttle and is retried after
transient errors with exponential backoff; a host that keeps failing is given up.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from threading import Event
from urllib.parse import urlsplit

from scraper.config import ScrapeConfig
from scraper.downloader import REDIRECT_STATUSES, Fetched, FetchError
from scraper.hosts import Host, HostGivenUp
from scraper.manifest import Item, Manifest
from scraper.politeness import retry_after_seconds
from scraper.robots import RobotsCache
from scraper.urls import allowed_hosts, host_allowed, host_key, normalize, trap_reason


@dataclass
class Outcome:
    """What asking for one frontier item came to, redirects followed."""

    kind: str  # response, redirected, robots, forgotten, failed
    url: str  # the URL that answered (or the last one requested)
    fetched: Fetched | None = None
    reason: str = ""
    added: int = 0  # frontier items a cross-host redirect added


class Fetcher:
    """Requests for frontier items, shared by all hosts: checks, redirects, pacing and retries."""

    def __init__(
        self,
        config: ScrapeConfig,
        manifest: Manifest,
        robots: RobotsCache,
        token: str,
        stop: Event,
        *,
        force: bool,
        host_for: Callable[[str], Host],
    ) -> None:
        self.config = config
        self.host_for = host_for  # the crawl's Host for a host key
        self.manifest = manifest
        self.robots = robots
        self.token = token
        self.stop = stop
        self.force = force
        self.allowed = allowed_hosts(config.allowed_hosts, config.seeds)

    def refusal(self, url: str) -> str | None:
        """Why the crawler may not visit `url` (a host outside allowed_hosts, a crawl trap), or None."""
        if not host_allowed(url, self.allowed):
            return "host not in allowed_hosts"
        return trap_reason(url, self.config.max_url_length)

    # ------------------------------------------------------------ redirects

    def request(self, item: Item, host: Host, **get_options) -> Outcome:
        """GET the item's URL, following its same-host redirects. A hop that is refused is recorded
        against the last URL actually requested. `get_options` go to `Downloader.get`."""
        url, last = item.url, None
        for hop in range(self.config.max_redirects - item.hops + 1):
            step = self._hop(item, host, url, last, item.hops + hop + 1, get_options)
            if isinstance(step, Outcome):
                return step
            last, url = url, step
        return Outcome("failed", last or url, reason=f"more than {self.config.max_redirects} redirects")

    def _hop(
        self, item: Item, host: Host, url: str, last: str | None, hops: int, get_options: dict
    ) -> Outcome | str:
        """Request one URL of a redirect chain: the final outcome, or the same-host URL to go on with.
        `last` is the URL that redirected here (None for the first hop); `hops` counts this one."""
        if refused := self._refused_hop(host, url, last):
            return refused
        headers = self._conditional_headers(url, item.kind)
        try:
            fetched = self.send(host, url, headers=headers, **get_options)
        except FetchError as e:
            return Outcome("failed", url, reason=e.reason)
        location = fetched.headers.get("Location")
        if fetched.status not in REDIRECT_STATUSES or not location:
            return Outcome("response", url, fetched)
        target = normalize(location, url)
        if target is None:
            reason = f"redirect to an invalid or non-http(s) URL {location[:200]!r}"
            return Outcome("failed", url, reason=reason)
        if host_key(target) != host.key:
            return self._redirect_elsewhere(item, url, target, hops)
        return target

    def _refused_hop(self, host: Host, url: str, last: str | None) -> Outcome | None:
        via = f"redirected to {url}: " if last else ""
        if last and self.manifest.forgotten(url):
            return Outcome("forgotten", url)
        if last and (reason := self.refusal(url)):
            return Outcome("failed", last, reason=via + reason)
        policy = self.robots.policy(host, url, partial(self._send_robots, host))
        if not policy.allows(url, self.token):
            reason = f"{via}disallowed by robots.txt {policy.reason}".strip()
            return Outcome("robots", last or url, reason=reason)
        return None

    def _send_robots(self, host: Host, url: str, **options) -> Fetched:
        """A request for `host`'s robots.txt, or a hop of its redirects: paced by the host it goes to.
        A hop outside allowed_hosts, or to a host that is out, is an error (robots.txt unreachable)."""
        key = host_key(url)
        if key == host.key:
            return self.send(host, url, **options)
        if not host_allowed(url, self.allowed):
            name = urlsplit(url).hostname
            raise FetchError(f"{name} is not in allowed_hosts; add it to follow", transient=False)
        other = self.host_for(key)
        try:
            if other.given_up is not None:
                raise other.given_up
            return self.send(other, url, **options)
        except HostGivenUp as e:
            raise FetchError(e.reason, transient=False) from None

    def _redirect_elsewhere(self, item: Item, source: str, target: str, hops: int) -> Outcome:
        """Hand a cross-host redirect to the frontier as a new item that remembers its hops and the
        URLs that led to it. A target the frontier already has is not queued again: back along the
        chain it is a loop, and an image must not vanish without a row (its target may be a page)."""
        if hops > self.config.max_redirects:
            return Outcome("failed", source, reason=f"more than {self.config.max_redirects} redirects")
        if reason := self.refusal(target):
            return Outcome("failed", source, reason=f"redirected to {target}: {reason}")
        chain = list(dict.fromkeys([*item.meta.get("redirected_from", []), item.url, source]))
        if target in chain:
            return Outcome("failed", source, reason=f"redirect loop: {source} redirects back to {target}")
        meta = item.meta | {"redirected_from": chain}
        moved = Item(target, item.kind, host_key(target), item.depth, item.page_url, meta, hops)
        added, _ = self.manifest.enqueue([moved], {})
        if not added and item.kind == "image":
            reason = f"redirected to {target}, which this crawl already has (as a page or another image)"
            return Outcome("failed", source, reason=reason)
        return Outcome("redirected", target, added=added)

    def _conditional_headers(self, url: str, kind: str) -> dict[str, str]:
        """If-None-Match / If-Modified-Since from the last good answer for `url` (none when forced)."""
        if self.force:
            return {}
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

    # ------------------------------------------------------------ retries

    def send(self, host: Host, url: str, **options) -> Fetched:
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
            self._failure(host, self._retry_after(fetched, backoff), f"HTTP {fetched.status}")
        return fetched

    def _retry_after(self, fetched: Fetched, backoff: float) -> float:
        """How long to pause the host after a 429 or 5xx: its Retry-After, else the backoff."""
        wait_s = retry_after_seconds(fetched.headers.get("Retry-After"))
        if wait_s is not None and wait_s > self.config.max_retry_after:
            raise HostGivenUp(
                f"asked to come back in {wait_s:.0f} s (Retry-After), over max_retry_after "
                f"{self.config.max_retry_after:g} s; try again later"
            )
        return backoff if wait_s is None else wait_s

    def _failure(self, host: Host, pause: float, reason: str, transient: bool = True) -> None:
        if not transient:
            return
        host.failures += 1
        if host.failures >= self.config.max_host_failures:
            raise HostGivenUp(f"{host.failures} failures in a row, the last: {reason}")
        host.throttle.pause(pause)
