"""
Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): a server keeps nothing for a ClientHello until it
comes back with a cookie that proves the sender receives at its address. A spoofed flood costs one HMAC
and one small datagram each, no state.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from devicecloud.protocol.dtls.messages import (
    ClientHello,
    HandshakeType,
    build_hello_verify_request,
    handshake_header,
    parse_client_hello,
)
from devicecloud.protocol.dtls.primitives import hmac_sha256_pads
from devicecloud.protocol.dtls.records import DTLS_1_0, DTLS_1_2, ContentType, encode_record
from devicecloud.protocol.errors import RemoteProtocolError

__all__ = ["COOKIE_SIZE", "HelloCheck", "check_client_hello", "make_cookie"]

COOKIE_SIZE = 32
_RECORD_HEADER = struct.Struct("!B2sHHIH")  # type, version, epoch, sequence (16 + 32 bits), length
_MAX_RECORD = (1 << 14) + 2048  # the longest record parse_datagram takes (RFC 6347 §4.1)


def make_cookie(secret: bytes, address: bytes, cookie_input: bytes) -> bytes:
    """HMAC-SHA256 over the peer's address and every ClientHello field but the cookie."""
    keyed = _KEYED.get(secret)
    if keyed is None:  # a process has one or two secrets (rotation): key each once
        if len(_KEYED) >= 8:
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac_sha256_pads(secret)
    inner = keyed[0].copy()
    inner.update(len(address).to_bytes(2, "big") + address + cookie_input)
    outer = keyed[1].copy()
    outer.update(inner.digest())
    return outer.digest()


_KEYED: dict[bytes, tuple[hashlib._Hash, hashlib._Hash]] = {}


@dataclass(slots=True)  # not frozen: made for every datagram from an unknown address
class HelloCheck:
    """
    What to do with a datagram from an address that has no session:

    - ``accept``: a ClientHello with a valid cookie: ``DtlsServer.accept(config, check, …)`` starts the
      server endpoint from it (``hello``, ``record_sequence`` and ``message`` carry what it needs, so the
      datagram is not parsed twice);
    - ``reply``: a HelloVerifyRequest datagram to send back (and keep nothing);
    - neither: drop it (``reason`` says why).
    """

    accept: bool
    reply: bytes | None
    reason: str
    hello: ClientHello | None = None
    record_sequence: int = 0
    message: bytes = b""  # the ClientHello handshake message, header included (as the transcript hashes it)


def check_client_hello(datagram: bytes, address: bytes, secrets: tuple[bytes, ...]) -> HelloCheck:
    """
    Judge a datagram from an unknown address without keeping state. ``secrets[0]`` makes cookies; every
    secret in ``secrets`` verifies them (so a rotated secret still accepts a ClientHello in flight).
    """
    # One plain record, its header read in place: every datagram from an unknown address comes here, and
    # parse_datagram's generality (CID and resumption records, several records) cost a fifth of this gate.
    if len(datagram) < _RECORD_HEADER.size + 12:
        return HelloCheck(False, None, "not a ClientHello")
    content_type, version, epoch, sequence_high, sequence_low, length = _RECORD_HEADER.unpack_from(datagram)
    if content_type != ContentType.HANDSHAKE or epoch != 0 or version not in (DTLS_1_2, DTLS_1_0):
        return HelloCheck(False, None, "not a ClientHello")
    if length != len(datagram) - _RECORD_HEADER.size or length > _MAX_RECORD:
        return HelloCheck(False, None, "not a single ClientHello record")
    record_sequence = (sequence_high << 32) | sequence_low
    fragment = datagram[_RECORD_HEADER.size :]
    try:
        if fragment[0] != HandshakeType.CLIENT_HELLO:
            return HelloCheck(False, None, "not a ClientHello")
        length = int.from_bytes(fragment[1:4], "big")
        frag_offset = int.from_bytes(fragment[6:9], "big")
        frag_length = int.from_bytes(fragment[9:12], "big")
        if frag_offset != 0 or frag_length != length or len(fragment) != 12 + length:
            return HelloCheck(False, None, "fragmented or malformed ClientHello")
        body = fragment[12:]
        # Only a ClientHello with a cookie is parsed whole: for one without, finding the cookie's place is
        # enough to answer (a malformed one is refused when it comes back with its cookie).
        cookie_at = 35 + body[34] if len(body) > 35 and body[0] == 0xFE and body[34] <= 32 else -1
        if cookie_at < 0 or cookie_at >= len(body):
            return HelloCheck(False, None, "truncated or not a DTLS ClientHello")
        if body[cookie_at]:
            hello = parse_client_hello(body)
            for secret in secrets:
                if hmac.compare_digest(hello.cookie, make_cookie(secret, address, hello.cookie_input)):
                    return HelloCheck(True, None, "valid cookie", hello, record_sequence, fragment)
            cookie_input = hello.cookie_input
        else:
            cookie_input = body[:cookie_at] + body[cookie_at + 1 :]
    except RemoteProtocolError as exc:
        return HelloCheck(False, None, str(exc))
    cookie = make_cookie(secrets[0], address, cookie_input)
    message_seq = int.from_bytes(fragment[4:6], "big")
    verify = build_hello_verify_request(cookie)
    message = (
        handshake_header(HandshakeType.HELLO_VERIFY_REQUEST, message_seq, len(verify), 0, len(verify))
        + verify
    )
    reply = encode_record(ContentType.HANDSHAKE, 0, record_sequence, message)
    return HelloCheck(False, reply, "cookie requested")
