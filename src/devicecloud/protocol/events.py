"""
Events a :class:`~devicecloud.protocol.connection.Connection` yields from ``next_event()``.

Theory of operation:
    Events are frozen dataclasses (h11 style). Requests we sent are identified by the ``request_id`` that
    ``Connection.send()`` returned; requests the peer sent to us that need an answer from the application
    carry a
    ``request_id`` too, which the answering command quotes. Everything the protocol can answer by itself
    (ACKs,
    the server Hello, ping ACKs) is answered by the connection; the event only informs.

    Which role sees what:

    - cloud: DeviceIdentified, HandshakeCompleted, HelloReceived, EventPublished, SubscribeRequested,
      TimeRequested, DescribeReceived, FunctionReturned, VariableValue, UpdateReady, ChunkReceived,
      ChunksMissed,
      UpdateFinished, GoodbyeReceived;
    - device: HandshakeCompleted, ServerHelloReceived, FunctionCallRequested, VariableRequested,
      DescribeRequested, SignalRequested, EventReceived, TimeReceived;
    - both: PingReceived, RequestCompleted, RequestFailed, RequestTimedOut, ConnectionClosed.
"""

from __future__ import annotations

from dataclasses import dataclass

from devicecloud.protocol.codes import DescribeFlags, SubscriptionScope, VariableType
from devicecloud.protocol.describe import Description
from devicecloud.protocol.diagnostics import DiagnosticsReport
from devicecloud.protocol.variables import VariableData

__all__ = [
    "NEED_DATA",
    "ChunkArrived",
    "ChunkReceived",
    "ChunksMissed",
    "ConnectionClosed",
    "DescribeReceived",
    "DescribeRequested",
    "DeviceIdentified",
    "DiagnosticsReceived",
    "Event",
    "EventPublished",
    "EventReceived",
    "FunctionCallRequested",
    "FunctionReturned",
    "GoodbyeReceived",
    "HandshakeCompleted",
    "HelloReceived",
    "PingReceived",
    "RequestCompleted",
    "RequestFailed",
    "RequestTimedOut",
    "ServerHelloReceived",
    "SignalRequested",
    "SubscribeRequested",
    "TimeReceived",
    "TimeRequested",
    "UpdateAcked",
    "UpdateBeginRequested",
    "UpdateChunkArrived",
    "UpdateDoneRequested",
    "UpdateFinishAnswered",
    "UpdateFinishRequested",
    "UpdateFinished",
    "UpdateReady",
    "UpdateRefused",
    "UpdateStartRequested",
    "UpdateStarted",
    "VariableRequested",
    "VariableValue",
]


class NEED_DATA:
    """``next_event()`` returns this class when no event is pending: feed more data or wait for the timer."""


@dataclass(frozen=True)
class Event:
    """Base class of all events."""


# ---------------------------------------------------------------- handshake


@dataclass(frozen=True)
class DeviceIdentified(Event):
    """
    Cloud: the device proved it knows the nonce and said who it is.

    Answer with ``AcceptDevice(stored public key)`` or ``RejectDevice()``. ``offered_public_key_der`` is
    what the
    device sent (empty for pre-0.4 Core firmware); do not trust it without checking.
    """

    device_id: str
    offered_public_key_der: bytes


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    """Both roles: the session key is agreed; encrypted messages follow."""

    device_id: str


@dataclass(frozen=True)
class HelloReceived(Event):
    """
    Cloud: the device's Hello arrived (the server Hello has been queued). Missing fields are ``None``; the
    last three come only in the longer Hello of Device OS ≥ 3.0 (system module version, the largest binary
    and the OTA chunk size it takes).
    """

    product_id: int | None
    product_firmware_version: int | None
    flags: int
    platform_id: int | None
    system_version: int | None = None
    max_binary: int | None = None
    ota_chunk_size: int | None = None


@dataclass(frozen=True)
class ServerHelloReceived(Event):
    """Device: the cloud answered our Hello; the session is up."""


# ---------------------------------------------------------------- device → cloud


@dataclass(frozen=True)
class EventPublished(Event):
    """
    Cloud: the device published an event.

    A NON event needs nothing more. A CON event (the device published WITH_ACK) carries a ``request_id``:
    answer it with ``AcknowledgeEvent(request_id, accepted)``, an empty ACK when accepted, ACK 4.00
    ("EventSlowdown") when refused, e.g. over the device's publish rate limit.

    ``name_utf8`` is False when the name's bytes are not UTF-8 (CoAP's Uri-Path is a UTF-8 string): ``name``
    then shows U+FFFD in their place, and the event should be refused.
    """

    name: str
    data: bytes | None
    private: bool
    ttl: int
    confirmable: bool
    request_id: int | None = None
    name_utf8: bool = True


@dataclass(frozen=True)
class SubscribeRequested(Event):
    """
    Cloud: the device subscribes to events whose name starts with ``prefix`` (already ACKed).

    Devices send their subscriptions again after every Hello, so the same one may arrive more than once.
    """

    prefix: str
    scope: SubscriptionScope
    device_id: str | None = None


@dataclass(frozen=True)
class TimeRequested(Event):
    """Cloud: the device asks for the time; answer with ``SendTime(request_id, unix_time)``."""

    request_id: int


@dataclass(frozen=True)
class DescribeReceived(Event):
    """Cloud: a Describe payload; ``request_id`` is ``None`` when the device volunteered it (2.x)."""

    request_id: int | None
    flags: DescribeFlags | None
    description: Description


@dataclass(frozen=True)
class DiagnosticsReceived(Event):
    """Cloud: the device's vitals (a metrics Describe); ``request_id`` is ``None`` when volunteered."""

    request_id: int | None
    report: DiagnosticsReport


@dataclass(frozen=True)
class FunctionReturned(Event):
    """Cloud: a function call finished."""

    request_id: int
    return_value: int


@dataclass(frozen=True)
class VariableValue(Event):
    """Cloud: a variable read finished. ``value`` is decoded when the type was known, else ``None``."""

    request_id: int
    name: str
    var_type: VariableType | None
    value: VariableData
    raw: bytes


@dataclass(frozen=True)
class UpdateReady(Event):
    """Cloud: the device accepted UpdateBegin; ``fast`` tells whether it agreed to fast OTA."""

    request_id: int
    fast: bool


@dataclass(frozen=True)
class ChunkReceived(Event):
    """Cloud, non-fast OTA: the device stored a chunk (``ok``) or rejected it (bad CRC, ``ok`` false)."""

    request_id: int
    index: int
    ok: bool


@dataclass(frozen=True)
class ChunksMissed(Event):
    """Cloud, fast OTA: the device lists the chunk indices it did not get (already ACKed)."""

    indices: tuple[int, ...]


@dataclass(frozen=True)
class UpdateFinished(Event):
    """Cloud: the device reports the applied update (JSON payload); it resets afterwards."""

    request_id: int | None
    payload: bytes


@dataclass(frozen=True)
class UpdateStarted(Event):
    """
    Cloud, OTA v3: the device accepted UpdateStart (its CON 2.01, already ACKed): ``window`` chunks may be in
    flight beyond its cumulative ack, and it already holds the file's first ``offset`` bytes (resume).
    """

    request_id: int
    window: int
    offset: int


@dataclass(frozen=True)
class UpdateAcked(Event):
    """
    Cloud, OTA v3: an UpdateAck: chunks 1…``cumulative`` are held, and so are ``received`` beyond them
    (1-based indices, counted from the resume offset).
    """

    cumulative: int
    received: frozenset[int]


@dataclass(frozen=True)
class UpdateFinishAnswered(Event):
    """Cloud, OTA v3: the device's 2.04 to UpdateFinish (already ACKed: it applies the update now)."""

    request_id: int
    payload: bytes


@dataclass(frozen=True)
class UpdateRefused(Event):
    """
    Cloud, OTA v3: the device answered UpdateStart or UpdateFinish with an error: the CoAP ``code`` (5.03 for
    nearly everything) and the Device OS ``system_error`` and ``message`` of its JSON body, when present.
    """

    request_id: int
    code: int
    system_error: int | None
    message: str | None


@dataclass(frozen=True)
class GoodbyeReceived(Event):
    """Cloud: a 2.x device announces it is going away; ``payload`` holds its flags and reasons."""

    payload: bytes


# ---------------------------------------------------------------- cloud → device


@dataclass(frozen=True)
class FunctionCallRequested(Event):
    """Device: call a function; answer with ``RespondFunction(request_id, return_value)``."""

    request_id: int
    name: str
    argument: bytes


@dataclass(frozen=True)
class VariableRequested(Event):
    """Device: read a variable; answer with ``RespondVariable`` or ``RejectRequest``."""

    request_id: int
    name: str


@dataclass(frozen=True)
class DescribeRequested(Event):
    """Device: describe yourself; answer with ``RespondDescribe(request_id, payload)``."""

    request_id: int
    flags: DescribeFlags


@dataclass(frozen=True)
class SignalRequested(Event):
    """Device: start (``on``) or stop the rainbow LED signal (already ACKed)."""

    on: bool


@dataclass(frozen=True)
class UpdateBeginRequested(Event):
    """
    Device: the cloud starts an OTA update. Answer ``AcceptUpdate(request_id, fast)`` or refuse with
    ``RejectRequest(request_id, 5.03)``. ``file_length``/``chunk_size`` are ``None`` when the message was
    too short to carry them (the device then uses its own defaults).
    """

    request_id: int
    fast: bool
    chunk_size: int | None
    file_length: int | None
    store: int
    address: int


@dataclass(frozen=True)
class ChunkArrived(Event):
    """
    Device: one OTA chunk. Fast OTA chunks carry their ``index`` and get no answer (``request_id`` None);
    plain ones are answered with ``RespondChunk(request_id, ok)``.
    """

    request_id: int | None
    index: int | None
    crc32: int | None
    data: bytes


@dataclass(frozen=True)
class UpdateDoneRequested(Event):
    """
    Device: the cloud has sent every chunk. Answer ``RespondUpdateDone(request_id, payload)`` or, when chunks
    are missing, ``RejectRequest(request_id, 4.00)`` followed by ``ReportMissedChunks``.
    """

    request_id: int


@dataclass(frozen=True)
class UpdateStartRequested(Event):
    """
    Device, OTA v3: the cloud starts an update (empty ACK sent when it ``decoded``). Answer
    ``AcceptUpdateStart(request_id, window, offset)`` or ``RespondOtaError(request_id, system_error, …)``.
    """

    request_id: int
    file_size: int
    chunk_size: int
    sha256: bytes | None
    discard: bool
    module_function: int | None
    decoded: bool = True


@dataclass(frozen=True)
class UpdateChunkArrived(Event):
    """Device, OTA v3: one chunk (NON, no answer); ``index`` is 1-based (0: the option was missing)."""

    index: int
    data: bytes


@dataclass(frozen=True)
class UpdateFinishRequested(Event):
    """
    Device, OTA v3: the cloud finishes (or, ``cancel``, aborts) the update (empty ACK sent). Answer
    ``RespondUpdateFinish(request_id, payload)`` — its request id completes when the cloud ACKs it — or
    ``RespondOtaError``.
    """

    request_id: int
    discard: bool
    cancel: bool


@dataclass(frozen=True)
class EventReceived(Event):
    """Device: an event from the cloud (the name's Uri-Path segments joined with ``/``; Max-Age → ``ttl``)."""

    name: str
    data: bytes | None
    private: bool
    ttl: int = 60


@dataclass(frozen=True)
class TimeReceived(Event):
    """Device: the answer to ``RequestTime``."""

    request_id: int
    unix_time: int


# ---------------------------------------------------------------- both roles


@dataclass(frozen=True)
class PingReceived(Event):
    """The peer pinged us (already ACKed)."""


@dataclass(frozen=True)
class RequestCompleted(Event):
    """A request with no richer result (Ping, Signal, CON event, Subscribe…) was answered with ``code``."""

    request_id: int
    code: int


@dataclass(frozen=True)
class RequestFailed(Event):
    """A request was refused (``code`` = the CoAP error code, ``None`` for RST or a closed connection)."""

    request_id: int
    code: int | None
    reason: str


@dataclass(frozen=True)
class RequestTimedOut(Event):
    """No response arrived before the request's deadline; a late response will be ignored."""

    request_id: int


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The connection is over; always the last event. ``error`` is true when the peer broke the protocol."""

    reason: str
    error: bool = False
