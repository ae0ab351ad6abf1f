"""
The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-IO: what a TCP proxy sends before the
client's bytes to say whom the connection is from (decision 0031).

A `ProxyHeaderReader` is fed the first bytes of a connection and answers the header once it is complete,
keeping the bytes after it in `ProxyHeaderReader.rest`. `ProxyHeaderReader.wanted` tells how many more bytes
certainly belong to the header, so a caller reading from a stream can ask for exactly those and never read
into the client's bytes (the device protocol's server speaks first: nothing follows the header until it
has).

Rules kept here (from the spec):
- version 1 is one line of at most 107 bytes ending in CRLF: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>``
  or ``PROXY UNKNOWN[ anything]``; the addresses must be of the family named, the ports decimal 0–65535;
- version 2 is a 16-byte block (12-byte signature, version 2 with command LOCAL or PROXY, family and
  transport, length) and ``length`` bytes of addresses and TLVs; an address family or transport byte other
  than the spec's values, or a length shorter than the family's addresses, is invalid; a length over
  ``max_length`` is refused (the spec allows 65535; proxies send a few dozen bytes);
- LOCAL (v2), UNKNOWN (v1) and the UNSPEC and UNIX families carry no usable client address: the header is
  valid and `ProxyHeader.source` is ``None`` (the receiver uses the connection's own address);
- anything else at the start of the connection is an error: the receiver never guesses whether a header is
  there (the caller decides, by the sender's address, that one must be).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "parse_proxy_header",
]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN ffff:…:ffff ffff:…:ffff 65535 65535\r\n"
V1_MIN_LENGTH = 15  # "PROXY UNKNOWN\r\n"; a v2 header is at least 16 bytes, so 15 is safe for both
V2_FIXED = 16
DEFAULT_MAX_LENGTH = V2_FIXED + 2048  # addresses (≤ 216 bytes for UNIX) and a few TLVs

_V2_LENGTH = struct.Struct("!H")
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_UNIX_LENGTH = 216
_FAMILIES = {0x0: 0, 0x1: _INET.size, 0x2: _INET6.size, 0x3: _UNIX_LENGTH}  # family → address block length
_TRANSPORTS = frozenset({0x0, 0x1, 0x2})


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """
    A complete header.

    Attributes:
        version: 1 or 2.
        source: the client's address and port, or ``None`` when the header carries none (LOCAL, UNKNOWN,
            UNSPEC, UNIX): use the connection's own peer address then.
        destination: the address and port the client connected to (``None`` likewise).
        length: the header's size in bytes.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


class ProxyHeaderReader:
    """
    Incremental parser of one connection's header: `feed` bytes until it returns the header.

    Args:
        max_length: the largest version 2 header accepted (16 bytes of fixed part included).
    """

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self._max_length = max(max_length, V2_FIXED + _INET6.size)
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None
        #: Bytes received after the header (the client's own), once the header is complete.
        self.rest = b""

    @property
    def header(self) -> ProxyHeader | None:
        """The header, once complete."""
        return self._header

    def wanted(self) -> int:
        """
        How many more bytes certainly belong to the header (at least 1 until it is complete, 0 after).
        """
        if self._header is not None:
            return 0
        have = len(self._buffer)
        if have < V2_FIXED and self._buffer.startswith(V2_SIGNATURE[:have] or b"\r"):
            return V2_FIXED - have
        if self._buffer.startswith(V2_SIGNATURE):
            length: int = _V2_LENGTH.unpack_from(self._buffer, 14)[0]
            return V2_FIXED + length - have
        return max(1, V1_MIN_LENGTH - have)

    def feed(self, data: bytes) -> ProxyHeader | None:
        """
        Take the next bytes; the header once it is complete (later calls return it again and add to `rest`).

        Raises:
            ProxyHeaderError: the bytes so far cannot start a valid header, or complete an invalid one.
        """
        if self._header is not None:
            self.rest += data
            return self._header
        self._buffer += data
        buffer = bytes(self._buffer)
        if not buffer:
            return None
        found = self._version2(buffer) if buffer[:1] == b"\r" else self._version1(buffer)
        if found is not None:
            self._header = found
            self.rest = buffer[found.length :]
            self._buffer.clear()
        return found

    def _version1(self, buffer: bytes) -> ProxyHeader | None:
        if not buffer.startswith(V1_PREFIX[: len(buffer)]):
            raise ProxyHeaderError("not a PROXY protocol header")
        end = buffer.find(b"\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyHeaderError("PROXY protocol v1 line longer than 107 bytes")
            return None
        if end == 0 or buffer[end - 1 : end] != b"\r":
            raise ProxyHeaderError("PROXY protocol v1 line not ended by CRLF")
        return _parse_v1(buffer[: end - 1], end + 1)

    def _version2(self, buffer: bytes) -> ProxyHeader | None:
        if not V2_SIGNATURE.startswith(buffer[: len(V2_SIGNATURE)]):
            raise ProxyHeaderError("not a PROXY protocol header")
        if len(buffer) < V2_FIXED:
            return None
        _check_v2_fixed(buffer)
        total = V2_FIXED + _V2_LENGTH.unpack_from(buffer, 14)[0]
        if total > self._max_length:
            raise ProxyHeaderError(f"PROXY protocol v2 header of {total} bytes (at most {self._max_length})")
        if len(buffer) < total:
            return None
        return _parse_v2(buffer[:total])


def parse_proxy_header(data: bytes, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[ProxyHeader, bytes]:
    """
    The header at the start of ``data`` and the bytes after it.

    Raises:
        ProxyHeaderError: invalid, or ``data`` ends before the header does.
    """
    reader = ProxyHeaderReader(max_length)
    header = reader.feed(data)
    if header is None:
        raise ProxyHeaderError("incomplete PROXY protocol header")
    return header, reader.rest


def _parse_v1(line: bytes, length: int) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY protocol v1 line is not ASCII") from None
    parts = text.split(" ")
    if parts[1] == "UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, None, None, length)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY protocol v1 line is not PROXY TCP4|TCP6 src dst sport dport")
    kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    kind = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = kind(parts[2]), kind(parts[3])
    except ValueError:
        raise ProxyHeaderError(f"PROXY protocol v1 addresses are not {parts[1]} addresses") from None
    return ProxyHeader(1, (_text(source), _port(parts[4])), (_text(destination), _port(parts[5])), length)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as text; an IPv4-mapped IPv6 address as the IPv4 one (a dual-stack proxy's IPv4 client)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY protocol v1 port {text[:8]!r} is not 0–65535")
    return int(text)


def _check_v2_fixed(buffer: bytes) -> None:
    version, command = buffer[12] >> 4, buffer[12] & 0x0F
    if version != 2 or command not in (0x0, 0x1):
        raise ProxyHeaderError(f"PROXY protocol v2 version/command byte {buffer[12]:#04x} is invalid")
    family, transport = buffer[13] >> 4, buffer[13] & 0x0F
    if family not in _FAMILIES or transport not in _TRANSPORTS:
        raise ProxyHeaderError(f"PROXY protocol v2 family/transport byte {buffer[13]:#04x} is invalid")
    if command == 0x1 and _V2_LENGTH.unpack_from(buffer, 14)[0] < _FAMILIES[family]:
        raise ProxyHeaderError("PROXY protocol v2 length is shorter than its addresses")


def _parse_v2(header: bytes) -> ProxyHeader:
    command, family, transport = header[12] & 0x0F, header[13] >> 4, header[13] & 0x0F
    if command == 0x0 or transport == 0x0:  # LOCAL (a proxy's own check), or UNSPEC: the connection's address
        return ProxyHeader(2, None, None, len(header))
    if family == 0x1:
        src4, dst4, sport, dport = _INET.unpack_from(header, V2_FIXED)
        return ProxyHeader(
            2,
            (_text(ipaddress.IPv4Address(src4)), sport),
            (_text(ipaddress.IPv4Address(dst4)), dport),
            len(header),
        )
    if family == 0x2:
        src6, dst6, sport, dport = _INET6.unpack_from(header, V2_FIXED)
        return ProxyHeader(
            2,
            (_text(ipaddress.IPv6Address(src6)), sport),
            (_text(ipaddress.IPv6Address(dst6)), dport),
            len(header),
        )
    return ProxyHeader(2, None, None, len(header))  # UNSPEC or UNIX: no network address
