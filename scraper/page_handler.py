"""What a page means: its links (within depth, hosts and trap limits) and images go to the frontier,
its row to the manifest, less any URL taken down. An unchanged page (304) replays the links and images
stored last time; a page that opts out (X-Robots-Tag, <meta name="robots">) passes the opt-out on to
its images.
"""

import json
from dataclasses import dataclass

from common.clock import now_iso
from scraper.config import ScrapeConfig
from scraper.crawl_report import ItemDone
from scraper.downloader import Fetched, declared_charset
from scraper.extract import ImageCandidate, extract
from scraper.fetcher import Fetcher
from scraper.hosts import Host
from scraper.manifest import Item, Manifest
from scraper.robots import directives_opt_out, header_directives, header_opt_out
from scraper.urls import host_key

HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class PageContent:
    """What the crawler takes from a page, read now or replayed from its stored row."""

    links: list[str]
    images: list[ImageCandidate]
    opt_out: str | None  # the directive that opts the page's images out
    nofollow: bool

    @classmethod
    def from_row(cls, row: dict) -> "PageContent":
        images = [ImageCandidate(**d) for d in _json_list(row["images"])]
        return cls(_json_list(row["links"]), images, row["opt_out"], bool(row["nofollow"]))

    def row(self) -> dict:
        """The `pages` columns that hold this content."""
        return {
            "opt_out": self.opt_out,
            "nofollow": int(self.nofollow),
            "links": json.dumps(self.links),
            "images": json.dumps([c.to_dict() for c in self.images]),
        }


@dataclass
class PageHandler:
    """Visits page items: records each page and puts what it links to in the frontier."""

    config: ScrapeConfig
    manifest: Manifest
    fetcher: Fetcher
    token: str  # our product token, for robots meta tags and X-Robots-Tag
    limits: dict[str, int]  # frontier items per kind, at most

    def handle(self, item: Item, host: Host) -> ItemDone:
        out = self.fetcher.request(item, host, max_bytes=self.config.max_page_bytes, check_headers=html_only)
        row = {"url": out.url, "host": host_key(out.url), "fetched_at": now_iso()}
        if out.kind in ("redirected", "forgotten"):
            self.manifest.mark_done(item.url)
            return ItemDone(out.kind, out.added)
        if out.kind in ("robots", "failed"):
            self.manifest.finish_page(item.url, row | {"status": out.kind, "error": out.reason}, [], {})
            return ItemDone("robots" if out.kind == "robots" else "pages_failed")
        fetched = out.fetched
        row |= {"http_status": fetched.status, "etag": fetched.headers.get("ETag")}
        row["last_modified"] = fetched.headers.get("Last-Modified")
        if fetched.status == 304 and (previous := self.manifest.page_row(out.url)):
            row = previous | {"status": "not_modified", "http_status": 304}
            content = self._without_forgotten(PageContent.from_row(previous))
        elif fetched.status != 200 or fetched.stopped:
            error = fetched.stopped or f"HTTP {fetched.status}"
            self.manifest.finish_page(item.url, row | {"status": "failed", "error": error}, [], {})
            return ItemDone("pages_failed")
        else:
            content = self._without_forgotten(self._read(fetched, out.url))
            row |= {"status": "fetched"} | content.row()
        found, capped = self._found(item, out.url, content)
        added, over = self.manifest.finish_page(item.url, row, found, self.limits)
        return ItemDone("pages", added, over, capped)

    def record_unfetched(self, item: Item, status: str, reason: str) -> ItemDone:
        """The page's row when it is not (or no longer) fetched: a host given up, a bug on it."""
        row = {"url": item.url, "host": item.host, "status": status, "error": reason}
        self.manifest.finish_page(item.url, row | {"fetched_at": now_iso()}, [], {})
        return ItemDone("robots" if status == "robots" else "pages_failed")

    def _read(self, fetched: Fetched, url: str) -> PageContent:
        c = self.config
        page = extract(
            _decode_html(fetched),
            url,
            follow=c.follow,
            follow_pattern=c.follow_pattern,
            image_scope=c.image_scope,
            agent_token=self.token,
            allowed_types=tuple(c.allowed_types),
        )
        opt_out = header_opt_out(fetched.robots_tags, self.token) or directives_opt_out(page.robots)
        header = set(header_directives(fetched.robots_tags, self.token))  # obeyed as the meta tag is
        nofollow = bool({"nofollow", "none"} & (page.robots | header))
        return PageContent(page.links, page.images, opt_out, nofollow)

    def _without_forgotten(self, content: PageContent) -> PageContent:
        """The page's content less the URLs taken down: a page that still shows a forgotten image (or
        links to a forgotten page) must not write its URL back into `pages` or the frontier."""
        links = [url for url in content.links if not self.manifest.forgotten(url)]
        images = [c for c in content.images if not self.manifest.forgotten(c.url)]
        return PageContent(links, images, content.opt_out, content.nofollow)

    def _found(self, item: Item, page_url: str, content: PageContent) -> tuple[list[Item], int]:
        """Frontier items for the page's links (unless nofollow) and its first `max_images_per_page`
        images, and how many images were left out for that cap: one page cannot take the budget."""
        found = []
        if item.depth < self.config.max_depth and not content.nofollow:
            for url in content.links:
                if self.fetcher.refusal(url) is None:
                    found.append(Item(url, "page", host_key(url), item.depth + 1, page_url))
        images = [c for c in content.images if self.fetcher.refusal(c.url) is None]
        cap = self.config.max_images_per_page
        for candidate in images[:cap]:
            meta = candidate.to_dict() | ({"opt_out": content.opt_out} if content.opt_out else {})
            meta.pop("url")
            found.append(
                Item(candidate.url, "image", host_key(candidate.url), item.depth + 1, page_url, meta)
            )
        return found, max(0, len(images) - cap)


def html_only(fetched: Fetched) -> str | None:
    """Why the body of a page response is not read (it is not HTML), or None."""
    kind = (fetched.headers.get("Content-Type") or "text/html").split(";")[0].strip().lower()
    return None if kind in HTML_TYPES else f"not HTML ({kind})"


def _decode_html(fetched: Fetched) -> str | bytes:
    """Text when the server names a charset, else bytes for BeautifulSoup to sniff (<meta charset>)."""
    charset = declared_charset(fetched.headers.get("Content-Type"))
    if charset:
        try:
            return fetched.body.decode(charset, errors="replace")
        except (LookupError, ValueError):  # unknown, or a codec (idna, undefined) that raises UnicodeError
            pass
    return fetched.body


def _json_list(text: str | None) -> list:
    return json.loads(text) if text else []
