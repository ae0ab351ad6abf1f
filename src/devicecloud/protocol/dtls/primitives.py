"""
The cryptography of the one DTLS 1.2 profile Particle devices speak, on ``cryptography`` primitives.

TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (0xC0AE) on P-256 with SHA-256 (RFC 5246 §5 PRF, RFC 6655 / 7251 record
protection): the PRF and key schedule, AES-128-CCM with an 8-byte tag, ECDHE and ECDSA-SHA256. Whatever the
peer controls (points, keys, signatures, ciphertexts) goes through functions that raise only
``RemoteProtocolError`` (or return ``False``/``None``), never another exception.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from devicecloud.protocol.errors import RemoteProtocolError

__all__ = [
    "EXPLICIT_NONCE_SIZE",
    "TAG_SIZE",
    "KeyBlock",
    "RecordCipher",
    "Signer",
    "ecdh_shared_secret",
    "ecdsa_signer",
    "ecdsa_verify",
    "ecdsa_verify_digest",
    "encode_point",
    "hmac_sha256_pads",
    "key_block",
    "load_peer_point",
    "load_spki",
    "master_secret",
    "prf",
    "private_key_from_bytes",
    "spki_der",
    "verify_data",
]

TAG_SIZE = 8  # CCM_8
EXPLICIT_NONCE_SIZE = 8  # the record's epoch ‖ sequence, sent in front of the ciphertext
_KEY_SIZE = 16
_IMPLICIT_IV_SIZE = 4
_MASTER_SECRET_SIZE = 48
_VERIFY_DATA_SIZE = 12

# Bound once: ``ec`` is a module wrapper whose every attribute access runs Python (~1.5 µs each).
_PublicKey = ec.EllipticCurvePublicKey
_Curve = ec.SECP256R1
_P256 = ec.SECP256R1()
_ECDH = ec.ECDH()
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ECDSA_PREHASHED = ec.ECDSA(Prehashed(hashes.SHA256()))
_DERIVE = ec.derive_private_key
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# Signs data with the server's (or the device's) long-term P-256 key: data → DER ECDSA-SHA256 signature.
Signer = Callable[[bytes], bytes]


_IPAD = bytes(x ^ 0x36 for x in range(256))  # byte translation tables for HMAC's key pads (RFC 2104)
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """
    HMAC-SHA256 keyed by hand (RFC 2104): the inner and outer SHA-256 states after the key's pads. An HMAC
    of ``data`` is ``outer.copy().update(inner.copy().update(data).digest())`` (copy them, never update
    them): C objects copied in C, where ``hmac.HMAC.copy`` runs Python and ``hmac.digest`` keys every call.
    """
    key = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


_last_keyed: tuple[bytes | None, hashlib._Hash, hashlib._Hash] = (None, hashlib.sha256(), hashlib.sha256())


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """
    TLS 1.2 PRF with SHA-256: ``P_SHA256(secret, label ‖ seed)`` cut to ``length`` bytes (RFC 5246 §5).

    A handshake runs 12 HMACs under one of two secrets (pre-master, then master three times in a row):
    the last secret's keyed states (:func:`hmac_sha256_pads`) are kept, and the HMACs are written out
    inline (a nested function per HMAC cost a fifth of the PRF's time).
    """
    global _last_keyed  # a one-entry cache, swapped whole (atomic)
    cached = _last_keyed
    if cached[0] == secret:
        inner, outer = cached[1], cached[2]
    else:
        inner, outer = hmac_sha256_pads(secret)
        _last_keyed = (secret, inner, outer)
    seed = label + seed
    out = b""
    a = seed
    while len(out) < length:
        step = inner.copy()
        step.update(a)
        final = outer.copy()
        final.update(step.digest())
        a = final.digest()  # A(i) = HMAC(secret, A(i-1))
        step = inner.copy()
        step.update(a + seed)
        final = outer.copy()
        final.update(step.digest())
        out += final.digest()  # HMAC(secret, A(i) ‖ seed)
    return out[:length]


def master_secret(pre_master: bytes, client_random: bytes, server_random: bytes) -> bytes:
    """The 48-byte master secret (no extended master secret: the devices do not negotiate it)."""
    return prf(pre_master, b"master secret", client_random + server_random, _MASTER_SECRET_SIZE)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """The write keys and implicit IVs of both directions (CCM has no MAC keys)."""

    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes


def key_block(master: bytes, client_random: bytes, server_random: bytes) -> KeyBlock:
    """Key expansion: note the seed order, server random first (RFC 5246 §6.3)."""
    size = 2 * (_KEY_SIZE + _IMPLICIT_IV_SIZE)
    block = prf(master, b"key expansion", server_random + client_random, size)
    k, i = _KEY_SIZE, _IMPLICIT_IV_SIZE
    return KeyBlock(block[:k], block[k : 2 * k], block[2 * k : 2 * k + i], block[2 * k + i : 2 * k + 2 * i])


def verify_data(master: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Finished's 12 bytes; ``label`` is ``b"client finished"`` or ``b"server finished"``."""
    return prf(master, label, transcript_hash, _VERIFY_DATA_SIZE)


class RecordCipher:
    """
    AES-128-CCM_8 for one direction: nonce = implicit IV(4) ‖ explicit nonce(8); the record fragment is
    explicit nonce ‖ ciphertext ‖ tag(8).
    """

    __slots__ = ("_aead", "_iv")

    def __init__(self, key: bytes, implicit_iv: bytes) -> None:
        self._aead = AESCCM(key, tag_length=TAG_SIZE)
        self._iv = implicit_iv

    def seal(self, explicit_nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """The record fragment for ``plaintext``."""
        return explicit_nonce + self._aead.encrypt(self._iv + explicit_nonce, plaintext, aad)

    def open(self, fragment: bytes, aad_for_length: Callable[[int], bytes]) -> bytes:
        """
        The plaintext of a record fragment; ``aad_for_length(plaintext length)`` builds the AAD.

        Raises:
            RemoteProtocolError: too short, or the tag does not match.
        """
        if len(fragment) < EXPLICIT_NONCE_SIZE + TAG_SIZE:
            raise RemoteProtocolError("encrypted record too short")
        nonce = self._iv + fragment[:EXPLICIT_NONCE_SIZE]
        body = fragment[EXPLICIT_NONCE_SIZE:]
        try:
            return self._aead.decrypt(nonce, body, aad_for_length(len(body) - TAG_SIZE))
        except InvalidTag as exc:
            raise RemoteProtocolError("record authentication failed") from exc


def encode_point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 65-byte uncompressed point."""
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def load_peer_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """
    The peer's ephemeral P-256 point (uncompressed only, as ec_point_formats [0] says).

    Raises:
        RemoteProtocolError: not a 65-byte point on the curve.
    """
    if len(point) != 65 or point[0] != 4:
        raise RemoteProtocolError("ECDHE point is not an uncompressed P-256 point")
    try:
        return _PublicKey.from_encoded_point(_P256, point)
    except ValueError as exc:
        raise RemoteProtocolError("ECDHE point is not on P-256") from exc


def private_key_from_bytes(raw: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from 32+ random bytes (so injected randomness fixes the ephemeral key too)."""
    return _DERIVE(int.from_bytes(raw, "big") % (_P256_ORDER - 1) + 1, _P256)


def ecdh_shared_secret(private_key: ec.EllipticCurvePrivateKey, peer_point: bytes) -> bytes:
    """The pre-master secret: the x-coordinate of the shared point (32 bytes)."""
    peer = load_peer_point(peer_point)
    try:
        return private_key.exchange(_ECDH, peer)
    except ValueError as exc:  # pragma: no cover - from_encoded_point already rejects bad points
        raise RemoteProtocolError("ECDH failed") from exc


def ecdsa_signer(private_key: ec.EllipticCurvePrivateKey) -> Signer:
    """A deterministic (RFC 6979) ECDSA-SHA256 signer, as the devices use: transcripts replay exactly."""
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    def sign(data: bytes) -> bytes:
        return private_key.sign(data, algorithm)

    return sign


def ecdsa_verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` (DER) is ``public_key``'s ECDSA-SHA256 signature of ``data``; never raises."""
    try:
        public_key.verify(signature, data, _ECDSA_SHA256)
    except (InvalidSignature, ValueError):
        return False
    return True


def ecdsa_verify_digest(public_key: ec.EllipticCurvePublicKey, signature: bytes, digest: bytes) -> bool:
    """:func:`ecdsa_verify` of data whose SHA-256 is ``digest`` (a running transcript hash); never raises."""
    try:
        public_key.verify(signature, digest, _ECDSA_PREHASHED)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_spki(der: bytes) -> ec.EllipticCurvePublicKey:
    """
    A P-256 public key from SubjectPublicKeyInfo DER.

    Raises:
        RemoteProtocolError: not DER, not EC, or not P-256.
    """
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError("the peer's key is not SubjectPublicKeyInfo DER") from exc
    if not isinstance(key, _PublicKey) or not isinstance(key.curve, _Curve):
        raise RemoteProtocolError("the peer's key is not a P-256 key")
    return key


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo DER (what a raw-public-key Certificate carries)."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
