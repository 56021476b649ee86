"""Query by URL: fetch the image a visitor names by its address. The address is untrusted
(server-side request forgery), so this module checks it as a whole, resolves the host itself,
refuses any address that is not on the public internet, connects to exactly the checked
address (no second lookup an attacker's DNS could answer differently), follows at most
`MAX_REDIRECTS` redirects by hand with every check again, and keeps to one time budget
(`QUERY_URL_TIMEOUT`) and the upload size limit. The bytes then take the upload's path."""

import concurrent.futures
import contextlib
import http.client
import ipaddress
import socket
import ssl
import string
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from django.conf import settings

MAX_URL_LENGTH = 2048
MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "searchsite/1 (search by image; fetches one image a visitor asked for)"
CHUNK_BYTES = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[Any, ...]

PRIVATE_NETWORK = "This address points into a private network; it cannot be fetched."
# 0.0.0.0/8 reaches this machine on Linux; NAT64 carries an IPv4 address inside IPv6.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Name lookups cannot be given a timeout: they run here, and the caller stops waiting.
_resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="query-url-dns")


class QueryUrlRefused(ValueError):
    """An address that cannot be searched; the message says why, for the visitor."""


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), which is where a
    connection to it may end up."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress) -> str:
    """What an address is: "public"; "private" (loopback, private and shared networks:
    allowed only with `QUERY_URL_ALLOW_PRIVATE`); or "forbidden" (unspecified, link-local
    (cloud metadata), multicast, reserved: never fetched)."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return address_kind(inner)
    if ip.is_loopback:
        return "private"
    if ip.is_unspecified or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip in _THIS_NETWORK:
        return "forbidden"
    if ip.is_private or not ip.is_global:
        return "private"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "private"
    return "public"


def address_allowed(ip: IPAddress, *, allow_private: bool = False) -> bool:
    kind = address_kind(ip)
    return kind == "public" or (allow_private and kind == "private")


@dataclass(frozen=True)
class _Target:
    """A checked address: where to connect (the resolved socket addresses, all allowed) and
    what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[tuple[int, SockAddr], ...]  # (family, sockaddr)


def _size_words(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _check_shape(url: str) -> tuple[str, str, int, str]:
    """scheme, host, port and request path of a well-formed http(s) address, or a refusal."""
    if len(url) > MAX_URL_LENGTH:
        raise QueryUrlRefused(f"This address is too long (over {MAX_URL_LENGTH} characters).")
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise QueryUrlRefused("This address contains spaces or control characters.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise QueryUrlRefused("Only http and https addresses can be searched.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise QueryUrlRefused("Addresses with a user name or password cannot be searched.")
    if not parts.hostname:
        raise QueryUrlRefused("This address has no host name.")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise QueryUrlRefused("This address has an invalid port number.") from exc
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, parts.hostname, port, quote(path, safe=string.punctuation)


def _resolve(host: str, port: int, timeout: float) -> list[tuple[int, SockAddr]]:
    lookup = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=timeout)
    except (socket.gaierror, UnicodeError) as exc:
        raise QueryUrlRefused("The host name of this address could not be found.") from exc
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def checked_target(url: str, timeout: float) -> _Target:
    """Every check on one address, its host resolved here; refused if ANY of the host's
    addresses is not allowed (a name with one public and one private address is refused)."""
    scheme, host, port, path = _check_shape(url)
    addresses = _resolve(host, port, timeout)
    if not addresses:
        raise QueryUrlRefused("The host name of this address could not be found.")
    allow_private = bool(settings.QUERY_URL_ALLOW_PRIVATE)
    for _, sockaddr in addresses:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not address_allowed(ip, allow_private=allow_private):
            raise QueryUrlRefused(PRIVATE_NETWORK)
    return _Target(scheme, host, port, path, tuple(addresses))


class _Budget:
    """One time budget for the whole fetch: each step waits at most what is left, and at the
    end the open connection is cut, so a server that trickles bytes cannot stretch it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if self.expired or remaining <= 0:
            self.expired = True
            raise TimeoutError
        return remaining

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                self._cut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        if self._sock is not None:
            # The plain socket's shutdown (also under TLS): a blocked read returns at once.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()


def _open_socket(target: _Target, budget: _Budget) -> socket.socket:
    """A connection to one of the checked addresses (never a new lookup of the name)."""
    error: OSError = ConnectionError("no address")
    for family, sockaddr in target.addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(budget.left())
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        budget.watch(sock)
        return sock
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the checked address; the Host header still names the host."""

    def __init__(self, target: _Target, budget: _Budget) -> None:
        super().__init__(target.host, target.port, timeout=budget.left())
        self._target = target
        self._budget = budget

    def connect(self) -> None:
        self.sock = _open_socket(self._target, self._budget)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the checked address; SNI and certificate checks use the host name."""

    def __init__(self, target: _Target, budget: _Budget) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=budget.left(), context=self._tls)
        self._target = target
        self._budget = budget

    def connect(self) -> None:
        sock = _open_socket(self._target, self._budget)
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self._target.host)
        except BaseException:
            sock.close()
            raise
        self._budget.watch(self.sock)


def _read_body(
    response: http.client.HTTPResponse, conn: http.client.HTTPConnection, budget: _Budget
) -> bytes:
    limit = int(settings.UPLOAD_MAX_BYTES)
    too_large = QueryUrlRefused(f"The file at this address is larger than {_size_words(limit)}.")
    length = (response.getheader("Content-Length") or "").strip()
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    while True:
        if conn.sock is not None:
            conn.sock.settimeout(budget.left())
        chunk = response.read1(CHUNK_BYTES)
        budget.left()  # a cut connection reads as an early end
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)


def _fetch(url: str, budget: _Budget) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        target = checked_target(url, budget.left())
        connection_class = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        conn = connection_class(target, budget)
        try:
            headers = {"User-Agent": USER_AGENT, "Accept": "image/*", "Connection": "close"}
            conn.request("GET", target.path, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(budget.left())
            response = conn.getresponse()
            if response.status in REDIRECT_STATUSES:
                location = (response.getheader("Location") or "").strip()
                if not location:
                    raise QueryUrlRefused("The address redirected without saying where to.")
                url = urljoin(url, location)
                continue
            if not 200 <= response.status < 300:
                answer = f"{response.status} {response.reason}".strip()
                raise QueryUrlRefused(f"The address answered {answer}.")
            return _read_body(response, conn, budget)
        finally:
            conn.close()
    raise QueryUrlRefused(f"The address redirected more than {MAX_REDIRECTS} times.")


def image_fetch_from_url(url: str) -> bytes:
    """The bytes at an untrusted http(s) address, or `QueryUrlRefused` saying why not. The
    caller decodes them like an upload (same limits, same refusals)."""
    seconds = float(settings.QUERY_URL_TIMEOUT)
    budget = _Budget(seconds)
    too_slow = f"The address did not answer within {seconds:g} second{'' if seconds == 1 else 's'}."
    try:
        return _fetch(url.strip(), budget)
    except QueryUrlRefused:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if budget.expired or isinstance(exc, TimeoutError):
            raise QueryUrlRefused(too_slow) from exc
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise QueryUrlRefused("The address's certificate could not be verified.") from exc
        if isinstance(exc, ssl.SSLError):
            raise QueryUrlRefused("A secure connection to the address failed.") from exc
        if isinstance(exc, http.client.HTTPException):
            raise QueryUrlRefused("The address did not answer like a web server.") from exc
        raise QueryUrlRefused("The address could not be reached.") from exc
    finally:
        budget.close()
