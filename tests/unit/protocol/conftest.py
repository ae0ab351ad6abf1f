"""Fixtures for the protocol tests: RSA keys generated once per session (no shared files needed)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class KeySet:
    server: rsa.RSAPrivateKey
    device: rsa.RSAPrivateKey
    other_device: rsa.RSAPrivateKey
    device_id: str = "0123456789abcdef01234567"


@pytest.fixture(scope="session")
def keys() -> KeySet:
    return KeySet(
        server=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        # The protocol fixes device keys at RSA-1024.
        device=rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
        other_device=rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
    )
