"""Per-host pacing: a delay between requests, a cap on connections, pauses for Retry-After and backoff."""

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC
from email.utils import parsedate_to_datetime

from scraper.config import ScrapeConfig


class Stopped(Exception):
    """The crawl is stopping (interrupted); the item stays in the frontier for the next run."""


OnPause = Callable[[float], None]  # on_pause(wall-clock time the pause ends)


class HostThrottle:
    """Spaces requests to one host.

    A request may start once fewer than `connections` are in flight and `delay` (stretched by up to
    `jitter`) has passed since the previous request *ended*: measuring from the end means the
    server never sees two requests closer than the delay, however long a response takes.
    `on_pause` is told when each pause ends, so a later crawler can keep to it (see `restore`).
    """

    def __init__(
        self,
        delay: float,
        jitter: float = 0.0,
        connections: int = 1,
        seed: int | None = None,
        on_pause: OnPause | None = None,
    ):
        self.delay = delay
        self.jitter = jitter
        self.connections = connections
        self.on_pause = on_pause or (lambda until: None)
        self._ready_at = 0.0
        self._last_end: float | None = None
        self._in_flight = 0
        self._cond = threading.Condition()
        self._rng = random.Random(seed)

    @classmethod
    def for_host(cls, config: ScrapeConfig, on_pause: OnPause | None = None) -> "HostThrottle":
        """A host's throttle as `[scrape]` sets it: `default_delay` until robots.txt names its own."""
        return cls(config.default_delay, config.delay_jitter, config.connections_per_host, on_pause=on_pause)

    def restore(self, last_end: float | None, paused_until: float | None, interrupted: bool) -> None:
        """Carry on from earlier crawlers (wall-clock times): the next request waits for the delay
        after their last request and for a pause they were in. After a crawler that was killed,
        which may have had a request in flight, the delay counts from now."""
        now, wall = time.monotonic(), time.time()
        with self._cond:
            if interrupted:
                self._last_end = now
            elif last_end is not None:
                self._last_end = now - (wall - last_end)
            if self._last_end is not None:
                self._ready_at = max(self._ready_at, self._last_end + self._gap())
            if paused_until is not None:
                self._ready_at = max(self._ready_at, now + (paused_until - wall))

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

    def last_end(self) -> float | None:
        """When the last request ended, as a wall-clock time; None before the first."""
        with self._cond:
            if self._last_end is None:
                return None
            return time.time() - (time.monotonic() - self._last_end)

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
        self.on_pause(time.time() + seconds)


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
