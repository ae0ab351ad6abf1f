"""The DTLS profile's cryptography against published test vectors (vectors.json names their sources)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from devicecloud.protocol.dtls.primitives import (
    RecordCipher,
    ecdh_shared_secret,
    ecdsa_signer,
    ecdsa_verify,
    ecdsa_verify_digest,
    key_block,
    load_peer_point,
    load_spki,
    master_secret,
    prf,
    spki_der,
    verify_data,
)
from devicecloud.protocol.dtls.records import plain_aad
from devicecloud.protocol.errors import RemoteProtocolError

VECTORS: dict[str, list[dict[str, Any]]] = json.loads((Path(__file__).parent / "vectors.json").read_text())


def _ids(name: str) -> list[str]:
    return [vector["source"].split(",")[0] for vector in VECTORS[name]]


@pytest.mark.parametrize("vector", VECTORS["tls12_prf_sha256"], ids=_ids("tls12_prf_sha256"))
def test_prf_matches_the_published_vector(vector: dict[str, Any]) -> None:
    expected = bytes.fromhex(vector["output"])
    out = prf(
        bytes.fromhex(vector["secret"]),
        vector["label"].encode(),
        bytes.fromhex(vector["seed"]),
        len(expected),
    )
    assert expected == out
    # A shorter output is a prefix (the PRF is a stream), as master secret and verify_data rely on.
    assert expected[:12] == prf(
        bytes.fromhex(vector["secret"]), vector["label"].encode(), bytes.fromhex(vector["seed"]), 12
    )


@pytest.mark.parametrize("vector", VECTORS["aes_ccm_8"], ids=_ids("aes_ccm_8"))
def test_ccm_8_matches_the_published_vectors(vector: dict[str, Any]) -> None:
    key, nonce = bytes.fromhex(vector["key"]), bytes.fromhex(vector["nonce"])
    aad, plaintext = bytes.fromhex(vector["aad"]), bytes.fromhex(vector["plaintext"])
    expected = bytes.fromhex(vector["ciphertext_and_tag"])
    aead = AESCCM(key, tag_length=8)
    assert expected == aead.encrypt(nonce, plaintext, aad)
    assert plaintext == aead.decrypt(nonce, expected, aad)


def test_record_cipher_is_the_12_byte_nonce_vector_split_as_tls_splits_it() -> None:
    """SP 800-38C C.3 has TLS's shape: nonce = implicit IV(4) ‖ explicit nonce(8), 8-byte tag."""
    vector = VECTORS["aes_ccm_8"][0]
    nonce = bytes.fromhex(vector["nonce"])
    cipher = RecordCipher(bytes.fromhex(vector["key"]), nonce[:4])
    aad = bytes.fromhex(vector["aad"])
    fragment = cipher.seal(nonce[4:], aad, bytes.fromhex(vector["plaintext"]))
    assert nonce[4:] + bytes.fromhex(vector["ciphertext_and_tag"]) == fragment
    assert bytes.fromhex(vector["plaintext"]) == cipher.open(fragment, lambda _n: aad)
    tampered = fragment[:-1] + bytes([fragment[-1] ^ 1])
    with pytest.raises(RemoteProtocolError, match="authentication"):
        cipher.open(tampered, lambda _n: aad)
    with pytest.raises(RemoteProtocolError, match="too short"):
        cipher.open(fragment[:15], lambda _n: aad)


def test_record_cipher_passes_the_plaintext_length_to_the_aad() -> None:
    cipher = RecordCipher(bytes(16), bytes(4))
    nonce = bytes(8)
    fragment = cipher.seal(nonce, plain_aad(nonce, 23, 5), b"hello")
    lengths: list[int] = []

    def aad(n: int) -> bytes:
        lengths.append(n)
        return plain_aad(nonce, 23, n)

    assert b"hello" == cipher.open(fragment, aad)
    assert [5] == lengths


@pytest.mark.parametrize("vector", VECTORS["ecdh_p256"], ids=_ids("ecdh_p256"))
def test_ecdh_matches_the_published_vector(vector: dict[str, Any]) -> None:
    private = ec.derive_private_key(int(vector["initiator_private"], 16), ec.SECP256R1())
    assert bytes.fromhex(vector["shared_x"]) == ecdh_shared_secret(
        private, bytes.fromhex(vector["responder_public"])
    )


@pytest.mark.parametrize(
    "point",
    [b"", b"\x04" + bytes(64), b"\x02" + bytes(32), b"\x04" + bytes(63), b"\x04" + b"\x01" * 64],
    ids=["empty", "zero point", "compressed", "short", "off the curve"],
)
def test_bad_points_raise_only_remote_protocol_error(point: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        load_peer_point(point)


@pytest.mark.parametrize(
    "vector", VECTORS["ecdsa_p256_sha256_deterministic"], ids=_ids("ecdsa_p256_sha256_deterministic")
)
def test_the_signer_is_rfc_6979_deterministic(vector: dict[str, Any]) -> None:
    private = ec.derive_private_key(int(vector["private_key"], 16), ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    assert (int(vector["public_x"], 16), int(vector["public_y"], 16)) == (numbers.x, numbers.y)
    signature = ecdsa_signer(private)(vector["message"].encode())
    assert (int(vector["r"], 16), int(vector["s"], 16)) == decode_dss_signature(signature)
    assert ecdsa_verify(private.public_key(), signature, vector["message"].encode())
    assert not ecdsa_verify(private.public_key(), signature, b"other message")
    assert not ecdsa_verify(private.public_key(), b"\x30\x00", vector["message"].encode())
    r, s = decode_dss_signature(signature)
    assert not ecdsa_verify(private.public_key(), encode_dss_signature(r, s ^ 1), vector["message"].encode())
    digest = hashlib.sha256(vector["message"].encode()).digest()  # the server verifies a running hash
    assert ecdsa_verify_digest(private.public_key(), signature, digest)
    assert not ecdsa_verify_digest(private.public_key(), signature, hashlib.sha256(b"other").digest())
    assert not ecdsa_verify_digest(private.public_key(), signature, b"short")


def test_key_schedule_follows_rfc_5246() -> None:
    """master = PRF(pre, "master secret", cr ‖ sr); key_block = PRF(master, "key expansion", sr ‖ cr)."""
    pre, client_random, server_random = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    master = master_secret(pre, client_random, server_random)
    assert prf(pre, b"master secret", client_random + server_random, 48) == master
    block = prf(master, b"key expansion", server_random + client_random, 40)
    keys = key_block(master, client_random, server_random)
    assert (block[:16], block[16:32], block[32:36], block[36:40]) == (
        keys.client_key,
        keys.server_key,
        keys.client_iv,
        keys.server_iv,
    )
    assert prf(master, b"client finished", b"h" * 32, 12) == verify_data(
        master, b"client finished", b"h" * 32
    )


def test_spki_round_trip_and_refusals() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert spki_der(key) == spki_der(load_spki(spki_der(key)))
    with pytest.raises(RemoteProtocolError, match="not SubjectPublicKeyInfo"):
        load_spki(b"\x30\x03\x02\x01\x00")
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(RemoteProtocolError, match="not a P-256 key"):
        load_spki(spki_der(other_curve))  # type: ignore[arg-type]


@pytest.mark.parametrize("secret_size", [0, 1, 32, 48, 63, 64, 65, 200])
def test_prf_is_p_sha256_for_any_secret_length(secret_size: int) -> None:
    """The hand-made HMAC agrees with the standard library's, including keys longer than a block."""
    import hashlib
    import hmac

    secret, seed = bytes(range(secret_size % 256)) * (secret_size // 256 + 1), b"seed"
    secret = secret[:secret_size]
    a, expected = b"label" + seed, b""
    while len(expected) < 70:
        a = hmac.digest(secret, a, hashlib.sha256)
        expected += hmac.digest(secret, a + b"label" + seed, hashlib.sha256)
    assert expected[:70] == prf(secret, b"label", seed, 70)
