from typing import Literal

from pydantic import Field

from common.config import StrictModel

ImageType = Literal["jpeg", "png", "webp", "gif", "bmp"]


class ScrapeConfig(StrictModel):
    """Where to crawl and how politely. One table `[scrape]` in faces.toml."""

    seeds: list[str] = Field(default_factory=list, description="Start page URLs.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts the crawler may visit; empty means the seeds' hosts."
    )
    follow: str = Field("a[href]", description="CSS selector of links to follow (gallery, next page).")
    follow_pattern: str | None = Field(None, description="Regex a followed link's URL must match.")
    max_depth: int = Field(3, ge=0)
    max_pages: int = Field(200, ge=1)
    max_images: int = Field(10_000, ge=1)
    min_width: int = Field(64, ge=1)
    min_height: int = Field(64, ge=1)
    allowed_types: list[ImageType] = Field(default_factory=lambda: ["jpeg", "png", "webp", "gif", "bmp"])
    max_bytes: int = Field(20 * 2**20, ge=1024)
    licence: str | None = Field(None, description="Licence recorded when a page states none.")
    user_agent: str = Field(
        "faces-pipeline/0.1 (+https://example.invalid/set-your-contact-url)",
        description="Real sites require a User-Agent with a contact URL.",
    )
    default_delay: float = Field(1.0, ge=0, description="Seconds between requests to one host.")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Private or loopback CIDRs the crawler may reach (SSRF guard); e.g. 127.0.0.0/8.",
    )
    timeout: float = Field(30.0, gt=0, description="Connect and read timeout in seconds.")
