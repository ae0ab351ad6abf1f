"""
DTLS 1.2 handshake messages of the one profile (RFC 5246 §7.4, RFC 6347 §4.2, RFC 4492/8422, RFC 7250,
draft-ietf-tls-dtls-connection-id-05): builders for what either role sends, strict parsers for what arrives.
Parsers raise only ``RemoteProtocolError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from devicecloud.protocol.errors import RemoteProtocolError

__all__ = [
    "CIPHER_SUITE",
    "ECDSA_SHA256",
    "EMPTY_RENEGOTIATION_SCSV",
    "RAW_PUBLIC_KEY",
    "SECP256R1",
    "X509",
    "ClientHello",
    "Extension",
    "HandshakeType",
    "Reader",
    "ServerHello",
    "build_certificate_request",
    "build_client_hello",
    "build_hello_verify_request",
    "build_server_hello",
    "build_server_key_exchange",
    "encode_extensions",
    "handshake_header",
    "parse_certificate",
    "parse_certificate_request",
    "parse_client_hello",
    "parse_hello_verify_request",
    "parse_server_hello",
    "parse_server_key_exchange",
    "parse_signature",
    "server_ecdh_params",
]

CIPHER_SUITE = 0xC0AE  # TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
EMPTY_RENEGOTIATION_SCSV = 0x00FF
ECDSA_SHA256 = 0x0403
SECP256R1 = 23
X509 = 0
RAW_PUBLIC_KEY = 2
_ECDSA_SIGN = 64  # CertificateRequest certificate type
_NAMED_CURVE = 3
_TWO_U16 = struct.Struct("!HH")
_HEADER = struct.Struct("!IHIH")


class HandshakeType:
    """Handshake message types used here (plain ``int`` constants, as ``records.ContentType``)."""

    CLIENT_HELLO: Final = 1
    SERVER_HELLO: Final = 2
    HELLO_VERIFY_REQUEST: Final = 3
    CERTIFICATE: Final = 11
    SERVER_KEY_EXCHANGE: Final = 12
    CERTIFICATE_REQUEST: Final = 13
    SERVER_HELLO_DONE: Final = 14
    CERTIFICATE_VERIFY: Final = 15
    CLIENT_KEY_EXCHANGE: Final = 16
    FINISHED: Final = 20


class Extension:
    """Extension numbers used here (plain ``int`` constants)."""

    SUPPORTED_GROUPS: Final = 10
    EC_POINT_FORMATS: Final = 11
    SIGNATURE_ALGORITHMS: Final = 13
    CLIENT_CERTIFICATE_TYPE: Final = 19
    SERVER_CERTIFICATE_TYPE: Final = 20
    CONNECTION_ID: Final = 254  # draft-05's provisional number, as Mbed TLS 2.22 (Particle's fork) uses it
    RENEGOTIATION_INFO: Final = 0xFF01


class Reader:
    """Reads big-endian fields from peer bytes; running out raises ``RemoteProtocolError``."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if n > len(self._data) - self._pos:
            raise RemoteProtocolError(f"truncated {self._what}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int) -> int:
        """An unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int, *, minimum: int = 0, maximum: int | None = None) -> bytes:
        """A vector with a ``length_size``-byte length."""
        data = self.take(self.uint(length_size))
        if len(data) < minimum or (maximum is not None and len(data) > maximum):
            raise RemoteProtocolError(f"bad vector length in {self._what}")
        return data

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def end(self) -> None:
        """Require that everything was read."""
        if self.remaining:
            raise RemoteProtocolError(f"trailing bytes in {self._what}")


def _vec(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def handshake_header(
    msg_type: int, message_seq: int, body_length: int, offset: int, fragment_length: int
) -> bytes:
    """The 12-byte DTLS handshake header: type(1) length(3) message_seq(2) offset(3) fragment length(3)."""
    return _HEADER.pack(
        (msg_type << 24) | body_length,
        message_seq,
        (offset << 8) | (fragment_length >> 16),
        fragment_length & 0xFFFF,
    )


def _parse_extensions(reader: Reader) -> dict[int, bytes]:
    if not reader.remaining:
        return {}
    return _extensions(reader.vector(2))


def _extensions(block: bytes) -> dict[int, bytes]:
    """The extensions of a block (indexing by hand: ClientHellos are parsed on the gateway's hot path)."""
    extensions: dict[int, bytes] = {}
    at, end = 0, len(block)
    while at < end:
        if end - at < 4:
            raise RemoteProtocolError("truncated extension")
        number, size = _TWO_U16.unpack_from(block, at)
        at += 4
        if size > end - at:
            raise RemoteProtocolError("truncated extension")
        if number in extensions:
            raise RemoteProtocolError(f"extension {number} twice")
        extensions[number] = block[at : at + size]
        at += size
    return extensions


def encode_extensions(extensions: list[tuple[int, bytes]]) -> bytes:
    """The extensions block (empty bytes when there are none)."""
    if not extensions:
        return b""
    return _vec(b"".join([_TWO_U16.pack(n, len(data)) + data for n, data in extensions]), 2)


@dataclass(slots=True)  # not frozen: the cookie gate makes one per ClientHello, and frozen costs ~4× more
class ClientHello:
    """A parsed ClientHello; ``cookie_input`` is its body without the cookie (what the cookie covers)."""

    version: bytes
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: dict[int, bytes]
    cookie_input: bytes

    def certificate_types(self, number: int) -> tuple[int, ...]:
        """The certificate types offered in client/server_certificate_type (empty: not offered)."""
        data = self.extensions.get(number)
        if data is None:
            return ()
        if not 2 <= len(data) == 1 + data[0]:
            raise RemoteProtocolError("bad certificate type extension")
        return tuple(data[1:])

    @property
    def offers_cid(self) -> bool:
        """Whether the client offered a Connection ID (draft-05, extension 254)."""
        return Extension.CONNECTION_ID in self.extensions

    def groups(self) -> tuple[int, ...]:
        """supported_groups (absent = P-256 assumed, RFC 8422 §4)."""
        data = self.extensions.get(Extension.SUPPORTED_GROUPS)
        if data is None:
            return (SECP256R1,)
        size = len(data) - 2
        if size < 2 or size % 2 or int.from_bytes(data[:2], "big") != size:
            raise RemoteProtocolError("bad supported_groups")
        return struct.unpack_from(f"!{size // 2}H", data, 2)


def parse_client_hello(body: bytes) -> ClientHello:
    """Parse a ClientHello body (by hand, not with a Reader: the cookie gate parses every one)."""
    end = len(body)
    if end < 35 or body[0] != 0xFE:
        raise RemoteProtocolError("truncated or not a DTLS ClientHello")
    at = 35 + body[34]
    if body[34] > 32 or at + 1 > end:
        raise RemoteProtocolError("bad session id in ClientHello")
    cookie_at = at
    after_cookie = at + 1 + body[at]
    if after_cookie + 2 > end:
        raise RemoteProtocolError("truncated ClientHello")
    suites_size = int.from_bytes(body[after_cookie : after_cookie + 2], "big")
    at = after_cookie + 2 + suites_size
    if suites_size < 2 or suites_size % 2 or at + 1 > end:
        raise RemoteProtocolError("bad cipher suite list in ClientHello")
    compression = body[at + 1 : at + 1 + body[at]]
    at += 1 + body[at]
    if not compression or at > end:
        raise RemoteProtocolError("bad compression methods in ClientHello")
    extensions: dict[int, bytes] = {}
    if at < end:
        if end - at < 2 or int.from_bytes(body[at : at + 2], "big") != end - at - 2:
            raise RemoteProtocolError("bad extensions block in ClientHello")
        extensions = _extensions(body[at + 2 :])
    return ClientHello(
        body[:2], body[2:34], body[35:cookie_at], body[cookie_at + 1 : after_cookie],
        struct.unpack_from(f"!{suites_size // 2}H", body, after_cookie + 2), compression, extensions,
        body[:cookie_at] + body[after_cookie:],
    )  # fmt: skip


def build_client_hello(
    random: bytes, cookie: bytes, extensions: list[tuple[int, bytes]], *, session_id: bytes = b""
) -> bytes:
    """A ClientHello body offering the one suite (and the renegotiation SCSV, as Mbed TLS does)."""
    suites = struct.pack("!HH", CIPHER_SUITE, EMPTY_RENEGOTIATION_SCSV)
    return (
        b"\xfe\xfd" + random + _vec(session_id, 1) + _vec(cookie, 1) + _vec(suites, 2) + b"\x01\x00"
        + encode_extensions(extensions)
    )  # fmt: skip


def build_hello_verify_request(cookie: bytes) -> bytes:
    """HelloVerifyRequest body; its version is DTLS 1.0 whatever is negotiated (RFC 6347 §4.2.1)."""
    return b"\xfe\xff" + _vec(cookie, 1)


def parse_hello_verify_request(body: bytes) -> bytes:
    """The cookie of a HelloVerifyRequest body."""
    reader = Reader(body, "HelloVerifyRequest")
    if reader.take(2)[0] != 0xFE:
        raise RemoteProtocolError("not a DTLS HelloVerifyRequest")
    cookie = reader.vector(1, minimum=1)
    reader.end()
    return cookie


@dataclass(frozen=True, slots=True)
class ServerHello:
    """A parsed ServerHello."""

    version: bytes
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: dict[int, bytes]


def build_server_hello(random: bytes, session_id: bytes, extensions: list[tuple[int, bytes]]) -> bytes:
    """A ServerHello body choosing the one suite and no compression."""
    return (
        b"\xfe\xfd" + random + _vec(session_id, 1) + struct.pack("!HB", CIPHER_SUITE, 0)
        + encode_extensions(extensions)
    )  # fmt: skip


def parse_server_hello(body: bytes) -> ServerHello:
    """Parse a ServerHello body (the client side)."""
    reader = Reader(body, "ServerHello")
    version = reader.take(2)
    random = reader.take(32)
    session_id = reader.vector(1, maximum=32)
    suite = reader.uint(2)
    compression = reader.uint(1)
    extensions = _parse_extensions(reader)
    reader.end()
    if version != b"\xfe\xfd" or suite != CIPHER_SUITE or compression != 0:
        raise RemoteProtocolError("ServerHello chose something not offered")
    return ServerHello(version, random, session_id, suite, extensions)


def server_ecdh_params(point: bytes) -> bytes:
    """ServerECDHParams: named_curve ‖ secp256r1 ‖ point."""
    return struct.pack("!BH", _NAMED_CURVE, SECP256R1) + _vec(point, 1)


def build_server_key_exchange(point: bytes, signature: bytes, *, params: bytes | None = None) -> bytes:
    """
    ServerKeyExchange: the params, ECDSA-SHA256, the DER signature. ``params``: the point's
    :func:`server_ecdh_params` when the caller has them already (it signed them).
    """
    if params is None:
        params = server_ecdh_params(point)
    return params + _TWO_U16.pack(ECDSA_SHA256, len(signature)) + signature


def parse_server_key_exchange(body: bytes) -> tuple[bytes, bytes, bytes]:
    """(params bytes, point, signature) of a ServerKeyExchange."""
    reader = Reader(body, "ServerKeyExchange")
    if reader.uint(1) != _NAMED_CURVE or reader.uint(2) != SECP256R1:
        raise RemoteProtocolError("ServerKeyExchange is not on P-256")
    point = reader.vector(1, minimum=1)
    params = body[: 4 + len(point)]
    signature = parse_signature(Reader(body[len(params) :], "ServerKeyExchange signature"))
    return params, point, signature


def parse_signature(reader: Reader) -> bytes:
    """A DigitallySigned: ECDSA-SHA256 only; the DER signature."""
    if reader.uint(2) != ECDSA_SHA256:
        raise RemoteProtocolError("signature is not ECDSA-SHA256")
    signature = reader.vector(2, minimum=1)
    reader.end()
    return signature


def build_certificate_request() -> bytes:
    """CertificateRequest: ecdsa_sign, ECDSA-SHA256, no CA names."""
    return _CERTIFICATE_REQUEST


_CERTIFICATE_REQUEST = bytes([1, _ECDSA_SIGN]) + _vec(struct.pack("!H", ECDSA_SHA256), 2) + b"\x00\x00"


def parse_certificate_request(body: bytes) -> None:
    """Sanity-parse a CertificateRequest (the client ignores its contents, as Mbed TLS does)."""
    reader = Reader(body, "CertificateRequest")
    reader.vector(1, minimum=1)
    reader.vector(2, minimum=2)
    reader.vector(2)
    reader.end()


def parse_certificate(body: bytes, *, raw_public_key: bool) -> list[bytes]:
    """
    The entries of a Certificate message: ``[SubjectPublicKeyInfo]`` for a raw public key (RFC 7250),
    else the X.509 chain's DER certificates (possibly empty).
    """
    reader = Reader(body, "Certificate")
    if raw_public_key:
        spki = reader.vector(3, minimum=1)
        reader.end()
        return [spki]
    chain = Reader(reader.vector(3), "certificate list")
    reader.end()
    out = []
    while chain.remaining:
        out.append(chain.vector(3, minimum=1))
    return out
