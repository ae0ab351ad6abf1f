"""What a DTLS endpoint reports: frozen event dataclasses, drained with ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass

from devicecloud.protocol.dtls.session import SessionState

__all__ = [
    "AlertReceived",
    "ApplicationData",
    "ConnectionClosed",
    "DtlsEvent",
    "HandshakeComplete",
    "RecordDropped",
]


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """The handshake finished; ``session`` is what to store to resume later without a handshake."""

    session: SessionState


@dataclass(frozen=True, slots=True)
class ApplicationData:
    """
    One decrypted application record. ``moved`` = it came as a resumption record (type 253 or 254):
    the device may have a new address, which the record's authentication now vouches for.
    """

    data: bytes
    moved: bool = False


@dataclass(frozen=True, slots=True)
class RecordDropped:
    """A record (or a whole datagram) was discarded, as RFC 6347 §4.1.2.7 wants; ``reason`` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class AlertReceived:
    """The peer sent an alert (level 1 warning, 2 fatal; description per RFC 5246 §7.2)."""

    level: int
    description: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The endpoint is closed for good (``error``: by a failure rather than an orderly close)."""

    reason: str
    error: bool = False


DtlsEvent = HandshakeComplete | ApplicationData | RecordDropped | AlertReceived | ConnectionClosed
