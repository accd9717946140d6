"""What a crawl tells: how each frontier item ended, counts per host and status, progress while the
crawl runs (callback and tqdm bar), and the stage's report at the end (docs/scraper.md, "The report").
"""

import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from common.report import StageReport
from scraper.config import ScrapeConfig

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
# reported when non-zero
EXTRA_COUNTS = ("pages_failed", "forgotten", "redirected", "over_limit", "over_page_limit")
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ItemDone:
    """How one frontier item ended: the status it is counted under, the frontier items it added,
    those it found but left out because `max_pages` / `max_images` was reached, and the images of a
    page beyond `max_images_per_page`."""

    status: str
    added: int = 0
    over_limit: int = 0
    over_page_limit: int = 0


class Tally:
    """Counts by host and status, shared by the worker threads."""

    def __init__(self) -> None:
        self.by_host: dict[str, Counter] = defaultdict(Counter)
        self.notes: list[str] = []
        self.capped_pages: list[str] = []  # pages with more images than max_images_per_page
        self._lock = threading.Lock()

    def add(self, host: str, status: str, n: int = 1) -> None:
        with self._lock:
            self.by_host[host][status] += n

    def capped(self, page_url: str) -> None:
        with self._lock:
            self.capped_pages.append(page_url)

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


def build_report(tally: Tally, hosts_given_up: int, config: ScrapeConfig) -> StageReport:
    """The scrape stage's report: totals, one note and one table row per host, limits reached."""
    totals = tally.totals()
    counts = {s: totals.get(s, 0) for s in (*IMAGE_STATUSES, "pages")}
    counts |= {extra: totals[extra] for extra in EXTRA_COUNTS if totals.get(extra)}
    if hosts_given_up:
        counts["hosts_given_up"] = hosts_given_up
    rows, notes = [], []
    for key in sorted(tally.by_host):
        c = tally.by_host[key]
        rows.append({"host": key, **{s: c.get(s, 0) for s in (*IMAGE_STATUSES, "pages", "pages_failed")}})
        parts = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if n)
        notes.append(f"{key}: {parts}")
    if totals.get("over_limit"):
        notes.append(
            f"{totals['over_limit']} URLs not visited: max_pages {config.max_pages} or "
            f"max_images {config.max_images} reached"
        )
    if pages := tally.capped_pages:
        listed = ", ".join(pages[:3]) + (f" and {len(pages) - 3} more" if len(pages) > 3 else "")
        notes.append(
            f"{totals['over_page_limit']} image URLs not visited: over max_images_per_page "
            f"{config.max_images_per_page} on {listed}"
        )
    return StageReport(stage="scrape", counts=counts, notes=notes + tally.notes, tables={"hosts": rows})
