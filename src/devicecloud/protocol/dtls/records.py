"""
DTLS 1.2 records (RFC 6347 §4.1) with Particle's two resumption variants, parsed strictly.

Wire forms::

    plain / encrypted:  type(1) ‖ FE FD ‖ epoch(2) ‖ sequence(6) ‖ length(2) ‖ fragment
    CID (draft-05):     25 ‖ FE FD ‖ epoch(2) ‖ sequence(6) ‖ cid(8) ‖ length(2) ‖ fragment
    CID, moving (4.0+): the same with the first byte of the datagram swapped to 253 after encryption
    legacy move (≤3.0): a type-23 record whose type byte reads 254, then device id(12) ‖ 0x0C after it

A CID record's plaintext is ``content ‖ real type ‖ zero padding``; its AAD is draft-05's (22 bytes), not
RFC 9146's. Every parser here raises only ``RemoteProtocolError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from devicecloud.protocol.errors import RemoteProtocolError

__all__ = [
    "CID_SIZE",
    "DEVICE_ID_SIZE",
    "DTLS_1_0",
    "DTLS_1_2",
    "MAX_DATAGRAM",
    "MAX_SEQUENCE",
    "ContentType",
    "Record",
    "ReplayWindow",
    "cid_aad",
    "cid_inner_plaintext",
    "encode_record",
    "parse_cid_inner_plaintext",
    "parse_datagram",
    "peek_cid",
    "peek_device_id",
    "plain_aad",
]

DTLS_1_2 = b"\xfe\xfd"
DTLS_1_0 = b"\xfe\xff"  # some clients put it on their first ClientHello's record
CID_SIZE = 8  # the server's CID; the devices require exactly 8 bytes
DEVICE_ID_SIZE = 12
MAX_SEQUENCE = (1 << 48) - 1
# A UDP payload can hold 65507 bytes; a record is at most 2^14 plaintext + 2048 (RFC 6347 §4.1).
MAX_DATAGRAM = 65507
_MAX_FRAGMENT = (1 << 14) + 2048
_PREFIX = struct.Struct("!B2sHHI")  # type, version, epoch, sequence (48 bits: 16 + 32)
_HEAD = struct.Struct("!B2sHHIH")  # the same and the fragment's length: a whole header without CID
_HEADER_SIZE = 13
_CID_PADDING = 16  # Mbed TLS's MBEDTLS_SSL_CID_PADDING_GRANULARITY


class ContentType:
    """
    Record content types, including the ones only Particle devices send. Plain ``int`` constants, not an
    ``IntEnum``: the record path compares and hashes them for every record, and enum members cost ~10× more.
    """

    CHANGE_CIPHER_SPEC: Final = 20
    ALERT: Final = 21
    HANDSHAKE: Final = 22
    APPLICATION_DATA: Final = 23
    CID: Final = 25  # draft-ietf-tls-dtls-connection-id-05 (Mbed TLS 2.22's MBEDTLS_SSL_MSG_CID)
    CID_MOVED: Final = 253  # Device OS 4.0+: a CID record sent while resuming
    LEGACY_MOVED: Final = 254  # Device OS ≤ 3.0: application data + device id trailer while resuming


# Bytes and structs the per-record path would otherwise build for every record.
_LEGACY_MOVED_BYTE = bytes([ContentType.LEGACY_MOVED])
_CID_MOVED_BYTE = bytes([ContentType.CID_MOVED])
_CID_BYTE = bytes([ContentType.CID])
_APPLICATION_DATA_BYTE = bytes([ContentType.APPLICATION_DATA])
_CID_TYPE_VERSION = _CID_BYTE + DTLS_1_2
_PLAIN_AAD_TAIL = struct.Struct("!B2sH")
_CID_AAD_TAIL = struct.Struct("!BH")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class Record:
    """
    One parsed record. ``content_type`` is the header's (25 for 253, 23 for 254); ``moved`` says the
    datagram carried a resumption marker (253 or 254); ``device_id`` is the 254 trailer's.
    """

    content_type: int
    version: bytes
    epoch: int
    sequence: int
    cid: bytes | None
    fragment: bytes
    moved: bool = False
    device_id: bytes | None = None

    @property
    def explicit_nonce(self) -> bytes:
        """epoch ‖ sequence, the 8 bytes every AAD and nonce starts with."""
        return ((self.epoch << 48) | self.sequence).to_bytes(8, "big")


def encode_record(
    content_type: int, epoch: int, sequence: int, fragment: bytes, *, cid: bytes | None = None
) -> bytes:
    """A record's bytes (``cid`` only for type 25)."""
    if cid is None:
        return (
            _HEAD.pack(content_type, DTLS_1_2, epoch, sequence >> 32, sequence & 0xFFFFFFFF, len(fragment))
            + fragment
        )
    head = _PREFIX.pack(content_type, DTLS_1_2, epoch, sequence >> 32, sequence & 0xFFFFFFFF)
    return head + cid + len(fragment).to_bytes(2, "big") + fragment


def peek_cid(datagram: bytes, cid_size: int = CID_SIZE) -> bytes | None:
    """The CID of a datagram whose first record is a CID record (25 or 253), else ``None``."""
    if len(datagram) < 11 + cid_size + 2 or datagram[0] not in (ContentType.CID, ContentType.CID_MOVED):
        return None
    return datagram[11 : 11 + cid_size]


def peek_device_id(datagram: bytes) -> bytes | None:
    """The device id of a legacy type-254 datagram, else ``None``."""
    if len(datagram) < _HEADER_SIZE + DEVICE_ID_SIZE + 1 or datagram[0] != ContentType.LEGACY_MOVED:
        return None
    if datagram[-1] != DEVICE_ID_SIZE:
        return None
    return datagram[-1 - DEVICE_ID_SIZE : -1]


def parse_datagram(datagram: bytes, cid_size: int = CID_SIZE) -> list[Record]:
    """
    Every record of a datagram.

    Raises:
        RemoteProtocolError: truncated or oversized records, an unknown version, a malformed 254 trailer.
    """
    if len(datagram) > MAX_DATAGRAM:
        raise RemoteProtocolError("datagram too large")
    device_id: bytes | None = None
    moved = False
    first = datagram[:1]
    if first == _LEGACY_MOVED_BYTE:
        device_id = peek_device_id(datagram)
        if device_id is None:
            raise RemoteProtocolError("type-254 datagram without a device id trailer")
        datagram = _APPLICATION_DATA_BYTE + datagram[1 : -1 - DEVICE_ID_SIZE]
        moved = True
    elif first == _CID_MOVED_BYTE:
        datagram = _CID_BYTE + datagram[1:]
        moved = True
    records: list[Record] = []
    offset = 0
    end = len(datagram)
    while offset < end:
        if end - offset < _HEADER_SIZE:
            raise RemoteProtocolError("truncated record header")
        content_type, version, epoch, sequence_high, sequence_low = _PREFIX.unpack_from(datagram, offset)
        sequence = (sequence_high << 32) | sequence_low
        offset += 11
        cid: bytes | None = None
        if content_type == ContentType.CID:
            if end - offset < cid_size + 2:
                raise RemoteProtocolError("truncated CID record header")
            cid = datagram[offset : offset + cid_size]
            offset += cid_size
        elif content_type not in (20, 21, 22, 23):
            raise RemoteProtocolError(f"unknown record type {content_type}")
        if version not in (DTLS_1_2, DTLS_1_0):
            raise RemoteProtocolError("not a DTLS 1.2 record")
        length = (datagram[offset] << 8) | datagram[offset + 1]
        offset += 2
        if length > _MAX_FRAGMENT:
            raise RemoteProtocolError("record too long")
        if end - offset < length:
            raise RemoteProtocolError("truncated record")
        fragment = datagram[offset : offset + length]
        offset += length
        records.append(Record(content_type, version, epoch, sequence, cid, fragment, moved, device_id))
    if device_id is not None and len(records) != 1:
        raise RemoteProtocolError("type-254 datagram with more than one record")
    return records


def plain_aad(explicit_nonce: bytes, content_type: int, length: int) -> bytes:
    """TLS 1.2's 13-byte AAD: epoch‖seq ‖ type ‖ version ‖ plaintext length."""
    return explicit_nonce + _PLAIN_AAD_TAIL.pack(content_type, DTLS_1_2, length)


def cid_aad(explicit_nonce: bytes, cid: bytes, length: int) -> bytes:
    """draft-05's AAD: epoch‖seq ‖ 25 ‖ version ‖ cid ‖ cid length ‖ inner plaintext length."""
    return explicit_nonce + _CID_TYPE_VERSION + cid + _CID_AAD_TAIL.pack(len(cid), length)


def cid_inner_plaintext(content: bytes, real_type: int) -> bytes:
    """``content ‖ real type ‖ zeros`` padded to a multiple of 16, as Mbed TLS sends it."""
    inner = content + bytes([real_type])
    return inner + bytes(-len(inner) % _CID_PADDING)


def parse_cid_inner_plaintext(inner: bytes) -> tuple[int, bytes]:
    """
    (real type, content) of a decrypted CID record.

    Raises:
        RemoteProtocolError: all zeros, or a real type that cannot be inside a CID record.
    """
    content = inner.rstrip(b"\x00")
    if not content:
        raise RemoteProtocolError("CID record without a content type")
    real_type = content[-1]
    if real_type not in (20, 21, 22, 23):
        raise RemoteProtocolError(f"CID record holds unknown type {real_type}")
    return real_type, content[:-1]


class ReplayWindow:
    """
    RFC 6347 §4.1.2.6's sliding window of the last 64 sequence numbers of one epoch. ``check`` before
    decrypting, ``accept`` only after the record authenticated (a forged record must not move it).
    """

    __slots__ = ("bitmap", "top")

    SIZE = 64

    def __init__(self, top: int = -1, bitmap: int = 0) -> None:
        self.top = top  # highest sequence number accepted, -1 = none yet
        self.bitmap = bitmap  # bit i set = top - i accepted

    def check(self, sequence: int) -> bool:
        """Whether ``sequence`` is new and inside the window."""
        if sequence > self.top:
            return True
        offset = self.top - sequence
        return offset < self.SIZE and not (self.bitmap >> offset) & 1

    def accept(self, sequence: int) -> None:
        """Record ``sequence`` as received."""
        mask = (1 << self.SIZE) - 1
        if sequence > self.top:
            shift = sequence - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & mask if shift < self.SIZE else 1
            self.top = sequence
        else:
            self.bitmap |= 1 << (self.top - sequence)
