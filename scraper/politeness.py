"""Per-host pacing: a delay between requests, a cap on connections, pauses for Retry-After and backoff."""

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from email.utils import parsedate_to_datetime

from scraper.config import ScrapeConfig


class Stopped(Exception):
    """The crawl is stopping (interrupted); the item stays in the frontier for the next run."""


class HostThrottle:
    """Spaces requests to one host.

    A request may start once fewer than `connections` are in flight and `delay` (stretched by up to
    `jitter`) has passed since the previous request *ended*: measuring from the end means the
    server never sees two requests closer than the delay, however long a response takes.
    """

    def __init__(self, delay: float, jitter: float = 0.0, connections: int = 1, seed: int | None = None):
        self.delay = delay
        self.jitter = jitter
        self.connections = connections
        self._ready_at = 0.0
        self._last_end: float | None = None
        self._in_flight = 0
        self._cond = threading.Condition()
        self._rng = random.Random(seed)

    @classmethod
    def for_host(cls, config: ScrapeConfig) -> "HostThrottle":
        """A host's throttle as `[scrape]` sets it: `default_delay` until robots.txt names its own."""
        return cls(config.default_delay, config.delay_jitter, config.connections_per_host)

    def _gap(self) -> float:
        return self.delay * (1.0 + self.jitter * self._rng.random())

    @contextmanager
    def turn(self, stop: threading.Event) -> Iterator[None]:
        """Wait for this host's next slot, hold it for one request, then schedule the next."""
        with self._cond:
            while True:
                if stop.is_set():
                    raise Stopped()
                wait = self._ready_at - time.monotonic()
                if self._in_flight < self.connections and wait <= 0:
                    break
                self._cond.wait(timeout=min(max(wait, 0.001), 0.25))
            self._in_flight += 1
            self._ready_at = time.monotonic() + self._gap()
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._last_end = time.monotonic()
                self._ready_at = max(self._ready_at, self._last_end + self._gap())
                self._cond.notify_all()

    def set_delay(self, delay: float) -> None:
        """A new delay (robots.txt's Crawl-delay), already counted from the previous request's end."""
        with self._cond:
            self.delay = delay
            if self._last_end is not None:
                self._ready_at = max(self._ready_at, self._last_end + self._gap())
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """No request to this host for `seconds` from now (Retry-After, backoff)."""
        with self._cond:
            self._ready_at = max(self._ready_at, time.monotonic() + seconds)
            self._cond.notify_all()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC too
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
