"""robots.txt (RFC 9309, parsed by Protego): fetching, per-origin caching and Crawl-delay, and the
noai / noindex opt-outs of pages and images.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protego import Protego

from scraper.config import ScrapeConfig
from scraper.downloader import REDIRECT_STATUSES, Fetched, FetchError, declared_charset
from scraper.hosts import Host, HostGivenUp
from scraper.urls import normalize, origin

if TYPE_CHECKING:  # the manifest stores RobotsPolicy, so it imports this module
    from scraper.manifest import Manifest

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB; we read no more
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "none")
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# X-Robots-Tag directives that carry a value after a colon (so the colon names no user agent).
_VALUED = ("unavailable_after", "max-snippet", "max-image-preview", "max-video-preview")


@dataclass
class RobotsPolicy:
    """The verdict for one origin: rules from a robots.txt, allow all (4xx) or disallow all (5xx)."""

    verdict: str  # "rules", "allow_all" or "disallow_all"
    body: str = ""
    reason: str = ""
    fetched_at: float = 0.0

    def __post_init__(self) -> None:
        self._parser = Protego.parse(self.body) if self.verdict == "rules" else None

    def allows(self, url: str, agent: str) -> bool:
        if self.verdict == "rules":
            return self._parser.can_fetch(url, agent)
        return self.verdict == "allow_all"

    def delay(self, agent: str) -> float | None:
        """Seconds between requests from Crawl-delay and Request-rate (the stricter), or None."""
        if self._parser is None:
            return None
        delays = []
        if (crawl_delay := self._parser.crawl_delay(agent)) is not None:
            delays.append(float(crawl_delay))
        rate = self._parser.request_rate(agent)
        if rate is not None and rate.requests:
            delays.append(float(rate.seconds) / rate.requests)
        return max(delays) if delays else None

    def fresh(self, max_age: float) -> bool:
        # A disallow-all verdict (robots.txt unreachable) is never reused: the next crawl tries again.
        return self.verdict != "disallow_all" and time.time() - self.fetched_at < max_age


Send = Callable[..., Fetched]  # one request to the host, with its pacing and retries


class RobotsCache:
    """The policy for each origin: from the host's memory, the manifest (younger than
    `robots_max_age`) or the site. A Crawl-delay is applied to the host when the policy is learnt."""

    def __init__(self, config: ScrapeConfig, manifest: Manifest, token: str) -> None:
        self.max_age = config.robots_max_age
        self.max_crawl_delay = config.max_crawl_delay
        self.manifest = manifest
        self.token = token

    def policy(self, host: Host, url: str, send: Send) -> RobotsPolicy:
        """The policy for the URL's origin; raises HostGivenUp when it disallows everything."""
        key = origin(url)
        with host.lock:
            policy = host.policies.get(key)
            if policy is None:
                policy = self.manifest.robots(key)
                if policy is None or not policy.fresh(self.max_age):
                    policy = fetch_robots(key, send)
                    self.manifest.save_robots(key, policy)
                host.policies[key] = policy
                self._apply_delay(host, policy)
        if policy.verdict == "disallow_all":
            raise HostGivenUp(policy.reason, status="robots")
        return policy

    def _apply_delay(self, host: Host, policy: RobotsPolicy) -> None:
        delay = policy.delay(self.token)
        if delay is None:
            return
        if delay > self.max_crawl_delay:
            raise HostGivenUp(
                f"robots.txt asks for {delay:g} s between requests, over max_crawl_delay "
                f"{self.max_crawl_delay:g} s",
                status="robots",
            )
        host.throttle.set_delay(delay)


def fetch_robots(site: str, send: Send) -> RobotsPolicy:
    """GET `site`/robots.txt and turn the answer into a policy as RFC 9309 says."""
    url = first = f"{site}/robots.txt"
    for _ in range(6):  # RFC 9309: follow at least five redirects
        try:
            fetched = send(url, max_bytes=MAX_ROBOTS_BYTES, truncate=True)
        except FetchError as e:
            via = f"redirected to {url}: " if url != first else ""
            return _unreachable(f"{first} unreachable ({via}{e.reason})")
        location = fetched.headers.get("Location")
        if fetched.status in REDIRECT_STATUSES and location and (target := normalize(location, url)):
            url = target
            continue
        if fetched.status == 200:
            text = decode_robots(fetched.body, fetched.headers.get("Content-Type"))
            return RobotsPolicy("rules", text, fetched_at=time.time())
        if 400 <= fetched.status < 500 and fetched.status != 429:
            return RobotsPolicy("allow_all", reason=f"({url}: HTTP {fetched.status})", fetched_at=time.time())
        return _unreachable(f"{url} answered HTTP {fetched.status}")
    return RobotsPolicy("allow_all", reason="(robots.txt redirects too often)", fetched_at=time.time())


def _unreachable(reason: str) -> RobotsPolicy:
    return RobotsPolicy(
        "disallow_all",
        reason=f"{reason}: RFC 9309 says disallow all; tried again next crawl",
        fetched_at=time.time(),
    )


def decode_robots(data: bytes, content_type: str | None = None) -> str:
    """robots.txt bytes to text: BOMs honoured, UTF-8 expected, the declared charset or Latin-1 else."""
    truncated = len(data) > MAX_ROBOTS_BYTES
    data = data[:MAX_ROBOTS_BYTES]
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if truncated and e.start >= len(data) - 3:  # a character cut by the size cap
            return data[: e.start].decode("utf-8")
    charset = declared_charset(content_type)
    if charset:
        try:
            return data.decode(charset)
        except (LookupError, ValueError):  # unknown, or a codec like `undefined` that raises UnicodeError
            pass
    return data.decode("cp1252", errors="replace")


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against: `faces-pipeline/0.1 (…)` -> faces-pipeline."""
    return user_agent.split("/")[0].split()[0].strip()


def header_opt_out(lines: str | list[str] | None, token: str) -> str | None:
    """The first opt-out directive of X-Robots-Tag header lines that applies to us, or None."""
    return next((d for d in header_directives(lines, token) if d in OPT_OUT_DIRECTIVES), None)


def header_directives(lines: str | list[str] | None, token: str) -> list[str]:
    """The X-Robots-Tag directives that apply to us (lower case, in order): `noai, nofollow` and
    `noai nofollow` alike.

    `X-Robots-Tag: otherbot: noai` concerns only otherbot; `noai` alone concerns everyone. Each header
    line is its own scope: `otherbot: noindex` on one line does not swallow `noai` on the next.
    """
    found: list[str] = []
    for line in [lines] if isinstance(lines, str) else lines or []:
        found += _line_directives(line, token.lower())
    return found


def _line_directives(line: str, token: str) -> list[str]:
    found, scope = [], None
    for part in line.lower().split(","):
        name, colon, rest = part.partition(":")
        if colon and len(name.split()) == 1 and name.strip() not in _VALUED and rest.strip():
            scope, part = name.strip(), rest
        if scope is None or scope in ("*", token):
            found += directive_words(part)
    return found


def directive_words(text: str) -> list[str]:
    """The directives in robots text separated by spaces or commas (`noai noimageai`, lower case),
    without the values of valued ones: `max-image-preview: none` is no `none`."""
    words = text.lower().replace(",", " ").replace(":", ": ").split()
    found, i = [], 0
    while i < len(words):
        word = words[i].rstrip(":")
        if word in _VALUED:  # skip its value: one word, or the rest (unavailable_after's date)
            i += len(words) if word == "unavailable_after" else 2
            continue
        found.append(word)
        i += 1
    return found


def directives_opt_out(directives: set[str]) -> str | None:
    return next((d for d in OPT_OUT_DIRECTIVES if d in directives), None)
