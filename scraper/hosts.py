"""One host's state during a crawl, and the exception that takes a host out of it.

The crawler makes one `Host` per host key; the fetcher, the robots.txt cache and the scheduler's
workers for that host share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scraper.downloader import Downloader
from scraper.politeness import HostThrottle

if TYPE_CHECKING:  # robots.py raises HostGivenUp, so it imports this module
    from scraper.robots import RobotsPolicy


class HostGivenUp(Exception):
    """A host is out for this crawl (refused address, unreachable robots.txt, keeps failing)."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # what its remaining URLs are recorded as


@dataclass
class Host:
    key: str
    throttle: HostThrottle
    downloader: Downloader
    policies: dict[str, RobotsPolicy] = field(default_factory=dict)  # robots.txt per origin
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards `policies`
    failures: int = 0  # transient failures in a row
    given_up: HostGivenUp | None = None
