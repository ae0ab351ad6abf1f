"""
uvicorn's HTTP/1.1 protocol with the limits uvicorn lacks: read deadlines and connection caps (ADR 0011).

uvicorn times out only idle keep-alive connections, and only after a first response; a socket that sends a
partial request head, or drips one header line a second, is kept forever, and nothing caps how many sockets
one address holds. ``guarded_protocol()`` returns a subclass of uvicorn's ``HttpToolsProtocol`` (uvicorn's
documented ``http=`` extension point) that adds:

- a **head deadline**: the request line and headers must be complete within ``head_timeout`` seconds of the
  connection opening or of the previous response; bytes arriving meanwhile do not move it;
- a **body deadline**: once the head is in, the whole body must arrive within ``body_timeout`` seconds;
- a **per-address cap** (IPv6 per /64, what one subscriber usually holds) and a **global cap** on open
  connections: one over a cap is answered 429 or 503 in the API's error shape and closed at once, before
  anything is parsed, so its descriptor comes straight back.

A response in progress (an event stream lasts hours) is never timed out: the deadlines cover reading a
request only. A connection that misses one is aborted (RST), which frees its descriptor even when the client
has stopped reading what we wrote.

Behind a TCP proxy (decision 0031): a connection from one of ``proxy_protocol_from`` must start with a
PROXY protocol v1/v2 header, whole within ``proxy_header_timeout`` seconds; only then is it counted, against
the client address the header carries, and handed to uvicorn with that address as the request's client
(so the per-IP rate limits and login protection see it too). A malformed or late header aborts that
connection, unanswered.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from devicecloud.clock import Clock, TimerHandle
from devicecloud.protocol.proxy_header import ProxyHeaderError, ProxyHeaderReader

logger = structlog.get_logger("devicecloud.http")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """
    How long a client may take to send a request, and how many connections it may hold.
    """

    head_timeout: float
    body_timeout: float
    max_connections: int
    max_connections_per_ip: int
    proxy_protocol_from: tuple[str, ...] = ()
    proxy_header_timeout: float = 5.0


def is_from(peer: object, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether a peer address (``(host, port, …)`` or text) is in one of ``networks``."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def address_key(peer: object) -> str:
    """
    Whom a connection counts against: its IPv4 address, or its IPv6 /64 (an IPv4-mapped one counts as IPv4).
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)  # a Unix socket path, or nothing: one shared key
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _refusal(status: bytes, error: str, description: str) -> bytes:
    body = json.dumps({"ok": False, "error": error, "error_description": description}).encode()
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


PER_IP_REFUSAL = _refusal(
    b"429 Too Many Requests", "rate_limit_exceeded", "Too many open connections from this address."
)
GLOBAL_REFUSAL = _refusal(
    b"503 Service Unavailable", "server_error", "The server has too many open connections; try again shortly."
)


class ConnectionBook:
    """
    Open connections per address key and in total, for one server; warns once per episode at a cap.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.proxies = tuple(
            ipaddress.ip_network(entry, strict=False) for entry in limits.proxy_protocol_from
        )
        self.proxy_headers_refused = 0
        self.total = 0
        self._per_key: Counter[str] = Counter()
        self._at_global_cap = False
        self._keys_at_cap: set[str] = set()

    def admit(self, key: str) -> bytes | None:
        """
        Count a new connection in, or return the refusal to send it.
        """
        if self.total >= self.limits.max_connections:
            if not self._at_global_cap:
                self._at_global_cap = True
                logger.warning("HTTP connection cap reached; refusing", max_connections=self.total)
            return GLOBAL_REFUSAL
        if self._per_key[key] >= self.limits.max_connections_per_ip:
            if key not in self._keys_at_cap:
                self._keys_at_cap.add(key)
                logger.warning("HTTP connections per address at cap; refusing", address=key)
            return PER_IP_REFUSAL
        self.total += 1
        self._per_key[key] += 1
        return None

    def release(self, key: str) -> None:
        self.total -= 1
        self._per_key[key] -= 1
        if self._per_key[key] <= 0:
            del self._per_key[key]
        self._keys_at_cap.discard(key)
        self._at_global_cap = False


class _Waiting(enum.Enum):
    HEAD = "head"
    BODY = "body"
    NOTHING = "nothing"  # a request is being answered (or the connection is over)


class GuardedHttpProtocol(HttpToolsProtocol):
    """
    One HTTP connection under ``HttpLimits``; ``guarded_protocol()`` binds a book and a clock per server.
    """

    book: ClassVar[ConnectionBook]
    clock: ClassVar[Clock]

    _key: str | None = None
    _timer: TimerHandle | None = None
    _waiting: _Waiting = _Waiting.NOTHING
    _followed: object = None  # the request cycle whose head we last saw complete
    _proxied: tuple[asyncio.Transport, ProxyHeaderReader] | None = None  # a trusted proxy's header to come

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        if self.book.proxies and is_from(peer, self.book.proxies):
            self._proxied = (transport, ProxyHeaderReader())
            timeout = self.book.limits.proxy_header_timeout
            self._timer = self.clock.call_at(self.clock.monotonic() + timeout, self._header_late)
            return
        self._admit(transport, peer)

    def _admit(self, transport: asyncio.Transport, client: object) -> bool:
        key = address_key(client)
        refusal = self.book.admit(key)
        if refusal is not None:
            # Nothing of uvicorn's is set up for this one: connection_lost must not reach it either.
            transport.write(refusal)
            transport.close()
            return False
        self._key = key
        super().connection_made(transport)
        if isinstance(client, tuple) and len(client) >= 2:
            self.client = (str(client[0]), int(client[1]))  # the request's client: the header's, if any
        self._follow()
        return True

    def _proxy_header(self, data: bytes) -> None:
        """Bytes from a trusted proxy before its header is whole: parse; once whole, admit its client."""
        assert self._proxied is not None
        transport, reader = self._proxied
        try:
            header = reader.feed(data)
        except ProxyHeaderError as exc:
            self._refuse_proxied(str(exc))
            return
        if header is None:
            return
        self._proxied = None
        self._disarm()
        if not self._admit(transport, header.source or transport.get_extra_info("peername")):
            return
        if reader.rest:
            self.data_received(reader.rest)

    def _header_late(self) -> None:
        self._timer = None
        if self._proxied is not None:
            self._refuse_proxied("no whole PROXY protocol header in time")

    def _refuse_proxied(self, problem: str) -> None:
        assert self._proxied is not None
        transport, _ = self._proxied
        self._proxied = None
        self._disarm()
        self.book.proxy_headers_refused += 1
        logger.warning("HTTP connection from a trusted proxy closed", problem=problem)
        transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proxied is not None:  # gone before its header was whole
            self._proxied = None
            self._disarm()
            return
        if self._key is None:
            return
        self.book.release(self._key)
        self._key = None
        self._disarm()
        self._waiting = _Waiting.NOTHING
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._proxied is not None:
            self._proxy_header(data)
            return
        if self._key is None:
            return  # refused, or its header was
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """
        After anything that can move the request cycle on, (re)arm the deadline for what we now wait for.
        """
        if self._key is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._waiting is not _Waiting.HEAD:
                self._arm(_Waiting.HEAD, self.book.limits.head_timeout)
        elif cycle is not self._followed:
            self._followed = cycle
            if cycle.more_body:
                self._arm(_Waiting.BODY, self.book.limits.body_timeout)
            else:
                self._disarm()
        elif self._waiting is _Waiting.BODY and not cycle.more_body:
            self._disarm()

    def _arm(self, waiting: _Waiting, timeout: float) -> None:
        self._disarm()
        self._waiting = waiting
        self._timer = self.clock.call_at(self.clock.monotonic() + timeout, self._expired)

    def _disarm(self) -> None:
        self._waiting = _Waiting.NOTHING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._key is not None and self._waiting is not _Waiting.NOTHING:
            logger.info("HTTP request too slow; closed", waiting=self._waiting.value, address=self._key)
            self.transport.abort()


def guarded_protocol(limits: HttpLimits, clock: Clock) -> type[GuardedHttpProtocol]:
    """
    The protocol class to give uvicorn as ``http=``: one connection book per call, so per server.
    """
    attributes: dict[str, Any] = {"book": ConnectionBook(limits), "clock": clock}
    return type("BoundGuardedHttpProtocol", (GuardedHttpProtocol,), attributes)
