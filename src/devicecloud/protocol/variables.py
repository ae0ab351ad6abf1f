"""
Cloud variable values on the wire.

Theory of operation:
    A variable's bytes only make sense with its type code from the Describe JSON (bool 1, int32 2, string 4,
    double 9, null 5). The encodings are fixed by the device firmware: int32 is big-endian, but double is the
    native **little-endian** IEEE-754 layout; strings are raw bytes with no terminator. Decoding peer bytes
    raises
    only ``RemoteProtocolError``; encoding a bad local value raises ``LocalProtocolError``.
"""

from __future__ import annotations

import math
import struct

from devicecloud.protocol.codes import VariableType
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["VariableData", "decode_variable", "encode_variable"]

VariableData = bool | int | float | str | None


def decode_variable(var_type: VariableType | int, raw: bytes) -> VariableData:
    """
    Decode a variable value.

    Args:
        var_type: the type code from the Describe JSON.
        raw: the response payload.

    Returns:
        ``bool`` / ``int`` / ``float`` / ``str`` (UTF-8, undecodable bytes replaced) / ``None`` for NULL.

    Raises:
        RemoteProtocolError: the byte count does not fit the type, or the type code is unknown.
    """
    if var_type == VariableType.BOOL:
        if len(raw) != 1:
            raise RemoteProtocolError(f"bool variable of {len(raw)} bytes")
        return raw != b"\x00"
    if var_type == VariableType.INT:
        if len(raw) != 4:
            raise RemoteProtocolError(f"int32 variable of {len(raw)} bytes")
        return int.from_bytes(raw, "big", signed=True)
    if var_type == VariableType.DOUBLE:
        if len(raw) != 8:
            raise RemoteProtocolError(f"double variable of {len(raw)} bytes")
        value: float = struct.unpack("<d", raw)[0]
        return value
    if var_type == VariableType.STRING:
        return raw.decode("utf-8", "replace")
    if var_type == VariableType.NULL:
        return None
    raise RemoteProtocolError(f"unknown variable type code {int(var_type)}")


def encode_variable(var_type: VariableType | int, value: VariableData) -> bytes:
    """
    Encode a variable value the way the device firmware does.

    Returns:
        The payload bytes.

    Raises:
        LocalProtocolError: the value does not fit the type.
    """
    if var_type == VariableType.BOOL and isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if var_type == VariableType.INT and isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31:
            raise LocalProtocolError(f"{value} does not fit in an int32")
        return value.to_bytes(4, "big", signed=True)
    if var_type == VariableType.DOUBLE and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and not math.isfinite(float(value)):
            raise LocalProtocolError("integer too large for a double")
        return struct.pack("<d", float(value))
    if var_type == VariableType.STRING and isinstance(value, str):
        return value.encode("utf-8")
    if var_type == VariableType.NULL and value is None:
        return b""
    raise LocalProtocolError(f"cannot encode {value!r} as variable type {var_type!r}")
