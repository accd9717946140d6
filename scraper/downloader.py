"""One HTTP request, safely: SSRF guard, no automatic redirects, streamed body with a byte cap and
connect, read and total timeouts (the total one enforced by a watchdog: scraper/deadline.py).

The SSRF guard looks twice: at the names a host resolves to before connecting (for a clear reason
in the manifest) and at the address the socket actually connected to (so DNS rebinding between the
two lookups cannot slip through).
"""

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from scraper.deadline import Deadline, attach_socket, deadline
from scraper.urls import ascii_host

CHUNK = 64 * 1024
DRAIN_BYTES = 64 * 1024
HEAD_BYTES = 64  # enough to tell every image type and HTML/SVG apart
DNS_TTL = 60.0
REDIRECT_STATUSES = (301, 302, 303, 307, 308)  # never followed here: the caller checks each hop
_SPECIAL = (  # why an address is refused, most specific first
    (ipaddress.ip_network("100.64.0.0/10"), "carrier-grade NAT (CGNAT)"),
    (ipaddress.ip_network("fc00::/7"), "IPv6 unique local (ULA)"),
)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))  # RFC 6052, 8215


class AddressRefused(Exception):
    """The SSRF guard refused an address; the message names it and how to allow it."""


class FetchError(Exception):
    """A request that produced no usable response. `transient` errors may pass on a retry."""

    def __init__(self, reason: str, transient: bool, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.refused = refused  # the SSRF guard said no: the whole host is out of bounds


@dataclass
class Fetched:
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    robots_tags: list[str] = field(default_factory=list)  # X-Robots-Tag, one entry per header line
    stopped: str | None = None  # why the body was not read (opt-out, not an image, ...)
    elapsed: float = 0.0
    extra: dict = field(default_factory=dict)


class AddressGuard:
    """Refuses loopback, private, link-local, CGNAT, ULA, multicast and reserved addresses unless
    one of `allow_networks` holds them. `pinned` host names resolve to the address given, not
    through DNS (`[scrape] resolve`); they are checked all the same."""

    def __init__(self, allow_networks: list[str], pinned: Mapping[str, str] | None = None) -> None:
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
        self.pinned = {ascii_host(name) or name: address for name, address in (pinned or {}).items()}
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def check_ip(self, ip: str) -> str | None:
        """None if the crawler may connect to `ip`, else why not. An IPv6 address that carries an
        IPv4 one (6to4, NAT64, IPv4-compatible) reaches that one too: both must be allowed."""
        addr = ipaddress.ip_address(ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        # The carried IPv4 address first: the most telling reason, and Python versions differ on
        # whether 6to4 or IPv4-compatible IPv6 ranges are "private" themselves.
        inner = embedded_ipv4(addr)
        if inner is not None and (reason := self._refusal(inner)):
            return f"{addr} carries the IPv4 address {inner}: {reason}"
        return self._refusal(addr)

    def _refusal(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        if any(addr in net for net in self.allowed):
            return None
        if addr.is_global and not addr.is_multicast:
            return None
        return (
            f"{addr} is a {self._kind(addr)} address (SSRF guard); to crawl it on purpose, add its "
            f'network to [scrape] allow_networks, e.g. "{addr}/{addr.max_prefixlen}"'
        )

    @staticmethod
    def _kind(addr) -> str:
        for net, name in _SPECIAL:
            if addr.version == net.version and addr in net:
                return name
        for attr in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
            if getattr(addr, f"is_{attr}"):
                return attr.replace("_", "-")
        return "non-public"

    def check_url(self, url: str) -> str | None:
        """Resolve the URL's host and check every address it has; None if all may be reached."""
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self._resolve(host, port)
        except OSError as e:
            raise FetchError(f"cannot resolve {host}: {e}", transient=True) from None
        except UnicodeError:  # getaddrinfo's idna codec: an empty label or one over 63 characters
            raise FetchError(f"invalid host name {host[:100]!r}", transient=False) from None
        for ip in addresses:
            if reason := self.check_ip(ip):
                return f"refused {host}: {reason}"
        return None

    def _resolve(self, host: str, port: int) -> list[str]:
        if host in self.pinned:
            return [self.pinned[host]]
        now = time.monotonic()
        with self._lock:
            cached = self._dns.get((host, port))
        if cached and now - cached[0] < DNS_TTL:
            return cached[1]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0] for info in infos})
        with self._lock:
            self._dns[(host, port)] = (now, addresses)
        return addresses


def embedded_ipv4(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, NAT64 (well-known or local-use prefix, /96 form) or IPv4-compatible
    IPv6 address leads to, or None. (IPv4-mapped ones are judged as IPv4; Teredo is never global.)"""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.sixtofour is not None:
        return addr.sixtofour
    last32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if any(addr in net for net in _NAT64):
        return last32
    if addr in _IPV4_COMPATIBLE and int(addr) > 1:  # not :: or ::1
        return last32
    return None


class _NoRedirects(requests.Session):
    """A session that never resolves a redirect: the Fetcher checks and follows each hop itself.
    requests works out the next hop even with allow_redirects=False, and raises outside its own
    exceptions on a Location that is not UTF-8 or not a URL (`http://[::1/x`)."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def _guarded(base: type, guard: AddressGuard) -> type:
    class GuardedConnection(base):
        def _new_conn(self) -> socket.socket:
            name = self._dns_host  # urllib3 connects to _dns_host; Host header and TLS use it too
            self._dns_host = guard.pinned.get(self.host, name)
            try:
                sock = super()._new_conn()
            finally:
                self._dns_host = name
            reason = guard.check_ip(sock.getpeername()[0])
            if reason:
                sock.close()
                raise AddressRefused(f"refused {self.host}: {reason}")
            return sock

        def getresponse(self, *args, **kwargs):
            if self.sock is not None:  # from here on the request's deadline can cut the socket
                attach_socket(self.sock)
            return super().getresponse(*args, **kwargs)

    return GuardedConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose connections check the peer address they really connected to."""

    def __init__(self, guard: AddressGuard, **kwargs) -> None:
        self.guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        http = type(
            "GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _guarded(HTTPConnection, self.guard)}
        )
        https = type(
            "GuardedHTTPSPool",
            (HTTPSConnectionPool,),
            {"ConnectionCls": _guarded(HTTPSConnection, self.guard)},
        )
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}


class Downloader:
    """GET one URL at a time for one host: keep-alive, at most `connections` sockets."""

    def __init__(
        self,
        user_agent: str,
        guard: AddressGuard,
        *,
        timeout: float,
        total_timeout: float,
        connections: int = 1,
    ) -> None:
        self.guard = guard
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.session = _NoRedirects()
        self.session.trust_env = False  # no proxies from the environment: the SSRF guard must see the peer
        self.session.headers.update({"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate"})
        adapter = GuardedAdapter(guard, pool_connections=4, pool_maxsize=connections, pool_block=True)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        max_bytes: int,
        check_headers: Callable[[Fetched], str | None] | None = None,
        check_head: Callable[[bytes], str | None] | None = None,
        truncate: bool = False,
    ) -> Fetched:
        """GET `url` without following redirects.

        The body is read only for 200 responses, and only while `check_headers` (on the headers)
        and `check_head` (on the first bytes) find nothing wrong; what they return goes to
        `Fetched.stopped`. Raises FetchError on network errors, timeouts, bodies over `max_bytes`
        (unless `truncate`: then the first `max_bytes` are returned) and refused addresses.
        """
        if reason := self.guard.check_url(url):
            raise FetchError(reason, transient=False, refused=True)
        with deadline(self.total_timeout) as limit:
            try:
                return self._get(url, headers, limit, max_bytes, check_headers, check_head, truncate)
            except FetchError as e:
                if limit.expired and e.transient:  # the watchdog cut the socket: say why
                    raise self._too_long() from None
                raise

    def _get(self, url, headers, limit: Deadline, max_bytes, check_headers, check_head, truncate) -> Fetched:
        started = time.monotonic()
        try:
            response = self.session.get(
                url, headers=headers or {}, stream=True, allow_redirects=False, timeout=self.timeout
            )
        except AddressRefused as e:
            raise FetchError(str(e), transient=False, refused=True) from None
        except requests.Timeout as e:
            raise FetchError(
                f"timed out after {self.timeout:g} s: {type(e).__name__}", transient=True
            ) from None
        except requests.RequestException as e:
            raise FetchError(f"network error: {_short(e)}", transient=True) from None
        with response:
            if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                response.headers["Location"] = _location(response.headers["Location"])
            fetched = Fetched(url=url, status=response.status_code, headers=response.headers)
            fetched.robots_tags = response.raw.headers.getlist("X-Robots-Tag")
            if response.status_code == 200:
                fetched.stopped = check_headers(fetched) if check_headers else None
                if fetched.stopped is None:
                    fetched.body, fetched.stopped = self._read(response, max_bytes, check_head, truncate)
            else:
                _drain(response)
            fetched.elapsed = time.monotonic() - started
        if limit.expired and response.status_code == 200:  # a body without a length ends when the
            raise self._too_long()  # socket is cut, and looks complete
        return fetched

    def _too_long(self) -> FetchError:
        return FetchError(f"download took over {self.total_timeout:g} s; stopped", transient=True)

    def _read(self, response, max_bytes, check_head, truncate) -> tuple[bytes, str | None]:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes and not truncate:
            raise FetchError(f"Content-Length {length} is over the {max_bytes} byte limit", transient=False)
        chunks, size, checked = [], 0, check_head is None
        try:
            for chunk in response.iter_content(CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if not checked and size >= HEAD_BYTES:
                    checked = True
                    if reason := check_head(b"".join(chunks)):
                        return b"".join(chunks), reason
                if size > max_bytes and truncate:
                    return b"".join(chunks)[:max_bytes], None
                if size > max_bytes:
                    raise FetchError(
                        f"body over the {max_bytes} byte limit; download stopped", transient=False
                    )
        except requests.exceptions.ContentDecodingError as e:  # corrupt, or a Content-Encoding chain
            # longer than urllib3 accepts: the same next time, so not a failure of the host
            raise FetchError(f"cannot decode the body: {_short(e)}", transient=False) from None
        except requests.RequestException as e:
            raise FetchError(f"download broke off: {_short(e)}", transient=True) from None
        body = b"".join(chunks)
        return body, None if checked else check_head(body)


def _drain(response, limit: int = DRAIN_BYTES) -> None:
    """Read a small error body to its end, so the connection stays open for the next request."""
    try:
        size = 0
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > limit:
                return  # not worth it: the connection is closed instead
    except requests.RequestException:
        pass


def _location(value: str) -> str:
    """A Location header read as UTF-8, as requests and browsers do (http.client reads Latin-1)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise FetchError(f"redirect Location is not UTF-8: {value[:200]!r}", transient=False) from None


def declared_charset(content_type: str | None) -> str | None:
    """The charset a Content-Type header names, or None."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ")
    return None


def _short(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:300]}"
