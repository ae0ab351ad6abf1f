"""
Device diagnostics ("vitals"): the binary answer to a Describe with the metrics flag (4), and its meaning.

Theory of operation:
    Device OS 0.8 and later (Hello flag 0x02) answer ``GET /d?\\x04`` (or volunteer ``POST /d?\\x04`` from
    ``Particle.publishVitals()``) with a binary payload instead of JSON. Its layout, read from Device OS's
    describe serialiser and diagnostics formatter (facts only), all integers little-endian:

    - one zero byte (binary, not JSON), then the Describe type as a 16-bit number (4 = metrics);
    - the formatter's header: the size of a source id (2) and of a value (4), 16 bits each;
    - one record per diagnostic source: its 16-bit id and a 32-bit value (signed or unsigned, as the
      source declares). A source that failed to read sets the id's top bit and carries the error code
      (a negative system error) instead of a value.

    Some values are fixed-point: signal strength and quality and the battery charge are unsigned Q8.8
    percentages, the signal and quality values signed Q16.16 (dBm, dB). Enumerations (connection states,
    battery state, power source, access technology) are Device OS's numbers.

    :func:`parse_diagnostics` is strict (wrong marker, type, header sizes, a truncated record, or a repeated
    id raise `RemoteProtocolError`); :func:`build_diagnostics` writes the same layout (the virtual device);
    :func:`vitals_payload` turns the records into the Particle Cloud's vitals JSON (catalogue §5), keeping
    only the sources it names: ``device.…`` keys only (the ``service.…`` part is the cloud's own figures).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from devicecloud.protocol.codes import DescribeFlags
from devicecloud.protocol.errors import RemoteProtocolError

__all__ = [
    "DiagnosticId",
    "DiagnosticsReport",
    "build_diagnostics",
    "is_binary_describe",
    "parse_diagnostics",
    "vitals_payload",
]

_ID_SIZE = 2
_VALUE_SIZE = 4
_PREFIX = b"\x00" + struct.pack("<HHH", int(DescribeFlags.METRICS), _ID_SIZE, _VALUE_SIZE)
_RECORD = struct.Struct("<Hi")
_ERROR_BIT = 0x8000
# A device has a few dozen sources; a payload with more records than a CoAP message can hold is not real.
MAX_RECORDS = 256


class DiagnosticId(IntEnum):
    """Device OS diagnostic source ids (``services/inc/diagnostics.h``)."""

    SYSTEM_LAST_RESET_REASON = 1
    SYSTEM_FREE_MEMORY = 2
    BATTERY_CHARGE = 3
    SYSTEM_LOOPS = 4
    APPLICATION_LOOPS = 5
    SYSTEM_UPTIME = 6
    BATTERY_STATE = 7
    NETWORK_CONNECTION_STATUS = 8
    NETWORK_CONNECTION_ERROR_CODE = 9
    CLOUD_CONNECTION_STATUS = 10
    NETWORK_DISCONNECTS = 12
    CLOUD_CONNECTION_ERROR_CODE = 13
    CLOUD_DISCONNECTS = 14
    NETWORK_RSSI = 19
    CLOUD_RATE_LIMITED_EVENTS = 20
    CLOUD_RETRANSMITTED_MESSAGES = 21
    CLOUD_UNACKNOWLEDGED_MESSAGES = 22
    CLOUD_TRANSMITTED_MESSAGES = 23
    POWER_SOURCE = 24
    SYSTEM_TOTAL_RAM = 25
    SYSTEM_USED_RAM = 26
    NETWORK_CONNECTION_ATTEMPTS = 27
    NETWORK_DISCONNECTION_REASON = 28
    CLOUD_CONNECTION_ATTEMPTS = 29
    CLOUD_DISCONNECTION_REASON = 30
    CLOUD_COAP_ROUND_TRIP = 31
    NETWORK_SIGNAL_STRENGTH = 33
    NETWORK_SIGNAL_QUALITY = 34
    NETWORK_SIGNAL_QUALITY_VALUE = 35
    NETWORK_ACCESS_TECHNOLOGY = 36
    NETWORK_SIGNAL_STRENGTH_VALUE = 37
    CELL_MOBILE_COUNTRY_CODE = 40
    CELL_MOBILE_NETWORK_CODE = 41
    CELL_LOCATION_AREA_CODE = 42
    CELL_ID = 43


@dataclass(frozen=True)
class DiagnosticsReport:
    """A decoded metrics Describe: source id → value, and source id → error code for sources that failed."""

    values: Mapping[int, int] = field(default_factory=dict)
    errors: Mapping[int, int] = field(default_factory=dict)


def is_binary_describe(payload: bytes) -> bool:
    """True when a Describe payload is binary (a metrics answer), not JSON."""
    return payload[:1] == b"\x00"


def parse_diagnostics(payload: bytes) -> DiagnosticsReport:
    """
    Decode a metrics Describe payload.

    Raises:
        RemoteProtocolError: not a binary metrics payload, unexpected header sizes, a truncated record, a
            repeated source id, or more than `MAX_RECORDS` records.
    """
    if len(payload) < len(_PREFIX):
        raise RemoteProtocolError(f"diagnostics payload of {len(payload)} bytes has no header")
    if payload[:1] != b"\x00":
        raise RemoteProtocolError("diagnostics payload is not binary")
    kind, id_size, value_size = struct.unpack_from("<HHH", payload, 1)
    if kind != DescribeFlags.METRICS:
        raise RemoteProtocolError(f"binary Describe of type {kind}, not metrics")
    if (id_size, value_size) != (_ID_SIZE, _VALUE_SIZE):
        raise RemoteProtocolError(f"diagnostics of {id_size}-byte ids and {value_size}-byte values")
    body = memoryview(payload)[len(_PREFIX) :]
    if len(body) % _RECORD.size:
        raise RemoteProtocolError("diagnostics payload ends inside a record")
    if len(body) // _RECORD.size > MAX_RECORDS:
        raise RemoteProtocolError("diagnostics payload has too many records")
    values: dict[int, int] = {}
    errors: dict[int, int] = {}
    for raw_id, value in _RECORD.iter_unpack(body):
        source = raw_id & ~_ERROR_BIT
        if source in values or source in errors:
            raise RemoteProtocolError(f"diagnostic source {source} reported twice")
        (errors if raw_id & _ERROR_BIT else values)[source] = value
    return DiagnosticsReport(values, errors)


def build_diagnostics(values: Mapping[int, int], errors: Mapping[int, int] | None = None) -> bytes:
    """
    Encode a metrics Describe payload as Device OS does (values are stored as 32 bits: an unsigned value
    above 2**31 - 1 is written as its two's complement, as the firmware's union does).
    """
    out = bytearray(_PREFIX)
    for source, value in values.items():
        out += _RECORD.pack(source, _int32(value))
    for source, code in (errors or {}).items():
        out += _RECORD.pack(source | _ERROR_BIT, _int32(code))
    return bytes(out)


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# ------------------------------------------------------------------------------------------ the vitals


def _uint(value: int) -> int:
    return value & 0xFFFFFFFF


def _q8_8(value: int) -> float:
    return round(_uint(value) / 256, 2)


def _q16_16(value: int) -> float:
    return round(value / 65536, 2)


def _enum(names: Mapping[int, str]) -> Callable[[int], str]:
    return lambda value: names.get(value, "unknown")


_NETWORK_STATUS = _enum(
    {
        0: "turned_off",
        1: "turning_on",
        2: "disconnected",
        3: "connecting",
        4: "connected",
        5: "disconnecting",
        7: "turning_off",
    }
)
_CLOUD_STATUS = _enum({0: "disconnected", 1: "connecting", 2: "connected", 3: "disconnecting"})
_NETWORK_REASON = _enum(
    {0: "none", 1: "error", 2: "user", 3: "network_off", 4: "listening", 5: "sleep", 6: "reset", 7: "unknown"}
)
_CLOUD_REASON = _enum(
    {
        0: "none",
        1: "error",
        2: "user",
        3: "network_disconnect",
        4: "listening",
        5: "reset",
        6: "sleep",
        7: "unknown",
        8: "server_moved",
    }
)
_BATTERY_STATE = _enum(
    {
        0: "unknown",
        1: "not charging",
        2: "charging",
        3: "charged",
        4: "discharging",
        5: "fault",
        6: "disconnected",
    }
)
_POWER_SOURCE = _enum({0: "unknown", 1: "VIN", 2: "USB host", 3: "USB adapter", 4: "USB OTG", 5: "battery"})
_ACCESS_TECHNOLOGY = {
    0: "unknown",
    1: "Wi-Fi",
    2: "GSM",
    3: "EDGE",
    4: "UTRAN",
    5: "CDMA",
    6: "LTE",
    7: "IEEE 802.15.4",
    8: "LTE Cat-M1",
    9: "LTE Cat-NB1",
}
# Which measure the signal's value and quality value are, by access technology.
_SIGNAL_TYPES = {1: ("RSSI", "SNR"), 2: ("RSSI", "BER"), 3: ("RSSI", "BER"), 4: ("RSCP", "Ec/Io")}
_LTE_SIGNAL_TYPES = ("RSRP", "RSRQ")
_LTE = frozenset({6, 8, 9})

_Convert = Callable[[int], Any]
_ident: _Convert = int
# source → (path in the vitals JSON, conversion)
_TABLE: dict[int, tuple[tuple[str, ...], _Convert]] = {
    DiagnosticId.SYSTEM_UPTIME: (("device", "system", "uptime"), _uint),
    DiagnosticId.SYSTEM_USED_RAM: (("device", "system", "memory", "used"), _uint),
    DiagnosticId.SYSTEM_TOTAL_RAM: (("device", "system", "memory", "total"), _uint),
    DiagnosticId.BATTERY_CHARGE: (("device", "power", "battery", "charge"), _q8_8),
    DiagnosticId.BATTERY_STATE: (("device", "power", "battery", "state"), _BATTERY_STATE),
    DiagnosticId.POWER_SOURCE: (("device", "power", "source"), _POWER_SOURCE),
    DiagnosticId.NETWORK_CONNECTION_STATUS: (("device", "network", "connection", "status"), _NETWORK_STATUS),
    DiagnosticId.NETWORK_CONNECTION_ERROR_CODE: (("device", "network", "connection", "error"), _ident),
    DiagnosticId.NETWORK_DISCONNECTS: (("device", "network", "connection", "disconnects"), _uint),
    DiagnosticId.NETWORK_CONNECTION_ATTEMPTS: (("device", "network", "connection", "attempts"), _uint),
    DiagnosticId.NETWORK_DISCONNECTION_REASON: (
        ("device", "network", "connection", "disconnect_reason"),
        _NETWORK_REASON,
    ),
    DiagnosticId.NETWORK_SIGNAL_STRENGTH: (("device", "network", "signal", "strength"), _q8_8),
    DiagnosticId.NETWORK_SIGNAL_STRENGTH_VALUE: (("device", "network", "signal", "strengthv"), _q16_16),
    DiagnosticId.NETWORK_SIGNAL_QUALITY: (("device", "network", "signal", "quality"), _q8_8),
    DiagnosticId.NETWORK_SIGNAL_QUALITY_VALUE: (("device", "network", "signal", "qualityv"), _q16_16),
    DiagnosticId.NETWORK_ACCESS_TECHNOLOGY: (
        ("device", "network", "signal", "at"),
        lambda v: _ACCESS_TECHNOLOGY.get(v, "unknown"),
    ),
    DiagnosticId.CELL_MOBILE_COUNTRY_CODE: (
        ("device", "network", "cellular", "cell_global_identity", "mobile_country_code"),
        _uint,
    ),
    DiagnosticId.CELL_MOBILE_NETWORK_CODE: (
        ("device", "network", "cellular", "cell_global_identity", "mobile_network_code"),
        lambda v: str(_uint(v)),
    ),
    DiagnosticId.CELL_LOCATION_AREA_CODE: (
        ("device", "network", "cellular", "cell_global_identity", "location_area_code"),
        _uint,
    ),
    DiagnosticId.CELL_ID: (("device", "network", "cellular", "cell_global_identity", "cell_id"), _uint),
    DiagnosticId.CLOUD_CONNECTION_STATUS: (("device", "cloud", "connection", "status"), _CLOUD_STATUS),
    DiagnosticId.CLOUD_CONNECTION_ERROR_CODE: (("device", "cloud", "connection", "error"), _ident),
    DiagnosticId.CLOUD_CONNECTION_ATTEMPTS: (("device", "cloud", "connection", "attempts"), _uint),
    DiagnosticId.CLOUD_DISCONNECTION_REASON: (
        ("device", "cloud", "connection", "disconnect_reason"),
        _CLOUD_REASON,
    ),
    DiagnosticId.CLOUD_DISCONNECTS: (("device", "cloud", "disconnects"), _uint),
    DiagnosticId.CLOUD_TRANSMITTED_MESSAGES: (("device", "cloud", "coap", "transmit"), _uint),
    DiagnosticId.CLOUD_RETRANSMITTED_MESSAGES: (("device", "cloud", "coap", "retransmit"), _uint),
    DiagnosticId.CLOUD_UNACKNOWLEDGED_MESSAGES: (("device", "cloud", "coap", "unack"), _uint),
    DiagnosticId.CLOUD_COAP_ROUND_TRIP: (("device", "cloud", "coap", "round_trip"), _uint),
    DiagnosticId.CLOUD_RATE_LIMITED_EVENTS: (("device", "cloud", "publish", "rate_limited"), _uint),
}


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


def vitals_payload(report: DiagnosticsReport) -> dict[str, Any]:
    """
    The ``device`` part of the vitals JSON for a report; sources the catalogue does not name are left out,
    a failed source appears as ``{"err": code}``. Signal units and measure types are added when the
    signal is present.
    """
    doc: dict[str, Any] = {}
    for source, value in sorted(report.values.items()):
        entry = _TABLE.get(source)
        if entry is not None:
            _put(doc, entry[0], entry[1](value))
    for source, code in sorted(report.errors.items()):
        entry = _TABLE.get(source)
        if entry is not None:
            _put(doc, entry[0], {"err": code})
    signal = doc.get("device", {}).get("network", {}).get("signal")
    if signal is not None:
        at = report.values.get(DiagnosticId.NETWORK_ACCESS_TECHNOLOGY)
        strength_type, quality_type = (
            _LTE_SIGNAL_TYPES if at in _LTE else _SIGNAL_TYPES.get(at or 1, ("RSSI", "SNR"))
        )
        if "strength" in signal:
            signal["strength_units"] = "%"
        if "strengthv" in signal:
            signal["strengthv_units"] = "dBm"
            signal["strengthv_type"] = strength_type
        if "quality" in signal:
            signal["quality_units"] = "%"
        if "qualityv" in signal:
            signal["qualityv_units"] = "dB"
            signal["qualityv_type"] = quality_type
    return doc
