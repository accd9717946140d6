"""URL hygiene: normalisation, host keys, allowed hosts and crawl-trap limits.

Host names are kept in their IDNA (punycode) form, `xn--bcher-kva.example` for `bücher.example`, the
form DNS and the Host header use; either spelling in a page or in the config means the same host.
"""

import re
from collections import Counter
from urllib.parse import unquote, urldefrag, urljoin, urlsplit, urlunsplit

import idna  # requests' own dependency: IDNA 2008 with the UTS #46 mapping browsers use
from requests.utils import requote_uri

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp")
MAX_PATH_SEGMENTS = 16
MAX_SEGMENT_REPEATS = 3
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def normalize(url: str, base: str | None = None) -> str | None:
    """An absolute http(s) URL without fragment, credentials or default port; None for anything else.

    Lower-cases scheme and host, percent-encodes what needs it and upper-cases escapes (`%2f` is
    `%2F`, RFC 3986 6.2.2.1), so one resource has one key in the frontier and the manifest.
    """
    url = (url or "").strip()
    if not url:
        return None
    try:  # a malformed URL (`http://[oops/`) or base raises ValueError anywhere in here
        url, _ = urldefrag(urljoin(base, url) if base else url)
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    netloc = ascii_host(parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not netloc:
        return None
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if port and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    url = requote_uri(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")))
    return _ESCAPE.sub(lambda m: m.group().upper(), url)


def ascii_host(name: str) -> str | None:
    """A host name in lower case and IDNA (punycode) form; None if it is not a valid name."""
    name = unquote(name).strip().lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except UnicodeError:  # idna.IDNAError is one
            return None
    # An empty label (`a..b`) or one over 63 characters: DNS has no such name, and getaddrinfo's
    # idna codec raises UnicodeError on it. A trailing dot (the root) is fine.
    labels = name.split(".")
    if any(not 0 < len(label) < 64 for label in labels[:-1]) or len(labels[-1]) > 63:
        return None
    return name


def host_key(url: str) -> str:
    """host[:port]: the unit of politeness (one delay, one connection, one robots.txt per scheme)."""
    return urlsplit(url).netloc


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def allowed_hosts(configured: list[str], seeds: list[str]) -> list[str]:
    """`[scrape] allowed_hosts` (or the seeds' hosts when it is empty), in IDNA form."""
    entries = configured or sorted({urlsplit(s).hostname or "" for s in seeds})
    return [_ascii_entry(entry) for entry in entries]


def _ascii_entry(entry: str) -> str:
    """An allowed_hosts entry (`host`, `host:port`, `*.domain`) with its name in IDNA form."""
    prefix = "*." if entry.strip().startswith("*.") else ""
    name, colon, port = entry.strip().removeprefix("*.").rpartition(":")
    if not colon or not port.isdigit():
        name, colon, port = entry.strip().removeprefix("*."), "", ""
    return prefix + (ascii_host(name) or name.lower()) + colon + port


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Exact host or host:port, or a `*.example.org` pattern for the domain and its subdomains;
    `allowed` as `allowed_hosts` returns it."""
    parts = urlsplit(url)
    hostname = ascii_host(parts.hostname or "") or ""
    with_port = f"{hostname}:{parts.port}" if parts.port else hostname
    for entry in allowed:
        if entry.startswith("*."):
            if hostname == entry[2:] or hostname.endswith(entry[1:]):
                return True
        elif entry in (hostname, with_port):
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
