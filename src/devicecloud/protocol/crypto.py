"""
Cryptography of the TCP protocol: RSA handshake material and the AES-128-CBC session channel.

Theory of operation:
    Handshake (all RSA with PKCS#1 v1.5 padding):

    - the device sends ``RSA-2048-encrypt(server key, nonce(40) ‖ device id(12) ‖ device SPKI DER(162))``;
    - the cloud replies ``C(128) ‖ SIG(256)`` where ``C = RSA-1024-encrypt(device key, K)``, ``K`` being 40
      random
      bytes ``aes_key(16) ‖ iv(16) ‖ salt(8)``, and ``SIG`` is a *raw* type-1 signature (``00 01 FF… 00 ‖
      H``, no
      DigestInfo) of ``H = HMAC-SHA1(key=K, msg=C)`` — ``cryptography``'s ``sign()`` always adds a DigestInfo,
      so the private-key operation is done by hand here (reference, blinded) or through OpenSSL
      (`rawsign`, what the gateway uses).

    Encryption with PKCS#1 v1.5 is also done by hand when the padding string comes from an injected
    ``random_bytes`` (the conformance transcripts record it); with the system's randomness, and for
    decryption, ``cryptography`` does it.

    Session: AES-128-CBC with key ``K[0:16]``, PKCS#7 padding (always 1–16 bytes). Both directions start
    with IV
    ``K[16:32]``; after each message the IV *of that direction* becomes the first 16 bytes of that message's
    ciphertext (:class:`SessionCipher` keeps the two chains).

    Everything the peer controls goes through functions that raise only ``RemoteProtocolError``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEVICE_BLOCK_SIZE",
    "DEVICE_ID_SIZE",
    "KEY_MATERIAL_SIZE",
    "NONCE_SIZE",
    "SERVER_REPLY_SIZE",
    "RandomBytes",
    "SessionCipher",
    "SessionKeys",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "build_device_block",
    "build_server_reply",
    "hmac_sha1",
    "load_private_key",
    "load_public_key",
    "open_device_block",
    "open_server_reply",
    "public_key_der",
    "rsa_decrypt",
    "rsa_encrypt",
    "rsa_sign_raw",
    "rsa_verify_raw",
]

RandomBytes = Callable[[int], bytes]

NONCE_SIZE = 40
DEVICE_ID_SIZE = 12
KEY_MATERIAL_SIZE = 40
DEVICE_BLOCK_SIZE = 256
SERVER_REPLY_SIZE = 384
_DEVICE_KEY_SIZE = 128  # RSA-1024 ciphertext
_AES_BLOCK = 16
#: Messages of this many padded bytes or more are encrypted through a CBC context of their own.
_CBC_CONTEXT_FROM = 6 * _AES_BLOCK


# ------------------------------------------------------------------------------------------------ keys


def load_private_key(data: bytes) -> rsa.RSAPrivateKey:
    """
    Load an RSA private key from PEM or DER (PKCS#1 or PKCS#8).

    Returns:
        The key.
    """
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if data.lstrip().startswith(b"-----")
            else serialization.load_der_private_key(data, password=None)
        )
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"not an RSA private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise LocalProtocolError("not an RSA private key")
    return key


def _load_public_key(data: bytes) -> rsa.RSAPublicKey:
    key = (
        serialization.load_pem_public_key(data)
        if data.lstrip().startswith(b"-----")
        else serialization.load_der_public_key(data)
    )
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """
    Load an RSA public key from PEM or DER (SubjectPublicKeyInfo or PKCS#1).

    Returns:
        The key.
    """
    try:
        return _load_public_key(data)
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"not an RSA public key: {exc}") from exc


def load_device_public_key(data: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """
    A device's stored public key (PEM or DER): RSA (TCP devices) or EC P-256 (UDP devices).

    Raises:
        LocalProtocolError: neither.
    """
    try:
        return _load_public_key(data)
    except (ValueError, TypeError):
        pass
    try:
        key = (
            serialization.load_pem_public_key(data)
            if data.lstrip().startswith(b"-----")
            else serialization.load_der_public_key(data)
        )
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"not a device public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise LocalProtocolError("not an RSA or EC P-256 public key")
    return key


def public_key_der(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo DER of a public key (162 bytes for RSA-1024, 294 for RSA-2048)."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ------------------------------------------------------------------------------------------------ RSA


def _k(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> int:
    return (key.key_size + 7) // 8


def rsa_encrypt(public_key: rsa.RSAPublicKey, message: bytes, random_bytes: RandomBytes) -> bytes:
    """
    RSA PKCS#1 v1.5 (type 2) encryption with an injectable padding source.

    With the system's randomness (``os.urandom``, what runs in production) ``cryptography`` pads and
    encrypts (OpenSSL: ~11 µs for RSA-1024 against ~42 µs for Python's ``pow``); any other source (the
    conformance replays inject recorded bytes) pads by hand here, so its bytes are reproduced exactly.

    Args:
        public_key: the recipient key.
        message: at most ``k - 11`` bytes.
        random_bytes: source of the padding string; zero bytes it returns are skipped and redrawn.

    Returns:
        The ``k``-byte ciphertext.
    """
    k = _k(public_key)
    ps_len = k - 3 - len(message)
    if ps_len < 8:
        raise LocalProtocolError("message too long for RSA PKCS#1 v1.5")
    if random_bytes is os.urandom:
        return public_key.encrypt(message, padding.PKCS1v15())
    ps = bytearray()
    while len(ps) < ps_len:
        ps += random_bytes(ps_len - len(ps)).replace(b"\x00", b"")
    em = b"\x00\x02" + bytes(ps) + b"\x00" + message
    numbers = public_key.public_numbers()
    return pow(int.from_bytes(em, "big"), numbers.e, numbers.n).to_bytes(k, "big")


def rsa_decrypt(private_key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """
    RSA PKCS#1 v1.5 decryption of peer bytes.

    Returns:
        The plaintext.

    Raises:
        RemoteProtocolError: wrong size or the padding does not check out.
    """
    if len(ciphertext) != _k(private_key):
        raise RemoteProtocolError(f"RSA block of {len(ciphertext)} bytes, expected {_k(private_key)}")
    try:
        return private_key.decrypt(ciphertext, padding.PKCS1v15())
    except ValueError as exc:
        raise RemoteProtocolError("RSA decryption failed") from exc


def _type1_block(key_bytes: int, data: bytes) -> bytes:
    return b"\x00\x01" + b"\xff" * (key_bytes - 3 - len(data)) + b"\x00" + data


def rsa_sign_raw(private_key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """
    Raw PKCS#1 v1.5 type-1 signature of ``data`` (no hashing, no DigestInfo), in Python integers.

    The reference implementation, and the fallback of `rawsign.raw_signer` (which normally signs through
    OpenSSL, ~20 times faster). Python's ``pow`` is not constant-time, so the message is blinded with a
    fresh random ``r`` (from ``secrets``, never from an injected ``random_bytes``: the output does not
    depend on it): ``s = ((m·r^e)^d mod n)·r⁻¹ mod n``.

    Returns:
        The ``k``-byte signature ``(00 01 FF… 00 ‖ data)^d mod n`` (computed with the CRT).
    """
    k = _k(private_key)
    if len(data) > k - 11:
        raise LocalProtocolError("data too long for a raw RSA signature")
    priv = private_key.private_numbers()
    n, e = priv.public_numbers.n, priv.public_numbers.e
    m = int.from_bytes(_type1_block(k, data), "big")
    r = secrets.randbelow(n - 2) + 2  # a factor of n here would mean we had just factored n
    blinded = m * pow(r, e, n) % n
    s1 = pow(blinded, priv.dmp1, priv.p)
    s2 = pow(blinded, priv.dmq1, priv.q)
    h = (priv.iqmp * (s1 - s2)) % priv.p
    return ((s2 + h * priv.q) * pow(r, -1, n) % n).to_bytes(k, "big")


def rsa_verify_raw(public_key: rsa.RSAPublicKey, signature: bytes, data: bytes) -> bool:
    """
    Check a raw type-1 signature made by :func:`rsa_sign_raw`.

    Returns:
        True if it is valid.
    """
    k = _k(public_key)
    numbers = public_key.public_numbers()
    s = int.from_bytes(signature, "big")
    if len(signature) != k or s >= numbers.n or len(data) > k - 11:
        return False
    em = pow(s, numbers.e, numbers.n).to_bytes(k, "big")
    return hmac.compare_digest(em, _type1_block(k, data))


def hmac_sha1(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA1 (20 bytes)."""
    return hmac.new(key, message, hashlib.sha1).digest()


# ------------------------------------------------------------------------------------------------ handshake b


def build_device_block(
    server_public_key: rsa.RSAPublicKey,
    nonce: bytes,
    device_id: bytes,
    device_public_key_der: bytes,
    random_bytes: RandomBytes,
) -> bytes:
    """
    The device's 256-byte handshake block.

    Returns:
        ``RSA-encrypt(server key, nonce ‖ device id ‖ device public key DER)``.
    """
    if len(nonce) != NONCE_SIZE or len(device_id) != DEVICE_ID_SIZE:
        raise LocalProtocolError("nonce must be 40 bytes and device id 12 bytes")
    return rsa_encrypt(server_public_key, nonce + device_id + device_public_key_der, random_bytes)


def open_device_block(
    server_private_key: rsa.RSAPrivateKey, block: bytes, nonce: bytes
) -> tuple[bytes, bytes]:
    """
    Decrypt and check the device's handshake block.

    Returns:
        ``(device id (12 bytes), offered public key DER)``; the DER is empty for pre-0.4 Core firmware.

    Raises:
        RemoteProtocolError: undecryptable, too short, or the nonce does not match.
    """
    plain = rsa_decrypt(server_private_key, block)
    if len(plain) < NONCE_SIZE + DEVICE_ID_SIZE:
        raise RemoteProtocolError("handshake block too short")
    if not hmac.compare_digest(plain[:NONCE_SIZE], nonce):
        raise RemoteProtocolError("handshake nonce mismatch")
    return plain[NONCE_SIZE : NONCE_SIZE + DEVICE_ID_SIZE], plain[NONCE_SIZE + DEVICE_ID_SIZE :]


def build_server_reply(
    server_private_key: rsa.RSAPrivateKey,
    device_public_key: rsa.RSAPublicKey,
    key_material: bytes,
    random_bytes: RandomBytes,
    sign_raw: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """
    The cloud's 384-byte handshake reply ``C ‖ SIG``.

    Args:
        server_private_key: the server's key.
        device_public_key: the device's stored key.
        key_material: ``K``.
        random_bytes: the padding source of ``C``.
        sign_raw: the raw type-1 signer for the server key (`rawsign.RawSigner.sign`); ``None`` =
            :func:`rsa_sign_raw`.

    Returns:
        ``C`` (key material encrypted to the device, 128 bytes) followed by the raw signature of
        ``HMAC-SHA1(K, C)`` (256 bytes).
    """
    if len(key_material) != KEY_MATERIAL_SIZE:
        raise LocalProtocolError("key material must be 40 bytes")
    c = rsa_encrypt(device_public_key, key_material, random_bytes)
    digest = hmac_sha1(key_material, c)
    return c + (sign_raw(digest) if sign_raw is not None else rsa_sign_raw(server_private_key, digest))


def open_server_reply(
    device_private_key: rsa.RSAPrivateKey, server_public_key: rsa.RSAPublicKey, reply: bytes
) -> bytes:
    """
    Device side: decrypt ``C`` and verify ``SIG``.

    Returns:
        The 40-byte key material ``K``.

    Raises:
        RemoteProtocolError: wrong size, undecryptable ``C`` or a bad signature.
    """
    c_len = _k(device_private_key)
    if len(reply) != c_len + _k(server_public_key):
        raise RemoteProtocolError("handshake reply has the wrong size")
    c, sig = reply[:c_len], reply[c_len:]
    key_material = rsa_decrypt(device_private_key, c)
    if len(key_material) != KEY_MATERIAL_SIZE:
        raise RemoteProtocolError("session key material has the wrong size")
    if not rsa_verify_raw(server_public_key, sig, hmac_sha1(key_material, c)):
        raise RemoteProtocolError("handshake signature is invalid")
    return key_material


# ------------------------------------------------------------------------------------------------ AES session


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """
    AES-CBC with PKCS#7 padding (always 1–16 pad bytes).

    Returns:
        The ciphertext (a non-empty multiple of 16 bytes).
    """
    pad = _AES_BLOCK - len(plaintext) % _AES_BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(plaintext + bytes([pad]) * pad) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """
    Inverse of :func:`aes_cbc_encrypt`.

    Returns:
        The plaintext without padding.

    Raises:
        RemoteProtocolError: wrong length or bad padding.
    """
    if not ciphertext or len(ciphertext) % _AES_BLOCK:
        raise RemoteProtocolError(f"ciphertext of {len(ciphertext)} bytes is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= _AES_BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise RemoteProtocolError("bad PKCS#7 padding")
    return padded[:-pad]


@dataclass(frozen=True)
class SessionKeys:
    """The 40 bytes of key material ``K`` split into its parts."""

    aes_key: bytes
    iv: bytes
    salt: bytes

    @classmethod
    def from_material(cls, key_material: bytes) -> SessionKeys:
        """Split ``K = aes_key(16) ‖ iv(16) ‖ salt(8)``."""
        if len(key_material) != KEY_MATERIAL_SIZE:
            raise LocalProtocolError("key material must be 40 bytes")
        return cls(key_material[:16], key_material[16:32], key_material[32:40])

    @property
    def device_message_id_seed(self) -> int:
        """``salt[0] | salt[1] << 8``: the device's first message (its Hello) uses ``seed + 1``."""
        return int.from_bytes(self.salt[:2], "little")


class SessionCipher:
    """
    AES-128-CBC with one IV chain per direction.

    The chaining is done here over one AES-ECB context per direction, made once per session: building a
    CBC context per message cost more than the AES itself for the small messages devices exchange
    (keep-alives are one block). Decryption is one ECB call and one XOR with the shifted ciphertext.
    """

    def __init__(self, keys: SessionKeys) -> None:
        self._aes = algorithms.AES(keys.aes_key)
        aes = Cipher(self._aes, modes.ECB())  # noqa: S305 -- block by block CBC, below
        self._encrypt_block = aes.encryptor().update
        self._decrypt_blocks = aes.decryptor().update
        self._send_iv = keys.iv
        self._receive_iv = keys.iv

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt an outgoing message (PKCS#7 padded) and advance the send chain."""
        pad = _AES_BLOCK - len(plaintext) % _AES_BLOCK
        padded = plaintext + bytes((pad,)) * pad
        if len(padded) >= _CBC_CONTEXT_FROM:
            # Long messages (OTA chunks: 33 blocks) are cheaper through a CBC context of their own (~8 µs)
            # than block by block (~1 µs a block).
            ciphertext = Cipher(self._aes, modes.CBC(self._send_iv)).encryptor().update(padded)
            self._send_iv = ciphertext[:_AES_BLOCK]  # the protocol chains on the first block
            return ciphertext
        previous = int.from_bytes(self._send_iv, "big")
        blocks = []
        for start in range(0, len(padded), _AES_BLOCK):
            mixed = int.from_bytes(padded[start : start + _AES_BLOCK], "big") ^ previous
            block = self._encrypt_block(mixed.to_bytes(_AES_BLOCK, "big"))
            blocks.append(block)
            previous = int.from_bytes(block, "big")
        ciphertext = b"".join(blocks)
        self._send_iv = ciphertext[:_AES_BLOCK]
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        """
        Decrypt an incoming message and advance the receive chain.

        Raises:
            RemoteProtocolError: bad length or padding (e.g. a wrong key or a broken IV chain).
        """
        size = len(ciphertext)
        if not size or size % _AES_BLOCK:
            raise RemoteProtocolError(f"ciphertext of {size} bytes is not whole AES blocks")
        chain = self._receive_iv + ciphertext[:-_AES_BLOCK]
        decrypted = int.from_bytes(self._decrypt_blocks(ciphertext), "big")
        padded = (decrypted ^ int.from_bytes(chain, "big")).to_bytes(size, "big")
        pad = padded[-1]
        if not 1 <= pad <= _AES_BLOCK or padded[-pad:] != bytes((pad,)) * pad:
            raise RemoteProtocolError("bad PKCS#7 padding")
        self._receive_iv = ciphertext[:_AES_BLOCK]
        return padded[:-pad]
