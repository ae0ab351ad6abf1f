"""
The server key slot image matches what a real device was given (conformance keys/server_key_slot.bin).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from tests.support.conformance import KEYS

from devicecloud.protocol.errors import LocalProtocolError
from devicecloud.protocol.keyslot import server_key_slot


def test_slot_matches_the_recorded_device_slot() -> None:
    """127.0.0.1 and the default port give the exact 512 bytes the conformance device used."""
    expected = (KEYS / "server_key_slot.bin").read_bytes()
    der = (KEYS / "server_public.der").read_bytes()
    assert expected == server_key_slot(der, "127.0.0.1")


def test_domain_and_port() -> None:
    """A domain is a type-1 TLV and a non-default port is written big-endian at 450."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    slot = server_key_slot(der, "cloud.example.com", 6000)
    assert bytes([1, 17]) + b"cloud.example.com" == slot[384 : 384 + 19]
    assert (6000).to_bytes(2, "big") == slot[450:452]
    with pytest.raises(LocalProtocolError):
        server_key_slot(der, "::1")
    with pytest.raises(LocalProtocolError):
        server_key_slot(der[:-1], "127.0.0.1")
