"""What an image URL comes to: fetched and stored, unchanged, a duplicate, opted out, too small,
not an image, disallowed or failed; one `urls` row each (docs/scraper.md, "The manifest").

The body is read only while the headers carry no opt-out and the first bytes are an allowed image
type; the bytes are then fully decoded before they are stored. A URL that fails or becomes
disallowed on a re-crawl keeps its earlier file and provenance.
"""

from dataclasses import dataclass

from common.clock import now_iso
from common.files import sha256_bytes
from scraper.config import ScrapeConfig
from scraper.crawl_report import ItemDone
from scraper.downloader import Fetched
from scraper.fetcher import Fetcher
from scraper.hosts import Host
from scraper.images import SNIFF_BYTES, NotAnImage, describe, inspect_image, sniff_type
from scraper.manifest import URL_COLUMNS, Item, Manifest
from scraper.robots import header_opt_out
from scraper.store import RawStore
from scraper.urls import host_key


@dataclass
class ImageHandler:
    """Fetches image items and records what each came to."""

    config: ScrapeConfig
    manifest: Manifest
    fetcher: Fetcher
    store: RawStore
    token: str  # our product token, for X-Robots-Tag

    def handle(self, item: Item, host: Host) -> ItemDone:
        if directive := item.meta.get("opt_out"):
            row = self._row(item, item.url, "opted_out", opt_out=directive, error=f"page says {directive}")
            return self._record(item, row)
        out = self.fetcher.request(
            item,
            host,
            max_bytes=self.config.max_bytes,
            check_headers=self._opt_out,
            check_head=self._not_allowed,
        )
        if out.kind in ("redirected", "forgotten"):
            self.manifest.mark_done(item.url)
            return ItemDone(out.kind, out.added)
        if out.kind in ("robots", "failed"):
            return self._record(item, self._row(item, out.url, out.kind, error=out.reason))
        return self._response(item, out.url, out.fetched)

    def record_unfetched(self, item: Item, status: str, reason: str) -> ItemDone:
        """The item's row when it is not (or no longer) fetched: a host given up, a bug on it."""
        return self._record(item, self._row(item, item.url, status, error=reason))

    def _response(self, item: Item, url: str, fetched: Fetched) -> ItemDone:
        validators = {
            "etag": fetched.headers.get("ETag"),
            "last_modified": fetched.headers.get("Last-Modified"),
        }
        if fetched.status == 304:
            return self._not_modified(item, url, validators)
        if fetched.status != 200:
            error = f"HTTP {fetched.status}"
            return self._record(item, self._row(item, url, "failed", http_status=fetched.status, error=error))
        fields = {"http_status": 200, **validators}
        if fetched.stopped and fetched.stopped.startswith("opt-out:"):
            directive = fetched.stopped.split(":", 1)[1]
            row = self._row(item, url, "opted_out", opt_out=directive, error=f"X-Robots-Tag: {directive}")
            return self._record(item, row | fields)
        if fetched.stopped:
            return self._record(item, self._row(item, url, "not_image", error=fetched.stopped, **fields))
        return self._keep(item, url, fetched.body, fields)

    def _keep(self, item: Item, url: str, body: bytes, fields: dict) -> ItemDone:
        """Decode and check the bytes, then store them unless their hash was taken down."""
        fields |= {"bytes": len(body), "fetched_at": now_iso()}
        try:
            info = inspect_image(body, self.config.max_pixels)
        except NotAnImage as e:
            return self._record(item, self._row(item, url, "not_image", error=str(e), **fields))
        fields |= {"type": info.type, "width": info.width, "height": info.height}
        if refusal := self._refusal(info.type, info.width, info.height):
            status, error = refusal
            return self._record(item, self._row(item, url, status, error=error, **fields))
        sha256 = sha256_bytes(body)
        if self.manifest.forgotten(sha256):
            self.manifest.mark_done(item.url)
            return ItemDone("forgotten")
        previous = self.manifest.url_row(url)
        if previous and previous["sha256"] == sha256:
            status = "not_modified"  # the same bytes from the same URL, asked conditionally or not
        else:
            status = "duplicate" if self.manifest.has_file(sha256) else "fetched"
        file_row = self.store.put(body, info, sha256)
        return self._record(item, self._row(item, url, status, sha256=sha256, **fields), file_row)

    def _refusal(self, kind: str, width: int, height: int) -> tuple[str, str] | None:
        """(status, error) for a decoded image we do not keep, or None."""
        c = self.config
        if kind not in c.allowed_types:
            return "not_image", f"{kind} is not in allowed_types"
        if width < c.min_width or height < c.min_height:
            return "too_small", f"{width}x{height} is under {c.min_width}x{c.min_height}"
        return None

    def _not_modified(self, item: Item, url: str, validators: dict) -> ItemDone:
        previous = self.manifest.url_row(url)
        if previous is None:
            return self._record(item, self._row(item, url, "failed", error="HTTP 304 to a plain GET"))
        row = previous | {k: v for k, v in validators.items() if v} | {"error": None}
        if previous["sha256"]:
            row["status"] = "not_modified"
        self.manifest.finish_image(item.url, row)
        return ItemDone("not_modified")

    def _row(self, item: Item, url: str, status: str, **fields) -> dict:
        """A `urls` row for the item's image with its page's provenance."""
        meta = item.meta
        row = dict.fromkeys(URL_COLUMNS)
        row |= {"url": url, "page_url": item.page_url, "host": host_key(url), "status": status}
        row |= {"alt": meta.get("alt"), "caption": meta.get("caption"), "licence": meta.get("licence")}
        row["licence"] = row["licence"] or self.config.licence
        return row | fields

    def _record(self, item: Item, row: dict, file_row: dict | None = None) -> ItemDone:
        """Write an image's row, never trading an earlier good copy for a failure: a URL that is
        unreachable or newly disallowed keeps its stored file and provenance, with the reason noted."""
        status, previous = row["status"], self.manifest.url_row(row["url"])
        if previous and previous["sha256"] and row["status"] in ("failed", "robots"):
            row = previous | {"error": f"{row['status']} at re-crawl ({row['error']}); earlier copy kept"}
        elif previous and previous["sha256"] and row["status"] == "opted_out":
            keep = ("sha256", "bytes", "type", "width", "height", "fetched_at")
            row = row | {k: previous[k] for k in keep if row.get(k) is None}
        self.manifest.finish_image(item.url, row, file_row)
        return ItemDone(status)

    def _opt_out(self, fetched: Fetched) -> str | None:
        """Stops the download when the response's X-Robots-Tag opts the image out."""
        directive = header_opt_out(fetched.robots_tags, self.token)
        return f"opt-out:{directive}" if directive else None

    def _not_allowed(self, head: bytes) -> str | None:
        """Stops the download when the first bytes are not an image type we keep."""
        kind = sniff_type(head[:SNIFF_BYTES])
        if kind is None:
            return f"not an image: {describe(head[:SNIFF_BYTES])}"
        if kind not in self.config.allowed_types:
            return f"{kind} is not in allowed_types"
        return None
