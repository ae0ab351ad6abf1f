"""
Sending one webhook request with every bound a hostile target needs: a total time limit (20 s), a response
body read only up to a size limit (the rest is never read: the connection is dropped), a bounded number of
redirects followed by hand (each hop checked again; credentials and the hook's own headers never follow a
redirect to another origin), and, when the guard is on, no connection to loopback, private, link-local or
otherwise non-public addresses — checked on the addresses actually resolved, so neither a DNS name nor a
redirect can lead there.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from devicecloud.webhooks.templating import OutgoingRequest

REDIRECTS = (301, 302, 303, 307, 308)
# Never sent on to another origin, whoever set them (as browsers and ``requests`` do).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class DeliveryError(Exception):
    """
    An attempt that got no usable response. ``retry``: worth trying again later (timeouts, refused
    connections); the text is what ``hook-error`` says.
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class BlockedAddress(OSError):
    pass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    elapsed_ms: int


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use only, never public
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """
    The IPv4 addresses an IPv6 address leads to: IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo.
    """
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in NAT64 or ip in IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # the relay server and the client behind it
    return found


def is_public(address: str) -> bool:
    """
    Whether ``address`` is a public unicast address, and so is every IPv4 address it embeds (a translated
    or tunnelled form of 127.0.0.1 or 10.0.0.1 leads there just as well).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in LOCAL_NAT64:
            return False
        embedded = embedded_ipv4(ip)
        if not all(v4.is_global and not v4.is_multicast for v4 in embedded):
            return False
        if ip.ipv4_mapped is not None:  # judged by its IPv4 address alone
            return True
    return ip.is_global and not ip.is_multicast


class PublicOnlyResolver(AbstractResolver):
    """
    A resolver that drops every non-public address (and fails when none is left).
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [result for result in results if is_public(result["host"])]
        if not allowed:
            raise BlockedAddress(f"{host} resolves only to private or local addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class SenderLimits:
    timeout: float = 20.0
    max_body: int = 100 * 1024
    max_redirects: int = 5
    max_connections: int = 1000
    block_private: bool = False


class HttpSender:
    """
    One aiohttp session for all deliveries (connections are pooled and kept alive per host).
    """

    def __init__(self, limits: SenderLimits) -> None:
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections,
                limit_per_host=0,
                resolver=PublicOnlyResolver() if self.limits.block_private else None,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.limits.timeout),
                auto_decompress=True,
                skip_auto_headers=("User-Agent", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _check_target(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DeliveryError(f"invalid URL {url[:200]!r}", retry=False)
        host = parts.hostname
        if self.limits.block_private:
            try:
                literal = ipaddress.ip_address(host)
            except ValueError:
                literal = None
            local_name = host.lower() == "localhost" or host.lower().endswith(".localhost")
            if local_name or (literal is not None and not is_public(str(literal))):
                raise DeliveryError(
                    f"requests to {host} are not allowed (private or local address)", retry=False
                )
        return host

    async def send(self, request: OutgoingRequest, *, verify_tls: bool = True) -> Response:
        """
        Send ``request``; raises `DeliveryError` when no response within the limits came back.
        """
        session = self._open()
        started = time.perf_counter()
        url, method, body = request.url, request.method, request.body
        headers = dict(request.headers)
        deadline = started + self.limits.timeout
        for _hop in range(self.limits.max_redirects + 1):
            host = self._check_target(url)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise DeliveryError(f"timeout after {self.limits.timeout:g} s from {host}", retry=True)
            try:
                response = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    ssl=verify_tls,
                    timeout=aiohttp.ClientTimeout(total=remaining),
                )
                try:
                    if response.status in REDIRECTS and "Location" in response.headers:
                        url, previous = urljoin(url, response.headers["Location"]), url
                        headers = headers_for_redirect(headers, request.hook_headers, previous, url)
                        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                            method, body = "GET", None
                            headers.pop("Content-Type", None)
                        continue
                    payload = await self._read(response)
                    return Response(
                        status=response.status,
                        body=payload,
                        elapsed_ms=int((time.perf_counter() - started) * 1000),
                    )
                finally:
                    response.close()  # never drain what was not read: a 10 MB reply costs nothing
            except DeliveryError:
                raise
            except TimeoutError as exc:
                timed_out = f"timeout after {self.limits.timeout:g} s from {host}"
                raise DeliveryError(timed_out, retry=True) from exc
            except BlockedAddress as exc:
                raise DeliveryError(f"requests to {host} are not allowed ({exc})", retry=False) from exc
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, BlockedAddress):
                    blocked = f"requests to {host} are not allowed ({exc.os_error})"
                    raise DeliveryError(blocked, retry=False) from exc
                raise DeliveryError(f"could not connect to {host}: {exc.os_error}", retry=True) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise DeliveryError(f"request to {host} failed: {_describe(exc)}", retry=True) from exc
        raise DeliveryError(f"too many redirects (more than {self.limits.max_redirects})", retry=False)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """
        The body up to the size limit; the rest is never read (the caller drops the connection).
        """
        limit = self.limits.max_body
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(16 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
        return b"".join(chunks)[:limit]


def origin(url: str) -> tuple[str, str, int | None]:
    """
    The scheme, host and port of ``url`` (the default port made explicit).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def headers_for_redirect(
    headers: dict[str, str], hook_headers: frozenset[str], old_url: str, new_url: str
) -> dict[str, str]:
    """
    The headers to send to ``new_url`` after a redirect from ``old_url``: on a change of origin, without
    credentials and without any header the hook's templates set (an API key is a credential too).
    """
    if origin(old_url) == origin(new_url):
        return headers
    dropped = CREDENTIAL_HEADERS | hook_headers
    return {name: value for name, value in headers.items() if name.lower() not in dropped}


def _describe(exc: Any) -> str:
    return str(exc) or type(exc).__name__
