"""
OTA protocol v3 on the wire (Gen3/P2/M-SoM on Device OS ≥ 3.0; ota-and-dtls.md §A.3): the messages, their
custom CoAP options, the UpdateAck bitmap, error bodies, and what each message means to the role receiving
it.

Theory of operation:
    Builders fix the layout Device OS parses: UpdateStart CON POST ``/S`` with a 1-byte token and the options
    FILE_SIZE, FILE_SHA256, CHUNK_SIZE (+ DISCARD_DATA, MODULE_FUNCTION); UpdateChunk NON POST ``/C`` without
    a token, CHUNK_INDEX (1-based) and exactly the chunk's bytes; UpdateAck NON POST ``/A`` from the device,
    CHUNK_INDEX = chunks held contiguously from the start, payload = a bitmap of the chunks held beyond them
    (32-bit little-endian words, bit i = chunk ``cumulative + 1 + i``, trailing zero words dropped);
    UpdateFinish CON POST ``/F`` with a token (+ DISCARD_DATA or CANCEL_UPDATE). Unsigned option values are
    big-endian and minimal (0 = an empty option). The option numbers are all above 268, so `coap.encode`
    writes them with the 2-byte extended delta.

    Readers turn peer messages into events: `answer_event` (cloud: the device's answer to UpdateStart or
    UpdateFinish, including its error responses ``{"code":<system error>,"message":…}``), `cloud_event`
    (cloud: an UpdateAck), `device_event` (device: UpdateStart, a chunk, UpdateFinish). `CoapSession` only
    routes these messages here, as it does the legacy ones to `ota_requests`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import IntEnum

from devicecloud.protocol import coap, events
from devicecloud.protocol.coap import Message, encode_uint, path_options
from devicecloud.protocol.codes import Code, MessageKind, MessageType, code_class, code_str
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "SYSTEM_ERRORS",
    "Ota3Option",
    "answer_event",
    "cloud_event",
    "coap_code_for",
    "decode_bitmap",
    "device_event",
    "encode_bitmap",
    "error_payload",
    "error_reason",
    "finish_response",
    "start_response",
    "update_ack",
    "update_chunk",
    "update_finish",
    "update_start",
]

#: Chunk sizes Device OS takes: 512 ≤ n ≤ (MBEDTLS_SSL_MAX_CONTENT_LEN − 14) / 4 · 4, n % 4 == 0.
MIN_CHUNK_SIZE = 512
MAX_CHUNK_SIZE = 1136


class Ota3Option(IntEnum):
    """The custom CoAP options of OTA v3."""

    CHUNK_INDEX = 2049
    WINDOW_SIZE = 2053
    FILE_SIZE = 2057
    FILE_SHA256 = 2061
    CHUNK_SIZE = 2065
    DISCARD_DATA = 2069
    CANCEL_UPDATE = 2073
    MODULE_FUNCTION = 2077


#: Device OS system errors an update may end with (services/inc/system_error.h), in words.
SYSTEM_ERRORS: dict[int, str] = {
    -210: "invalid state",
    -240: "protocol error",
    -1300: "module not found",
    -1310: "unsupported module",
    -1320: "validation failed",
    -1330: "integrity check failed",
    -1331: "the resumed update failed",
    -1340: "dependency check failed",
    -1350: "invalid address",
    -1351: "invalid size (the file does not fit the device's OTA region)",
    -1360: "the binary is for another platform",
    -1370: "invalid format",
    -1380: "updates are disabled on the device",
    -1390: "OTA error",
}


def _uint(value: int) -> bytes:
    return encode_uint(value)


def _option_uint(msg: Message, number: int) -> int | None:
    values = msg.option_values(number)
    if not values:
        return None
    if len(values[0]) > 4:
        raise RemoteProtocolError(f"option {number} longer than 4 bytes")
    return coap.decode_uint(values[0])


# ---------------------------------------------------------------------------------------------- builders


def update_start(
    message_id: int,
    token: bytes,
    *,
    file_size: int,
    chunk_size: int,
    sha256: bytes | None = None,
    discard: bool = False,
    module_function: int | None = None,
) -> Message:
    """UpdateStart: CON POST /S, 1-byte token, no payload."""
    if file_size <= 0:
        raise LocalProtocolError("the file size must be positive")
    if sha256 is not None and len(sha256) != 32:
        raise LocalProtocolError("the file hash is a 32-byte SHA-256")
    options: list[tuple[int, bytes]] = [*path_options("S")]
    options.append((Ota3Option.FILE_SIZE, _uint(file_size)))
    if sha256 is not None:
        options.append((Ota3Option.FILE_SHA256, sha256))
    options.append((Ota3Option.CHUNK_SIZE, _uint(chunk_size)))
    if discard:
        options.append((Ota3Option.DISCARD_DATA, b""))
    if module_function is not None:
        options.append((Ota3Option.MODULE_FUNCTION, _uint(module_function)))
    return Message(MessageType.CON, Code.POST, message_id, token, tuple(options))


def update_chunk(message_id: int, index: int, data: bytes) -> Message:
    """UpdateChunk: NON POST /C, no token, CHUNK_INDEX (1-based), payload = the chunk."""
    if index < 1:
        raise LocalProtocolError("chunk indices start at 1")
    options = (*path_options("C"), (int(Ota3Option.CHUNK_INDEX), _uint(index)))
    return Message(MessageType.NON, Code.POST, message_id, b"", options, data)


def update_finish(message_id: int, token: bytes, *, discard: bool = False, cancel: bool = False) -> Message:
    """UpdateFinish: CON POST /F with a token (CANCEL_UPDATE aborts the update)."""
    options: list[tuple[int, bytes]] = [*path_options("F")]
    if discard:
        options.append((Ota3Option.DISCARD_DATA, b""))
    if cancel:
        options.append((Ota3Option.CANCEL_UPDATE, b""))
    return Message(MessageType.CON, Code.POST, message_id, token, tuple(options))


def update_ack(message_id: int, cumulative: int, received: Iterable[int]) -> Message:
    """Device: UpdateAck NON POST /A: CHUNK_INDEX = chunks held from the start, payload = the bitmap."""
    options = (*path_options("A"), (int(Ota3Option.CHUNK_INDEX), _uint(cumulative)))
    return Message(MessageType.NON, Code.POST, message_id, b"", options, encode_bitmap(cumulative, received))


def start_response(message_id: int, token: bytes, *, window: int, offset: int) -> Message:
    """Device: the separate CON 2.01 to UpdateStart: WINDOW_SIZE, and FILE_SIZE = the bytes already held."""
    options = ((int(Ota3Option.WINDOW_SIZE), _uint(window)), (int(Ota3Option.FILE_SIZE), _uint(offset)))
    return Message(MessageType.CON, Code.CREATED, message_id, token, options)


def finish_response(message_id: int, token: bytes, payload: bytes) -> Message:
    """Device: the separate CON 2.04 to UpdateFinish (transfer statistics JSON; empty after a cancel)."""
    return Message(MessageType.CON, Code.CHANGED, message_id, token, (), payload)


# ---------------------------------------------------------------------------------------------- bitmap


def encode_bitmap(cumulative: int, received: Iterable[int]) -> bytes:
    """Chunks held beyond ``cumulative``: bit i = chunk ``cumulative + 1 + i``; LE words, no trailing 0s."""
    bits = 0
    for index in received:
        if index > cumulative:
            bits |= 1 << (index - cumulative - 1)
    words = []
    while bits:
        words.append((bits & 0xFFFFFFFF).to_bytes(4, "little"))
        bits >>= 32
    return b"".join(words)


def decode_bitmap(cumulative: int, payload: bytes) -> frozenset[int]:
    """The chunk indices an UpdateAck bitmap says are held (beyond ``cumulative``)."""
    if len(payload) % 4:
        raise RemoteProtocolError("an UpdateAck bitmap is whole 32-bit words")
    held = []
    for w in range(0, len(payload), 4):
        word = int.from_bytes(payload[w : w + 4], "little")
        base = cumulative + 1 + w * 8
        held += [base + i for i in range(32) if word >> i & 1]
    return frozenset(held)


# ---------------------------------------------------------------------------------------------- errors


def coap_code_for(system_error: int) -> int:
    """
    The CoAP code Device OS answers a system error with (``coapCodeForSystemError``): 4.00 for
    INVALID_ARGUMENT, BAD_DATA, OUT_OF_RANGE, TOO_LARGE, NOT_ENOUGH_DATA; 4.04 NOT_FOUND; 4.03 NOT_ALLOWED;
    5.01 NOT_SUPPORTED; 5.00 INTERNAL; 5.04 TIMEOUT; 5.03 for everything else, every OTA error included.
    """
    return {
        -270: Code.BAD_REQUEST,
        -280: Code.BAD_REQUEST,
        -290: Code.BAD_REQUEST,
        -190: Code.BAD_REQUEST,
        -191: Code.BAD_REQUEST,
        -170: Code.NOT_FOUND,
        -130: Code.FORBIDDEN,
        -120: Code.NOT_IMPLEMENTED,
        -250: Code.INTERNAL_SERVER_ERROR,
        -160: Code.GATEWAY_TIMEOUT,
    }.get(system_error, Code.SERVICE_UNAVAILABLE)


def error_payload(system_error: int, message: str) -> bytes:
    """Device: the body of an error response (``formatDiagnosticPayload``)."""
    return json.dumps({"code": system_error, "message": message}, separators=(",", ":")).encode()


def _read_error(payload: bytes) -> tuple[int | None, str | None]:
    try:
        body = json.loads(payload) if payload else None
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    code = body.get("code")
    message = body.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        message if isinstance(message, str) else None,
    )


def error_reason(code: int, system_error: int | None, message: str | None) -> str:
    """A failure reason in words: the system error's meaning (Device OS answers nearly all with 5.03)."""
    if system_error is not None:
        known = SYSTEM_ERRORS.get(system_error)
        text = known or message or "error"
        return f"{text} (error {system_error}, {code_str(code)})"
    return f"{message or 'refused'} ({code_str(code)})"


# ---------------------------------------------------------------------------------------------- readers


def answer_event(request_id: int, kind: MessageKind, msg: Message) -> events.Event:
    """Cloud: the device's answer (piggy-backed or separate) to UpdateStart or UpdateFinish."""
    if code_class(msg.code) != 2 and msg.code != Code.EMPTY:
        system_error, message = _read_error(msg.payload)
        return events.UpdateRefused(request_id, msg.code, system_error, message)
    if kind is MessageKind.UPDATE_START:
        try:
            window = _option_uint(msg, Ota3Option.WINDOW_SIZE)
            offset = _option_uint(msg, Ota3Option.FILE_SIZE)
        except RemoteProtocolError as exc:
            return events.UpdateRefused(request_id, msg.code, None, str(exc))
        return events.UpdateStarted(request_id, window or 0, offset or 0)
    return events.UpdateFinishAnswered(request_id, msg.payload)


def cloud_event(msg: Message) -> events.Event | None:
    """Cloud: an UpdateAck (None when it is malformed: it is dropped, like a lost datagram)."""
    try:
        cumulative = _option_uint(msg, Ota3Option.CHUNK_INDEX)
        if cumulative is None:
            return None
        return events.UpdateAcked(cumulative, decode_bitmap(cumulative, msg.payload))
    except RemoteProtocolError:
        return None


#: Registers a peer request awaiting the application's answer; ``acked`` = the empty ACK goes out now.
InboundRequest = Callable[..., int]


def device_event(kind: MessageKind, msg: Message, inbound: InboundRequest) -> events.Event | None:
    """Device: the event for an OTA v3 request from the cloud (registered for an answer where one is due)."""
    if kind is MessageKind.UPDATE_CHUNK:
        try:
            index = _option_uint(msg, Ota3Option.CHUNK_INDEX)
        except RemoteProtocolError:
            index = None
        return events.UpdateChunkArrived(index or 0, msg.payload)
    if kind is MessageKind.UPDATE_START:
        try:
            size = _option_uint(msg, Ota3Option.FILE_SIZE)
            chunk = _option_uint(msg, Ota3Option.CHUNK_SIZE)
            function = _option_uint(msg, Ota3Option.MODULE_FUNCTION)
            sha = msg.option_values(Ota3Option.FILE_SHA256)
            if sha and len(sha[0]) != 32:
                raise RemoteProtocolError("FILE_SHA256 is 32 bytes")
            decoded = msg.type is MessageType.CON and len(msg.token) == 1 and size is not None
            decoded = decoded and chunk is not None
        except RemoteProtocolError:
            size = chunk = function = None
            sha = ()
            decoded = False
        # A request that decodes gets its empty ACK now; one that does not, a piggy-backed error.
        rid = inbound(kind, msg, acked=decoded)
        return events.UpdateStartRequested(
            request_id=rid,
            file_size=size or 0,
            chunk_size=chunk or 0,
            sha256=sha[0] if sha else None,
            discard=bool(msg.option_values(Ota3Option.DISCARD_DATA)),
            module_function=function,
            decoded=decoded,
        )
    if kind is MessageKind.UPDATE_FINISH:
        rid = inbound(kind, msg, acked=msg.type is MessageType.CON)
        return events.UpdateFinishRequested(
            request_id=rid,
            discard=bool(msg.option_values(Ota3Option.DISCARD_DATA)),
            cancel=bool(msg.option_values(Ota3Option.CANCEL_UPDATE)),
        )
    return None
