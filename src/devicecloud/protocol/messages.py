"""
Particle application messages: builders for every message either role sends, and the classifier for what
arrives.

Theory of operation:
    Devices parse several messages at fixed offsets, so the builders fix the layout: the first Uri-Path
    option is
    the one-letter path, the token is 0 or 1 byte, option values are encoded exactly as the firmware expects
    (e.g. the device's Max-Age is always 3 bytes, the function argument always travels as one Uri-Query,
    even when
    empty). Builders take the message id and token from the caller; they never count anything themselves.
"""

from __future__ import annotations

import zlib

from devicecloud.protocol.coap import Message, encode_uint, path_options, query_options
from devicecloud.protocol.codes import REQUEST_KINDS, Code, MessageKind, MessageType, OptionNumber
from devicecloud.protocol.errors import LocalProtocolError

__all__ = [
    "DEFAULT_EVENT_TTL",
    "EVENT_SLOWDOWN",
    "ack",
    "chunk",
    "chunk_missed",
    "classify",
    "describe_request",
    "device_describe",
    "device_event_max_age",
    "event",
    "function_call",
    "hello",
    "ping",
    "response",
    "signal",
    "subscribe",
    "time_request",
    "update_begin",
    "update_done",
    "update_result",
    "variable_request",
]

DEFAULT_EVENT_TTL = 60
#: The ACK code refusing a CON event (spark-protocol's "EventSlowdown"); Device OS fails any 4.xx alike.
EVENT_SLOWDOWN = Code.BAD_REQUEST


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def classify(message: Message) -> MessageKind | None:
    """
    The kind of a request message (code class 0).

    Returns:
        The kind, or ``None`` for an unknown method/path.
    """
    if message.code == Code.EMPTY:
        return MessageKind.PING if message.type is MessageType.CON else None
    # The first Uri-Path option, raw: no segment is decoded for a lookup of one ASCII letter.
    for number, value in message.options:
        if number == OptionNumber.URI_PATH:
            return _RAW_REQUEST_KINDS.get((message.code, value))
    return None


_RAW_REQUEST_KINDS = {(code, path.encode()): kind for (code, path), kind in REQUEST_KINDS.items()}


def hello(message_id: int, payload: bytes = b"", confirmable: bool = False) -> Message:
    """Hello: NON POST /h (the device's carries its 8-byte payload, the cloud's none)."""
    mtype = MessageType.CON if confirmable else MessageType.NON
    return Message(mtype, Code.POST, message_id, b"", path_options("h"), payload)


def ping(message_id: int) -> Message:
    """CoAP ping: CON 0.00, 4 bytes."""
    return Message(MessageType.CON, Code.EMPTY, message_id)


Options = tuple[tuple[int, bytes], ...]


def ack(
    message_id: int,
    code: int = Code.EMPTY,
    token: bytes = b"",
    payload: bytes = b"",
    content_format: int | None = None,
    options: Options = (),
) -> Message:
    """ACK echoing ``message_id`` (empty, or a piggy-backed response with ``options`` besides)."""
    if not code:
        return Message(MessageType.ACK, code, message_id, b"", (), b"")
    return Message(
        MessageType.ACK, code, message_id, token, _content_format(content_format) + options, payload
    )


def response(
    message_id: int,
    code: int,
    token: bytes,
    payload: bytes = b"",
    confirmable: bool = False,
    content_format: int | None = None,
    options: Options = (),
) -> Message:
    """A separate response (NON, or CON for the 2.x Describe) carrying the request's token."""
    mtype = MessageType.CON if confirmable else MessageType.NON
    return Message(mtype, code, message_id, token, _content_format(content_format) + options, payload)


def _content_format(value: int | None) -> tuple[tuple[int, bytes], ...]:
    return () if value is None else ((OptionNumber.CONTENT_FORMAT, encode_uint(value)),)


#: The largest Describe joined from blocks (Block1 from the device, Block2 on request): bigger is refused.
MAX_DESCRIBE = 64 * 1024


def block_option(num: int, more: bool, szx: int) -> bytes:
    """A Block1/Block2 option value (RFC 7959 §2.2): number, more flag, size exponent (2^(szx+4) bytes)."""
    return encode_uint(num << 4 | (0x8 if more else 0) | szx)


def parse_block_option(raw: bytes) -> tuple[int, bool, int]:
    """(block number, more, size in bytes) of a Block1/Block2 option value."""
    value = int.from_bytes(raw, "big")
    return value >> 4, bool(value & 0x8), 1 << ((value & 0x7) + 4)


def describe_request(
    message_id: int, token: bytes, flags: int | None, *, block2: bytes | None = None
) -> Message:
    """CON GET /d [+ 1-byte Uri-Query flags] [+ Block2: the next block of a blockwise Describe]."""
    query = query_options([bytes([flags])]) if flags is not None else ()
    block = ((OptionNumber.BLOCK2, block2),) if block2 is not None else ()
    return Message(MessageType.CON, Code.GET, message_id, token, path_options("d") + query + block)


def function_call(message_id: int, token: bytes, name: str, argument: str | bytes) -> Message:
    """CON POST /f/<name>?<argument> (the argument is always present as one Uri-Query)."""
    options = path_options(["f", name]) + query_options([_bytes(argument)])
    return Message(MessageType.CON, Code.POST, message_id, token, options)


def variable_request(message_id: int, token: bytes, name: str) -> Message:
    """CON GET /v/<name>."""
    return Message(MessageType.CON, Code.GET, message_id, token, path_options(["v", name]))


def signal(message_id: int, token: bytes, on: bool) -> Message:
    """CON PUT /s?<1|0>."""
    options = path_options("s") + query_options([b"\x01" if on else b"\x00"])
    return Message(MessageType.CON, Code.PUT, message_id, token, options)


def event(
    message_id: int,
    name: str | bytes,
    data: str | bytes | None,
    *,
    private: bool,
    max_age: bytes | None = None,
    split_path: bool = False,
    confirmable: bool = False,
) -> Message:
    """
    POST /e/<name> (public) or /E/<name> (private).

    Args:
        message_id: the id.
        name: event name (``bytes``: sent as they are, one Uri-Path option).
        data: payload (``None`` or empty = no payload marker).
        private: ``/E`` instead of ``/e``.
        max_age: raw Max-Age option value (``None`` = no option).
        split_path: one Uri-Path option per ``/``-separated part instead of one for the whole name.
        confirmable: CON instead of NON.

    Returns:
        The message.
    """
    if not name:
        raise LocalProtocolError("event name must not be empty")
    segments: list[str | bytes] = [*name.split("/")] if split_path and isinstance(name, str) else [name]
    options = path_options(["E" if private else "e", *segments])
    if max_age is not None:
        options += ((OptionNumber.MAX_AGE, max_age),)
    mtype = MessageType.CON if confirmable else MessageType.NON
    return Message(mtype, Code.POST, message_id, b"", options, _bytes(data))


def device_event_max_age(ttl: int) -> bytes | None:
    """The device's Max-Age: absent for the default TTL 60, otherwise always 3 bytes."""
    return None if ttl == DEFAULT_EVENT_TTL else encode_uint(ttl, 3)


def subscribe(message_id: int, prefix: str, *, my_devices: bool, device_id: str | None) -> Message:
    """CON GET /e/<prefix> [+ Uri-Query "u"] [payload = device id]."""
    options = path_options(["e", prefix])
    if my_devices:
        options += query_options([b"u"])
    return Message(MessageType.CON, Code.GET, message_id, b"", options, _bytes(device_id))


def time_request(message_id: int, token: bytes) -> Message:
    """CON GET /t with a 1-byte token."""
    return Message(MessageType.CON, Code.GET, message_id, token, path_options("t"))


def device_describe(
    message_id: int, payload: bytes, flags: int, content_format: int | None = None
) -> Message:
    """2.x device-initiated Describe: CON POST /d?<flags> + JSON (or, Content-Format 42, protobuf)."""
    options = path_options("d") + _content_format(content_format) + query_options([bytes([flags])])
    return Message(MessageType.CON, Code.POST, message_id, b"", options, payload)


def update_begin(
    message_id: int, token: bytes, *, fast: bool, chunk_size: int, file_length: int, store: int, address: int
) -> Message:
    """CON POST /u with the 12-byte UpdateBegin payload."""
    try:
        payload = (
            bytes([1 if fast else 0])
            + chunk_size.to_bytes(2, "big")
            + file_length.to_bytes(4, "big")
            + bytes([store])
            + address.to_bytes(4, "big")
        )
    except (OverflowError, ValueError) as exc:
        raise LocalProtocolError(f"UpdateBegin field out of range: {exc}") from exc
    return Message(MessageType.CON, Code.POST, message_id, token, path_options("u"), payload)


def chunk(message_id: int, token: bytes, data: bytes, *, index: int | None, crc32: int | None) -> Message:
    """CON POST /c?<crc32 BE>[?<index BE16>] + chunk bytes (index only for fast OTA)."""
    crc = zlib.crc32(data) if crc32 is None else crc32
    queries = [crc.to_bytes(4, "big")]
    if index is not None:
        queries.append(index.to_bytes(2, "big"))
    options = path_options("c") + query_options(queries)
    return Message(MessageType.CON, Code.POST, message_id, token, options, data)


def update_done(message_id: int, token: bytes) -> Message:
    """CON PUT /u."""
    return Message(MessageType.CON, Code.PUT, message_id, token, path_options("u"))


def chunk_missed(message_id: int, indices: tuple[int, ...], *, confirmable: bool) -> Message:
    """Device: GET /c listing missed chunk indices (uint16 BE each)."""
    try:
        payload = b"".join(i.to_bytes(2, "big") for i in indices)
    except OverflowError as exc:
        raise LocalProtocolError("chunk indices are 16-bit") from exc
    mtype = MessageType.CON if confirmable else MessageType.NON
    return Message(mtype, Code.GET, message_id, b"", path_options("c"), payload)


def update_result(message_id: int, payload: bytes) -> Message:
    """Device OS 0.7 after a fast update: NON PUT /u with the result JSON, no token."""
    return Message(MessageType.NON, Code.PUT, message_id, b"", path_options("u"), payload)
