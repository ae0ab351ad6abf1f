"""The raw type-1 signature: OpenSSL through ctypes, the blinded Python reference, and textbook RSA agree."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import LocalProtocolError, crypto, raw_signer
from devicecloud.protocol.rawsign import python_signer


def _textbook(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """(00 01 FF… 00 ‖ data)^d mod n, with no CRT and no blinding: the definition."""
    priv = key.private_numbers()
    k = (key.key_size + 7) // 8
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(data)) + b"\x00" + data
    return pow(int.from_bytes(block, "big"), priv.d, priv.public_numbers.n).to_bytes(k, "big")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libcrypto is required on Linux only")
def test_linux_signs_through_libcrypto(keys: Any) -> None:
    """On Linux the signer found is OpenSSL's (Python's ssl module is linked against it)."""
    signer = raw_signer(keys.server)
    assert ("libcrypto", "") == (signer.backend, signer.reason)


@pytest.mark.parametrize("data", [b"", b"\x00" * 20, b"\xff" * 20, bytes(range(20)), b"x" * 245])
def test_chosen_signer_matches_the_definition(keys: Any, data: bytes) -> None:
    """Whatever backend is chosen, its signature is byte-identical to textbook RSA on the type-1 block."""
    assert _textbook(keys.server, data) == raw_signer(keys.server).sign(data)


@pytest.mark.parametrize("data", [b"", b"\x01" * 20, b"x" * 245])
def test_blinded_reference_matches_the_definition(keys: Any, data: bytes) -> None:
    """The Python reference (blinded, CRT) gives the textbook signature whatever blinding factor it drew."""
    assert _textbook(keys.server, data) == crypto.rsa_sign_raw(keys.server, data)
    assert _textbook(keys.server, data) == python_signer(keys.server).sign(data)


def test_signature_verifies_with_the_public_key(keys: Any) -> None:
    """A signature from the chosen signer passes the device-side check, and only for its own data."""
    signature = raw_signer(keys.server).sign(b"h" * 20)
    assert crypto.rsa_verify_raw(keys.server.public_key(), signature, b"h" * 20)
    assert not crypto.rsa_verify_raw(keys.server.public_key(), signature, b"g" * 20)


@pytest.mark.parametrize("make", [raw_signer, python_signer])
def test_data_too_long_is_our_error(keys: Any, make: Any) -> None:
    """More than k - 11 bytes cannot be signed: a local error, before any key operation."""
    with pytest.raises(LocalProtocolError, match="too long"):
        make(keys.server).sign(b"x" * 246)


def test_device_size_keys_work_too(keys: Any) -> None:
    """The signer is not tied to 2048 bits: an RSA-1024 key signs to 128 bytes, still textbook-exact."""
    assert _textbook(keys.device, b"abc") == raw_signer(keys.device).sign(b"abc")
