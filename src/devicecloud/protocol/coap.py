"""
CoAP message codec (RFC 7252 §3), pure functions over bytes.

Theory of operation:
    A :class:`Message` is an immutable value: type, code, message id, token, an ordered tuple of
    ``(option number, raw value)`` pairs and a payload. :func:`encode` writes options sorted by number (a
    stable
    sort, so repeated options such as Uri-Path keep their order) with the delta/length nibbles and the 13/14
    extended forms; option *values* are written exactly as given, because Particle devices parse several
    messages
    at fixed offsets and the caller must control e.g. whether Max-Age takes 1 or 3 bytes. An empty payload
    means
    "no payload marker".

    :func:`decode` is the only place peer bytes become a message. Anything malformed (wrong version, token
    longer
    than 8, reserved nibble 15, truncated option, marker without payload, bytes after an empty message) raises
    :class:`~devicecloud.protocol.errors.RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Generic, TypeVar, overload

from devicecloud.protocol.codes import MessageType, OptionNumber, code_str
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Message", "decode", "decode_uint", "encode", "encode_uint", "path_options", "query_options"]

_PAYLOAD_MARKER = 0xFF
# MessageType by header bits, without the enum's call (it runs for every message received).
_TYPES = tuple(MessageType(value) for value in range(4))
_OPTION_NUMBER = itemgetter(0)
_T = TypeVar("_T")


class _computed_once(Generic[_T]):  # a decorator, named like functools.cached_property
    """
    A property computed on first read and kept in the instance's ``__dict__`` (later reads never call this):
    `functools.cached_property` without its lock, which on Python 3.11 costs more than the work it saves.
    """

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self._compute = compute
        self._name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, instance: None, owner: type) -> _computed_once[_T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> _T: ...

    def __get__(self, instance: object | None, owner: type) -> _T | _computed_once[_T]:
        if instance is None:
            return self
        value = self._compute(instance)
        instance.__dict__[self._name] = value  # a frozen dataclass's __setattr__ is bypassed on purpose
        return value


@dataclass(frozen=True)
class Message:
    """One CoAP message."""

    type: MessageType
    code: int
    message_id: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""

    @_computed_once
    def uri_path(self) -> tuple[str, ...]:
        """The Uri-Path segments, decoded as UTF-8 (undecodable bytes replaced); read several times."""
        return tuple([v.decode("utf-8", "replace") for n, v in self.options if n == OptionNumber.URI_PATH])

    @property
    def uri_query(self) -> tuple[bytes, ...]:
        """The raw Uri-Query option values, in order."""
        return self.option_values(OptionNumber.URI_QUERY)

    def option_values(self, number: int) -> tuple[bytes, ...]:
        """All values of one option number, in order."""
        return tuple([v for n, v in self.options if n == number])

    @property
    def is_empty(self) -> bool:
        """True for code 0.00 (an empty ACK/RST or a CoAP ping)."""
        return self.code == 0

    def __str__(self) -> str:
        path = "/" + "/".join(self.uri_path) if self.uri_path else ""
        return (
            f"{self.type.name} {code_str(self.code)} id={self.message_id} tok={self.token.hex() or '-'}"
            f"{' ' + path if path else ''} {len(self.payload)}B"
        )


def encode_uint(value: int, length: int | None = None) -> bytes:
    """
    Encode an unsigned option value.

    Args:
        value: the integer (>= 0).
        length: fixed byte length; ``None`` = the minimal CoAP form (0 encodes as no bytes).

    Returns:
        Big-endian bytes.
    """
    if value < 0:
        raise LocalProtocolError("uint option values must be >= 0")
    if length is None:
        length = (value.bit_length() + 7) // 8
    try:
        return value.to_bytes(length, "big")
    except OverflowError as exc:
        raise LocalProtocolError(f"{value} does not fit in {length} bytes") from exc


def decode_uint(value: bytes) -> int:
    """Decode a big-endian unsigned option value (empty = 0)."""
    return int.from_bytes(value, "big")


def _nibble(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    if n < 65805:
        return 14, (n - 269).to_bytes(2, "big")
    raise LocalProtocolError(f"option delta/length {n} too large")


def encode(message: Message) -> bytes:
    """
    Serialise a message.

    Returns:
        The CoAP bytes.
    """
    token = message.token
    if len(token) > 8:
        raise LocalProtocolError("token longer than 8 bytes")
    if not 0 <= message.message_id <= 0xFFFF:
        raise LocalProtocolError("message id out of range")
    if not 0 <= message.code <= 0xFF:
        raise LocalProtocolError("code out of range")
    out = bytearray()
    out.append(0x40 | (int(message.type) << 4) | len(token))
    out.append(message.code)
    out += message.message_id.to_bytes(2, "big")
    out += token
    last = 0
    options = message.options
    for number, value in sorted(options, key=_OPTION_NUMBER) if len(options) > 1 else options:
        delta_nib, delta_ext = _nibble(number - last)
        len_nib, len_ext = _nibble(len(value))
        out.append((delta_nib << 4) | len_nib)
        out += delta_ext + len_ext + value
        last = number
    if message.payload:
        out.append(_PAYLOAD_MARKER)
        out += message.payload
    return bytes(out)


def _read_ext(data: bytes, pos: int, nib: int) -> tuple[int, int]:
    if nib < 13:
        return nib, pos
    if nib == 13:
        if pos + 1 > len(data):
            raise RemoteProtocolError("truncated CoAP option header")
        return data[pos] + 13, pos + 1
    if nib == 14:
        if pos + 2 > len(data):
            raise RemoteProtocolError("truncated CoAP option header")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise RemoteProtocolError("reserved CoAP option nibble 15")


def decode(data: bytes) -> Message:
    """
    Parse one CoAP message.

    Returns:
        The message.

    Raises:
        RemoteProtocolError: the bytes are not a well-formed CoAP message.
    """
    if type(data) is not bytes:
        data = bytes(data)  # slices below are then bytes, copied once
    size = len(data)
    if size < 4:
        raise RemoteProtocolError(f"CoAP message too short ({size} bytes)")
    first = data[0]
    if first >> 6 != 1:
        raise RemoteProtocolError(f"unsupported CoAP version {first >> 6}")
    mtype = _TYPES[(first >> 4) & 0x03]
    tkl = first & 0x0F
    if tkl > 8:
        raise RemoteProtocolError(f"invalid CoAP token length {tkl}")
    code = data[1]
    message_id = int.from_bytes(data[2:4], "big")
    if code == 0 and (tkl or size > 4):
        raise RemoteProtocolError("empty CoAP message with token, options or payload")
    pos = 4 + tkl
    if pos > size:
        raise RemoteProtocolError("truncated CoAP token")
    token = data[4:pos]
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while pos < size:
        byte = data[pos]
        pos += 1
        if byte == _PAYLOAD_MARKER:
            payload = data[pos:]
            if not payload:
                raise RemoteProtocolError("CoAP payload marker without payload")
            break
        delta, length = byte >> 4, byte & 0x0F
        if delta > 12:  # the extended forms (and the reserved 15) are rare: out of the common path
            delta, pos = _read_ext(data, pos, delta)
        if length > 12:
            length, pos = _read_ext(data, pos, length)
        end = pos + length
        if end > size:
            raise RemoteProtocolError("truncated CoAP option value")
        number += delta
        options.append((number, data[pos:end]))
        pos = end
    return Message(mtype, code, message_id, token, tuple(options), payload)


def path_options(segments: Iterable[str | bytes]) -> tuple[tuple[int, bytes], ...]:
    """Uri-Path options for the given segments (str segments are UTF-8 encoded)."""
    return tuple(
        (OptionNumber.URI_PATH, s.encode("utf-8") if isinstance(s, str) else bytes(s)) for s in segments
    )


def query_options(values: Sequence[bytes]) -> tuple[tuple[int, bytes], ...]:
    """Uri-Query options for the given raw values."""
    return tuple((OptionNumber.URI_QUERY, bytes(v)) for v in values)
