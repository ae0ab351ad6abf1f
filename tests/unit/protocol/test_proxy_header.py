"""
The PROXY protocol header parser against the spec's own examples (HAProxy's proxy-protocol.txt, v1 §2.1 and
v2 §2.2), fed whole and byte by byte, and the malformed headers a receiver must refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from devicecloud.protocol.proxy_header import (
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    parse_proxy_header,
)

FFFF6 = ":".join(["ffff"] * 8)

V1_EXAMPLES = [
    # §2.1: the worst case for TCP4, a typical line, and the 107-byte worst case overall.
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", ("255.255.255.255", 65535)),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324)),
    (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(), (FFFF6, 65535)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 5683\r\n", ("2001:db8::1", 40000)),
    (b"PROXY UNKNOWN\r\n", None),
    (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), None),
]

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")
# v2, PROXY command (0x21), TCP over IPv4 (0x11), 12 bytes: 192.0.2.7:40000 → 10.0.0.1:5683
V2_INET = SIG + bytes.fromhex("2111000c" + "c0000207" + "0a000001" + "9c40" + "1633")
# v2, PROXY, TCP over IPv6 (0x21), 36 bytes: [2001:db8::7]:443 → [2001:db8::1]:5683
V2_INET6 = SIG + bytes.fromhex(
    "21210024" + "20010db8000000000000000000000007" + "20010db8000000000000000000000001" + "01bb" + "1633"
)
# v2, LOCAL (0x20), UNSPEC (0x00), no addresses: a proxy's own health check
V2_LOCAL = SIG + bytes.fromhex("20000000")
# v2 over IPv4 with a TLV (PP2_TYPE_AUTHORITY 0x02, "dev") after the addresses: length 12 + 6
V2_INET_TLV = SIG + bytes.fromhex("21110012" + "c6336401" + "0a000001" + "0050" + "1633" + "020003") + b"dev"
# v2, PROXY over UNIX sockets (0x31): 216 bytes of paths, no network address
V2_UNIX = SIG + bytes.fromhex("213100d8") + bytes(216)

V2_EXAMPLES = [
    (V2_INET, ("192.0.2.7", 40000), ("10.0.0.1", 5683)),
    (V2_INET6, ("2001:db8::7", 443), ("2001:db8::1", 5683)),
    (V2_LOCAL, None, None),
    (V2_INET_TLV, ("198.51.100.1", 80), ("10.0.0.1", 5683)),
    (V2_UNIX, None, None),
]


def _ids(examples: Sequence[tuple[Any, ...]]) -> list[str]:
    return [f"{len(example[0])}-bytes-{n}" for n, example in enumerate(examples)]


@pytest.mark.parametrize(("line", "source"), V1_EXAMPLES, ids=_ids(V1_EXAMPLES))
def test_version_1_examples_whole_and_byte_by_byte(line: bytes, source: tuple[str, int] | None) -> None:
    assert len(line) <= 107
    header, rest = parse_proxy_header(line + b"\x17device bytes")
    assert (1, source, len(line), b"\x17device bytes") == (header.version, header.source, header.length, rest)
    reader = ProxyHeaderReader()
    for index in range(len(line) - 1):
        assert reader.feed(line[index : index + 1]) is None
        assert reader.wanted() >= 1
    assert header == reader.feed(line[-1:])
    assert (0, b"") == (reader.wanted(), reader.rest)


@pytest.mark.parametrize(("block", "source", "destination"), V2_EXAMPLES, ids=_ids(V2_EXAMPLES))
def test_version_2_examples_whole_and_byte_by_byte(
    block: bytes, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    assert ProxyHeader(2, source, destination, len(block)) == parse_proxy_header(block + b"xyz")[0]
    assert b"xyz" == parse_proxy_header(block + b"xyz")[1]
    reader = ProxyHeaderReader()
    for index in range(len(block) - 1):
        assert reader.feed(block[index : index + 1]) is None
    assert ProxyHeader(2, source, destination, len(block)) == reader.feed(block[-1:])
    assert (0, b"") == (reader.wanted(), reader.rest)


@pytest.mark.parametrize("block", [line for line, _ in V1_EXAMPLES] + [b for b, _, _ in V2_EXAMPLES])
def test_wanted_never_asks_past_the_header(block: bytes) -> None:
    """Reading exactly `wanted()` bytes each time ends at the header's end (the server speaks first)."""
    reader = ProxyHeaderReader()
    offset = 0
    while reader.header is None:
        wanted = reader.wanted()
        assert 1 <= wanted <= len(block) - offset
        reader.feed(block[offset : offset + wanted])
        offset += wanted
    assert (offset, b"") == (len(block), reader.rest)


def test_ipv4_mapped_sources_read_as_ipv4() -> None:
    line = b"PROXY TCP6 ::ffff:198.51.100.9 ::ffff:10.0.0.1 1234 5683\r\n"
    assert ("198.51.100.9", 1234) == parse_proxy_header(line)[0].source


MALFORMED = [
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="not-a-header"),
    pytest.param(b"\x17\x03\x03\x00\x10" + bytes(16), id="device-bytes"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", id="v1-lf-only"),
    pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-bad-protocol"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", id="v1-missing-port"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", id="v1-extra-field"),
    pytest.param(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", id="v1-double-space"),
    pytest.param(b"PROXY TCP4 ::1 ::2 1 2\r\n", id="v1-tcp4-with-v6"),
    pytest.param(b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-tcp6-with-v4"),
    pytest.param(b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", id="v1-bad-address"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", id="v1-port-too-big"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", id="v1-negative-port"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", id="v1-not-ascii"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", id="v1-too-long"),
    pytest.param(SIG + bytes.fromhex("1111000c") + bytes(12), id="v2-version-1"),
    pytest.param(SIG + bytes.fromhex("2211000c") + bytes(12), id="v2-command-2"),
    pytest.param(SIG + bytes.fromhex("2141000c") + bytes(12), id="v2-family-4"),
    pytest.param(SIG + bytes.fromhex("2113000c") + bytes(12), id="v2-transport-3"),
    pytest.param(SIG + bytes.fromhex("21110008") + bytes(8), id="v2-inet-too-short"),
    pytest.param(SIG + bytes.fromhex("21210010") + bytes(16), id="v2-inet6-too-short"),
    pytest.param(SIG + bytes.fromhex("2111ffff"), id="v2-too-long"),
    pytest.param(SIG[:11] + b"X" + bytes.fromhex("2111000c") + bytes(12), id="v2-bad-signature"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_headers_are_refused_as_early_as_they_can_be(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)
    reader = ProxyHeaderReader()

    def byte_by_byte() -> None:
        for index in range(len(data)):
            reader.feed(data[index : index + 1])

    with pytest.raises(ProxyHeaderError):
        byte_by_byte()


def test_a_long_v1_line_is_refused_at_107_bytes_without_waiting_for_more() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes, no LF yet: still possible
    with pytest.raises(ProxyHeaderError):
        reader.feed(b"x")


def test_an_oversized_v2_length_is_refused_from_the_fixed_part_alone() -> None:
    with pytest.raises(ProxyHeaderError):
        ProxyHeaderReader(max_length=64).feed(SIG + bytes.fromhex("21110100"))


def test_incomplete_header() -> None:
    with pytest.raises(ProxyHeaderError, match="incomplete"):
        parse_proxy_header(V2_INET[:-1])
    with pytest.raises(ProxyHeaderError, match="incomplete"):
        parse_proxy_header(b"PROXY TCP4 1.2.3.4")
