"""Outbound HTTP to addresses partners choose (webhook receivers): the one place that checks and sends.

A receiver's URL is a request to reach into whatever network the app runs in, so every request is
checked just before it is sent, not only when the subscription is created (a name can resolve
elsewhere later: DNS rebinding):

- `https` only (`WEBHOOKS_ALLOW_LOOPBACK=true`, for local development and tests, also allows `http`
  to loopback addresses; nothing else);
- the host name is resolved and refused when ANY of its addresses is loopback (unless allowed),
  private, link-local (169.254.0.0/16 holds the instance metadata endpoint), multicast, unspecified,
  reserved, or otherwise not globally routable;
- the connection goes to the address that was checked (pinned), with the name kept as the Host
  header and the TLS server name, so a second lookup cannot swap it for another;
- no redirects (http.client follows none), at most 5 s for the whole exchange (connection, TLS,
  request and answer together: a receiver that sends a byte every few seconds is cut off like a
  silent one), and at most 4 KiB of the answer read, which is never logged.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 5.0
MAX_RESPONSE_BYTES = 4096
MAX_URL_LENGTH = 2048

type Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(Exception):
    """The URL may not be called: the message says why, without echoing the URL."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes  # at most MAX_RESPONSE_BYTES


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: Address  # the checked address the connection goes to


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (tests replace this to simulate DNS answers)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: Address, allow_loopback: bool) -> str | None:
    """Why `address` may not be called, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    for reason, refused in (
        ("an unspecified address", address.is_unspecified),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved),
        ("an address that is not globally routable", not address.is_global),
    ):
        if refused:
            return reason
    return None


def check(url: str, allow_loopback: bool) -> Target:
    """The target `url` names, checked now; `OutboundRefused` when it may not be called."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"The URL must be a string of at most {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundRefused("The URL is not valid.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise OutboundRefused("The URL must be an absolute https:// URL.")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise OutboundRefused("The URL must not hold credentials or a fragment.")
    if any(ord(character) <= 32 or ord(character) == 127 for character in url):
        raise OutboundRefused("The URL must not hold spaces or control characters.")
    if not url.isascii():
        # A request line is bytes: other characters would have to be encoded by someone, and guessing
        # how is the receiver's business. Percent-encoded paths and punycode names work.
        raise OutboundRefused("The URL must be ASCII: percent-encode the path, use the punycode host name.")
    port = port or (443 if scheme == "https" else 80)
    host = parts.hostname
    addresses = resolve(host, port)
    if not addresses:
        raise OutboundRefused("The URL's host name does not resolve.")
    parsed: list[Address] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise OutboundRefused("The URL's host name resolves to an invalid address.") from None
        reason = refusal(address, allow_loopback)
        if reason is not None:
            raise OutboundRefused(f"The URL's host name resolves to {reason}.")
        parsed.append(address)
    if scheme == "http" and not (allow_loopback and all(address.is_loopback for address in parsed)):
        raise OutboundRefused("The URL must be an https:// URL.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, parsed[0])


class _Deadline:
    """Ends an exchange at a moment, whatever it is doing then. A socket timeout bounds each read or
    write alone, so a receiver that trickles its answer a byte at a time would never time out; at the
    deadline the connection's socket is shut down, which ends any read or write in progress."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.passed = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
            if self.passed:
                self._shut()

    def end(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.passed = True
            self._shut()

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)


def _connect(address: Address, port: int, timeout: float | None, deadline: _Deadline) -> socket.socket:
    sock = socket.create_connection((str(address), port), timeout)
    deadline.watch(sock)  # the raw socket: shutting it down also ends a TLS handshake or read over it
    return sock


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to a checked address, verifying the certificate for the host name (SNI = the name)."""

    def __init__(self, target: Target, timeout: float, deadline: _Deadline) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address, self._deadline = target.address, deadline

    def connect(self) -> None:
        sock = _connect(self._address, self.port, self.timeout, self._deadline)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float, deadline: _Deadline) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address, self._deadline = target.address, deadline

    def connect(self) -> None:
        self.sock = _connect(self._address, self.port, self.timeout, self._deadline)


def send(
    url: str,
    method: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    allow_loopback: bool,
    timeout: float | None = None,
) -> Answer:
    """One request to `url`, checked and pinned (see the module's notes). `OutboundRefused` when the
    URL may not be called; `OSError` (timeouts included) or `http.client.HTTPException` when the
    receiver cannot be reached or answers badly."""
    target = check(url, allow_loopback)
    timeout = TIMEOUT_SECONDS if timeout is None else timeout
    deadline = _Deadline(timeout)
    connection: http.client.HTTPConnection = (
        _PinnedHTTPSConnection(target, timeout, deadline)
        if target.scheme == "https"
        else _PinnedHTTPConnection(target, timeout, deadline)
    )
    try:
        connection.request(method, target.path, body=body or None, headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES)
        if deadline.passed:
            raise TimeoutError("The receiver did not answer in time.")
        return Answer(response.status, {name.lower(): value for name, value in response.getheaders()}, data)
    except (OSError, http.client.HTTPException) as error:
        if deadline.passed:
            raise TimeoutError("The receiver did not answer in time.") from error
        raise
    finally:
        deadline.end()
        connection.close()
