"""
Commands the application gives to ``Connection.send(command, now)``.

Theory of operation:
    Commands are frozen dataclasses. ``send()`` returns a ``request_id`` for commands that expect an answer
    (the matching result event carries it) and ``None`` for the others. Commands that answer a peer request
    quote
    the ``request_id`` of the event that asked. A command not valid for the connection's role or state raises
    ``LocalProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from devicecloud.protocol.codes import Code, DescribeFlags, SubscriptionScope, VariableType
from devicecloud.protocol.variables import VariableData

__all__ = [
    "AcceptDevice",
    "AcceptUpdate",
    "AcceptUpdateStart",
    "AcknowledgeEvent",
    "BeginUpdate",
    "CallFunction",
    "Close",
    "Command",
    "FinishUpdate",
    "FinishUpdateV3",
    "Ping",
    "PublishEvent",
    "ReadVariable",
    "RejectDevice",
    "RejectRequest",
    "ReportMissedChunks",
    "ReportUpdateDone",
    "RequestDescribe",
    "RequestTime",
    "RespondChunk",
    "RespondDescribe",
    "RespondFunction",
    "RespondOtaError",
    "RespondUpdateDone",
    "RespondUpdateFinish",
    "RespondVariable",
    "SendChunk",
    "SendDescribe",
    "SendEvent",
    "SendTime",
    "SendUpdateAck",
    "SendUpdateChunk",
    "Signal",
    "StartUpdateV3",
    "Subscribe",
]


@dataclass(frozen=True)
class Command:
    """Base class of all commands."""


# ---------------------------------------------------------------- both roles


@dataclass(frozen=True)
class Ping(Command):
    """Send a CoAP ping (CON 0.00); completes with ``RequestCompleted``."""


@dataclass(frozen=True)
class Close(Command):
    """Close the connection locally; yields ``ConnectionClosed`` (pending requests fail)."""

    reason: str = "closed locally"


# ---------------------------------------------------------------- cloud role


@dataclass(frozen=True)
class AcceptDevice(Command):
    """
    Answer ``DeviceIdentified``: finish the handshake with the device's stored public key (RSA-1024 over
    TCP; EC P-256 over UDP, where it must be the key the device proved in the DTLS handshake).
    """

    public_key: RSAPublicKey | EllipticCurvePublicKey


@dataclass(frozen=True)
class RejectDevice(Command):
    """Answer ``DeviceIdentified``: unknown device; close the connection."""

    reason: str = "unknown device"


@dataclass(frozen=True)
class CallFunction(Command):
    """Call a device function; completes with ``FunctionReturned``."""

    name: str
    argument: str | bytes = b""


@dataclass(frozen=True)
class ReadVariable(Command):
    """Read a variable; completes with ``VariableValue`` (decoded if ``var_type`` is given)."""

    name: str
    var_type: VariableType | None = None


@dataclass(frozen=True)
class RequestDescribe(Command):
    """Ask the device to describe itself; completes with ``DescribeReceived``. ``None`` sends no flags."""

    flags: DescribeFlags | int | None = None


@dataclass(frozen=True)
class Signal(Command):
    """Start or stop the rainbow LED; completes with ``RequestCompleted``."""

    on: bool


@dataclass(frozen=True)
class SendEvent(Command):
    """
    Deliver an event to the device (always NON; the device does not ACK events over TCP).

    ``split_path`` sends each ``/``-separated part of the name as its own Uri-Path option; ``max_age`` adds
    the
    Max-Age option (minimal encoding).
    """

    name: str
    data: str | bytes | None = None
    private: bool = False
    max_age: int | None = None
    split_path: bool = False


@dataclass(frozen=True)
class AcknowledgeEvent(Command):
    """
    Answer a CON ``EventPublished``: an empty ACK when ``accepted``, else ACK 4.00 ("EventSlowdown").

    Device OS reports any 4.xx answer to a WITH_ACK publish as a failed publish (SYSTEM_ERROR_COAP_4XX);
    4.00 is what the Particle cloud sends (spark-protocol's EventSlowdown).
    """

    request_id: int
    accepted: bool = True


@dataclass(frozen=True)
class SendTime(Command):
    """Answer ``TimeRequested``."""

    request_id: int
    unix_time: int


@dataclass(frozen=True)
class BeginUpdate(Command):
    """Start an OTA transfer (UpdateBegin); completes with ``UpdateReady``."""

    file_length: int
    chunk_size: int = 512
    fast: bool = False
    store: int = 0
    address: int = 0


@dataclass(frozen=True)
class SendChunk(Command):
    """
    Send one OTA chunk. ``crc32`` overrides the computed CRC (tests). Fast chunks carry their index and get no
    reply (``send`` returns ``None``); non-fast chunks complete with ``ChunkReceived``.
    """

    index: int
    data: bytes
    fast: bool = False
    crc32: int | None = None


@dataclass(frozen=True)
class FinishUpdate(Command):
    """UpdateDone: completes with ``UpdateFinished``, or ``RequestFailed`` 4.00 when chunks are missing."""


@dataclass(frozen=True)
class StartUpdateV3(Command):
    """
    OTA v3 UpdateStart; completes with ``UpdateStarted`` (window, resume offset) or ``UpdateRefused``.
    ``sha256`` (of the whole file) makes the update resumable.
    """

    file_size: int
    chunk_size: int
    sha256: bytes | None = None
    discard: bool = False
    module_function: int | None = None


@dataclass(frozen=True)
class SendUpdateChunk(Command):
    """OTA v3: one chunk, NON, 1-based ``index``; no reply (the device's UpdateAcks say what it holds)."""

    index: int
    data: bytes


@dataclass(frozen=True)
class FinishUpdateV3(Command):
    """OTA v3 UpdateFinish (``cancel``: abort); completes with ``UpdateFinishAnswered``/``UpdateRefused``."""

    discard: bool = False
    cancel: bool = False


# ---------------------------------------------------------------- device role


@dataclass(frozen=True)
class PublishEvent(Command):
    """
    Publish an event (NON, or CON when ``with_ack``; only CON events return a request id).

    A ``bytes`` name goes on the wire as given (tests of a cloud facing firmware that sends names that are
    not UTF-8).
    """

    name: str | bytes
    data: str | bytes | None = None
    private: bool = True
    ttl: int = 60
    with_ack: bool = False


@dataclass(frozen=True)
class Subscribe(Command):
    """Subscribe to events by name prefix; completes with ``RequestCompleted``."""

    prefix: str
    scope: SubscriptionScope = SubscriptionScope.ALL_DEVICES
    device_id: str | None = None


@dataclass(frozen=True)
class RequestTime(Command):
    """Ask the cloud for the time; completes with ``TimeReceived``."""


@dataclass(frozen=True)
class SendDescribe(Command):
    """
    2.x device-initiated Describe (CON POST /d); completes with ``RequestCompleted``. ``content_format`` 42
    marks a Device OS ≥ 5.5 protobuf system Describe.
    """

    payload: bytes
    flags: DescribeFlags | int = DescribeFlags.SYSTEM | DescribeFlags.APPLICATION
    content_format: int | None = None


@dataclass(frozen=True)
class RespondFunction(Command):
    """Answer ``FunctionCallRequested``."""

    request_id: int
    return_value: int


@dataclass(frozen=True)
class RespondVariable(Command):
    """Answer ``VariableRequested``."""

    request_id: int
    var_type: VariableType
    value: VariableData


@dataclass(frozen=True)
class RespondDescribe(Command):
    """
    Answer ``DescribeRequested`` with a Describe payload (JSON, see ``build_describe``; with
    ``content_format`` 42 a protobuf system Describe, see ``encode_system_describe``).
    """

    request_id: int
    payload: bytes
    content_format: int | None = None


@dataclass(frozen=True)
class AcceptUpdate(Command):
    """Answer ``UpdateBeginRequested``: empty ACK, then UpdateReady (2.04, 1 byte: fast OTA agreed)."""

    request_id: int
    fast: bool


@dataclass(frozen=True)
class RespondChunk(Command):
    """Answer a plain-OTA ``ChunkArrived``: ChunkReceived 2.04, or 4.00 when its CRC is wrong."""

    request_id: int
    ok: bool


@dataclass(frozen=True)
class RespondUpdateDone(Command):
    """Answer ``UpdateDoneRequested`` when the image is complete: ACK 2.04 with the result JSON."""

    request_id: int
    payload: bytes


@dataclass(frozen=True)
class ReportMissedChunks(Command):
    """ChunkMissed: GET /c listing chunk indices (CON, or NON as Device OS 2.x sends it over TCP)."""

    indices: tuple[int, ...]
    confirmable: bool = True


@dataclass(frozen=True)
class ReportUpdateDone(Command):
    """Device OS 0.7 finishing a fast update by itself: NON PUT /u with the result JSON."""

    payload: bytes


@dataclass(frozen=True)
class AcceptUpdateStart(Command):
    """Device, OTA v3: accept UpdateStart: the window (chunks) and the bytes already held (resume)."""

    request_id: int
    window: int
    offset: int = 0


@dataclass(frozen=True)
class SendUpdateAck(Command):
    """Device, OTA v3: UpdateAck: chunks held contiguously from 1, and those held beyond them."""

    cumulative: int
    received: frozenset[int] = frozenset()


@dataclass(frozen=True)
class RespondUpdateFinish(Command):
    """
    Device, OTA v3: answer UpdateFinish with a CON 2.04 (``send`` returns a request id that completes,
    ``RequestCompleted``, when the cloud ACKs it: only then does a device apply the update).
    """

    request_id: int
    payload: bytes = b""


@dataclass(frozen=True)
class RespondOtaError(Command):
    """Device, OTA v3: refuse a request with a Device OS system error (CoAP code and JSON body as it does)."""

    request_id: int
    system_error: int
    message: str


@dataclass(frozen=True)
class RejectRequest(Command):
    """Answer a pending peer request with an error code (e.g. 4.04 for an unknown variable)."""

    request_id: int
    code: int = Code.NOT_FOUND
