"""
The webhook address guard: which addresses a webhook may reach when private addresses are blocked. Every
IPv6 form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) is judged by that address too.
"""

from __future__ import annotations

import pytest

from devicecloud.webhooks.http import headers_for_redirect, is_public

REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",  # noqa: S104 (an address to refuse, not one to bind)
    "224.0.0.1",
    "::1",
    "::",
    "fe80::1%eth0",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible
    "::10.0.0.1",
    "::169.254.169.254",
    "64:ff9b::127.0.0.1",  # NAT64 (RFC 6052)
    "64:ff9b::7f00:1",
    "64:ff9b::10.0.0.1",
    "64:ff9b::192.168.0.1",
    "64:ff9b::169.254.169.254",
    "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215)
    "64:ff9b:1::808:808",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:0:7f00:1:0:f227:80ff:fffe",  # Teredo, server 127.0.0.1
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_and_their_ipv6_forms_are_refused(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize(
    ("old", "new", "kept"),
    [
        ("http://a.example/x", "http://a.example/y", True),
        ("http://a.example/x", "http://A.EXAMPLE:80/y", True),  # the same origin, written otherwise
        ("http://a.example/x", "https://a.example/x", False),  # another scheme
        ("http://a.example/x", "http://a.example:8080/x", False),  # another port
        ("http://a.example/x", "http://b.example/x", False),  # another host
        ("http://a.example/x", "http://evil.a.example/x", False),
    ],
)
def test_redirect_headers_follow_the_origin(old: str, new: str, kept: bool) -> None:
    headers = {"User-Agent": "ParticleBot", "Authorization": "Basic x", "X-Key": "k", "Cookie": "c=1"}
    sent = headers_for_redirect(headers, frozenset({"authorization", "x-key"}), old, new)
    assert (headers if kept else {"User-Agent": "ParticleBot"}) == sent
