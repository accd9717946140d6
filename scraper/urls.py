"""URL hygiene: normalisation, host keys, allowed hosts and crawl-trap limits."""

from collections import Counter
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from requests.utils import requote_uri

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp")
MAX_PATH_SEGMENTS = 16
MAX_SEGMENT_REPEATS = 3
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize(url: str, base: str | None = None) -> str | None:
    """An absolute http(s) URL without fragment, credentials or default port; None for anything else.

    Lower-cases scheme and host and percent-encodes what needs it, so one resource has one key in the
    frontier and the manifest.
    """
    url = (url or "").strip()
    if not url:
        return None
    if base:
        url = urljoin(base, url)
    url, _ = urldefrag(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    netloc = parts.hostname.lower()
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if port and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return requote_uri(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))


def host_key(url: str) -> str:
    """host[:port]: the unit of politeness (one delay, one connection, one robots.txt per scheme)."""
    return urlsplit(url).netloc


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def allowed_hosts(configured: list[str], seeds: list[str]) -> list[str]:
    """`[scrape] allowed_hosts`, or the seeds' hosts when it is empty."""
    return configured or sorted({urlsplit(s).hostname or "" for s in seeds})


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Exact host or host:port, or a `*.example.org` pattern for the domain and its subdomains."""
    parts = urlsplit(url)
    hostname = (parts.hostname or "").lower()
    for entry in allowed:
        entry = entry.lower().strip()
        if entry.startswith("*."):
            if hostname == entry[2:] or hostname.endswith(entry[1:]):
                return True
        elif entry in (hostname, parts.netloc.lower()):
            return True
    return False


def looks_like_image(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(IMAGE_EXTENSIONS)


def trap_reason(url: str, max_length: int) -> str | None:
    """Why a URL looks like a crawl trap (endless calendars, repeated path segments), or None."""
    if len(url) > max_length:
        return f"URL longer than {max_length} characters"
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if len(segments) > MAX_PATH_SEGMENTS:
        return f"path deeper than {MAX_PATH_SEGMENTS} segments"
    if segments and Counter(segments).most_common(1)[0][1] > MAX_SEGMENT_REPEATS:
        return f"a path segment repeats more than {MAX_SEGMENT_REPEATS} times"
    return None
