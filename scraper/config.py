import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

import soupsieve
from pydantic import Field, field_validator

from common.config import StrictModel

ImageType = Literal["jpeg", "png", "webp", "gif", "bmp"]

PLACEHOLDER_CONTACT = "example.invalid"


class ScrapeConfig(StrictModel):
    """Where to crawl and how politely. One table `[scrape]` in faces.toml (docs/scraper.md)."""

    # What to crawl
    seeds: list[str] = Field(default_factory=list, description="Start page URLs.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the crawler may visit (pages and images); `*.example.org` allows subdomains; "
        "empty means the seeds' hosts.",
    )
    follow: str = Field("a[href]", description="CSS selector of links to follow (gallery, next page).")
    follow_pattern: str | None = Field(None, description="Regex a followed link's URL must match.")
    image_scope: str | None = Field(
        None, description="CSS selector of the page parts images are taken from; empty means the whole page."
    )
    max_depth: int = Field(3, ge=0, description="Links followed from a seed, at most.")
    max_pages: int = Field(200, ge=1, description="Pages visited per crawl, at most.")
    max_images: int = Field(10_000, ge=1, description="Image URLs visited per crawl, at most.")
    max_images_per_page: int = Field(
        500, ge=1, description="Image URLs taken from one page, at most (the first, in page order)."
    )

    # What to keep
    min_width: int = Field(64, ge=1)
    min_height: int = Field(64, ge=1)
    allowed_types: list[ImageType] = Field(default_factory=lambda: ["jpeg", "png", "webp", "gif", "bmp"])
    max_bytes: int = Field(20 * 2**20, ge=1024, description="Largest image download in bytes.")
    max_pixels: int = Field(50_000_000, ge=1, description="Images with more pixels are refused undecoded.")
    max_page_bytes: int = Field(5 * 2**20, ge=1024, description="Largest HTML page in bytes.")
    licence: str | None = Field(None, description="Licence recorded when a page states none.")

    # Politeness
    user_agent: str = Field(
        f"faces-pipeline/0.1 (+https://{PLACEHOLDER_CONTACT}/set-your-contact-url)",
        description="Real sites require a User-Agent with a contact URL or e-mail address.",
    )
    default_delay: float = Field(
        1.0, ge=0, description="Seconds between requests to one host when robots.txt sets no Crawl-delay."
    )
    delay_jitter: float = Field(0.25, ge=0, le=1, description="Each delay is stretched by up to this share.")
    max_crawl_delay: float = Field(
        60.0, ge=0, description="A host whose robots.txt asks for a longer delay is given up."
    )
    max_retry_after: float = Field(
        600.0, ge=0, description="A host that asks (Retry-After) for a longer pause is given up."
    )
    connections_per_host: int = Field(1, ge=1, le=8)
    max_parallel_hosts: int = Field(8, ge=1, le=64)
    max_retries: int = Field(3, ge=0, le=10, description="Retries of one URL after transient errors.")
    backoff: float = Field(1.0, ge=0, description="First backoff in seconds; doubles with each retry.")
    max_host_failures: int = Field(
        6, ge=1, description="Consecutive transient failures after which a host is given up."
    )
    robots_max_age: float = Field(86_400.0, gt=0, le=86_400.0, description="robots.txt cache lifetime (s).")

    # Safety
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Private or loopback CIDRs the crawler may reach (SSRF guard); e.g. 127.0.0.0/8.",
    )
    resolve: dict[str, str] = Field(
        default_factory=dict,
        description="Host names pinned to addresses, as /etc/hosts does (a staging server, the tests); "
        "the SSRF guard still checks the address.",
    )
    timeout: float = Field(30.0, gt=0, description="Connect and read timeout in seconds.")
    total_timeout: float = Field(120.0, gt=0, description="Longest time one download may take (s).")
    max_redirects: int = Field(5, ge=0, le=20)
    max_url_length: int = Field(2048, ge=64)

    @field_validator("seeds")
    @classmethod
    def _http_seeds(cls, seeds: list[str]) -> list[str]:
        for seed in seeds:
            parts = urlsplit(seed)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"seed {seed!r} is not an http(s) URL; write it as https://host/path")
        return seeds

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network; write it as CIDR, e.g. 127.0.0.0/8") from None
        return networks

    @field_validator("resolve")
    @classmethod
    def _addresses(cls, pinned: dict[str, str]) -> dict[str, str]:
        for name, address in pinned.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(
                    f'{name} = {address!r}: not an IP address; write it as e.g. "127.0.0.1"'
                ) from None
        return pinned

    @field_validator("follow", "image_scope")
    @classmethod
    def _selector(cls, selector: str | None) -> str | None:
        if selector:
            try:
                soupsieve.compile(selector)
            except Exception as e:
                raise ValueError(f"{selector!r} is not a CSS selector ({e})") from None
        return selector

    @field_validator("follow_pattern")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
        return pattern

    @field_validator("user_agent")
    @classmethod
    def _contact(cls, agent: str) -> str:
        if "http" not in agent and "@" not in agent:
            raise ValueError(
                f"user_agent {agent!r} names no contact; add a URL or e-mail, "
                "e.g. 'myproject/1.0 (+https://example.org/contact)'"
            )
        return agent
