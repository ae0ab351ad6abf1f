"""
Protocol numbers as ``IntEnum`` registries (like aiocoap's ``numbers`` package).

CoAP message types, codes and option numbers (RFC 7252), plus the Particle-specific numbers: Uri-Path letters
are the first path segment of every Particle message, variable type codes come from the Describe JSON, Hello
flags and Describe flags are bit sets.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "REQUEST_KINDS",
    "Code",
    "DescribeFlags",
    "HelloFlags",
    "MessageKind",
    "MessageType",
    "OptionNumber",
    "SubscriptionScope",
    "VariableType",
    "code_class",
    "code_str",
    "make_code",
]


class MessageType(IntEnum):
    """CoAP message type (header bits 4-5)."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def make_code(cls: int, detail: int) -> int:
    """
    Build a code byte from its ``c.dd`` parts.

    Returns:
        ``cls << 5 | detail``.
    """
    return (cls << 5) | detail


def code_class(code: int) -> int:
    """The ``c`` of a ``c.dd`` code byte."""
    return code >> 5


def code_str(code: int) -> str:
    """Render a code byte as ``c.dd`` (e.g. ``0x45`` → ``"2.05"``)."""
    return f"{code >> 5}.{code & 0x1F:02d}"


class Code(IntEnum):
    """The CoAP codes this protocol uses."""

    EMPTY = 0x00
    GET = 0x01
    POST = 0x02
    PUT = 0x03
    DELETE = 0x04
    CREATED = 0x41  # 2.01
    DELETED = 0x42  # 2.02
    VALID = 0x43  # 2.03
    CHANGED = 0x44  # 2.04
    CONTENT = 0x45  # 2.05
    BAD_REQUEST = 0x80  # 4.00
    UNAUTHORIZED = 0x81  # 4.01
    NOT_FOUND = 0x84  # 4.04
    METHOD_NOT_ALLOWED = 0x85  # 4.05
    FORBIDDEN = 0x83  # 4.03
    REQUEST_ENTITY_TOO_LARGE = 0x8D  # 4.13
    INTERNAL_SERVER_ERROR = 0xA0  # 5.00
    NOT_IMPLEMENTED = 0xA1  # 5.01
    SERVICE_UNAVAILABLE = 0xA3  # 5.03
    GATEWAY_TIMEOUT = 0xA4  # 5.04


class OptionNumber(IntEnum):
    """CoAP option numbers seen in this protocol."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6
    URI_PORT = 7
    LOCATION_PATH = 8
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    ACCEPT = 17
    LOCATION_QUERY = 20
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    NO_RESPONSE = 258


class VariableType(IntEnum):
    """Variable type codes of the Describe JSON ``"v"`` object."""

    BOOL = 1
    INT = 2
    STRING = 4
    NULL = 5  # spark-protocol only; no value bytes
    DOUBLE = 9


class HelloFlags(IntFlag):
    """Flags byte of the device Hello payload (offset 5)."""

    OTA_UPGRADE_SUCCESSFUL = 0x01
    DIAGNOSTICS_SUPPORT = 0x02
    IMMEDIATE_UPDATES_SUPPORT = 0x04
    GOODBYE_SUPPORT = 0x10
    DEVICE_INITIATED_DESCRIBE = 0x20
    COMPRESSED_OTA = 0x40
    OTA_PROTOCOL_V3 = 0x80


class DescribeFlags(IntFlag):
    """The 1-byte Uri-Query of a Describe request: which parts to describe."""

    SYSTEM = 1
    APPLICATION = 2
    METRICS = 4


class SubscriptionScope(IntEnum):
    """Who may produce the events a device subscribes to."""

    ALL_DEVICES = 0  # no query, no payload
    MY_DEVICES = 1  # Uri-Query "u"
    DEVICE = 2  # payload = one device id


class MessageKind(IntEnum):
    """What a Particle request is, from its method and first Uri-Path letter (see :data:`REQUEST_KINDS`)."""

    PING = 0
    HELLO = 1
    DESCRIBE = 2  # GET /d (cloud asks) or POST /d (2.x device volunteers)
    FUNCTION_CALL = 3
    VARIABLE_REQUEST = 4
    EVENT = 5  # POST /e or /E
    SUBSCRIBE = 6  # GET /e
    GET_TIME = 7
    SIGNAL = 8
    UPDATE_BEGIN = 9
    SAVE_BEGIN = 10
    CHUNK = 11
    UPDATE_DONE = 12
    CHUNK_MISSED = 13
    KEY_CHANGE = 14
    GOODBYE = 15
    UPDATE_START = 16  # OTA v3 (ota-and-dtls.md §A.3): POST /S, /C, /A, /F
    UPDATE_CHUNK = 17
    UPDATE_ACK = 18
    UPDATE_FINISH = 19


#: (method code, first Uri-Path segment) → kind. Events use both ``e`` (public) and ``E`` (private).
REQUEST_KINDS: dict[tuple[int, str], MessageKind] = {
    (Code.POST, "h"): MessageKind.HELLO,
    (Code.GET, "d"): MessageKind.DESCRIBE,
    (Code.POST, "d"): MessageKind.DESCRIBE,
    (Code.POST, "f"): MessageKind.FUNCTION_CALL,
    (Code.GET, "v"): MessageKind.VARIABLE_REQUEST,
    (Code.POST, "e"): MessageKind.EVENT,
    (Code.POST, "E"): MessageKind.EVENT,
    (Code.GET, "e"): MessageKind.SUBSCRIBE,
    (Code.GET, "t"): MessageKind.GET_TIME,
    (Code.PUT, "s"): MessageKind.SIGNAL,
    (Code.POST, "s"): MessageKind.SAVE_BEGIN,
    (Code.POST, "u"): MessageKind.UPDATE_BEGIN,
    (Code.PUT, "u"): MessageKind.UPDATE_DONE,
    (Code.POST, "c"): MessageKind.CHUNK,
    (Code.GET, "c"): MessageKind.CHUNK_MISSED,
    (Code.PUT, "k"): MessageKind.KEY_CHANGE,
    (Code.POST, "x"): MessageKind.GOODBYE,
    (Code.POST, "S"): MessageKind.UPDATE_START,
    (Code.POST, "C"): MessageKind.UPDATE_CHUNK,
    (Code.POST, "A"): MessageKind.UPDATE_ACK,
    (Code.POST, "F"): MessageKind.UPDATE_FINISH,
}
