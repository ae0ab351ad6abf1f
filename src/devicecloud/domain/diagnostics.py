"""
Device vitals (catalogue §5): a reading from a device, a stored report, its CSV rows, the summary's buckets
and the metadata document. Stdlib only; the rules about who may see what live in `services.diagnostics`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devicecloud.domain.timestamps import iso

__all__ = [
    "SIGNAL_WARNING_BELOW",
    "VITALS_METADATA",
    "VitalsReading",
    "VitalsRecord",
    "flatten",
    "summarise",
    "to_csv",
]

# Signal strength (percent) below which a sample is a warning (the metadata's own range says so too).
SIGNAL_WARNING_BELOW = 20.0


@dataclass(frozen=True, slots=True)
class VitalsReading:
    """
    What the gateway got from a device: the ``device`` part of the vitals, and what the cloud itself
    measured while asking (the round trip of this request, how long the session has been up).
    """

    device: Mapping[str, Any]
    round_trip_ms: int
    session_seconds: int


@dataclass(frozen=True, slots=True)
class VitalsRecord:
    """One stored report, as ``GET /v1/diagnostics/:id`` lists it."""

    device_id: str
    updated_at: datetime
    payload: Mapping[str, Any]

    def render(self) -> dict[str, Any]:
        return {"updated_at": iso(self.updated_at), "deviceID": self.device_id, "payload": self.payload}


def flatten(payload: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (the CSV's columns)."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and "err" not in value:
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, Mapping) and "err" in value:
            out[f"{name}.err"] = value["err"]
        else:
            out[name] = value
    return out


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell that starts like a formula; the values are the device's, so neutralise.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_csv(records: Sequence[VitalsRecord]) -> str:
    """
    The history as CSV: ``updated_at``, ``deviceID``, then one column per vitals key (dotted paths, sorted,
    the union over all rows; a row without a key leaves its cell empty).
    """
    rows = [flatten(record.payload) for record in records]
    columns = sorted({key for row in rows for key in row})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["updated_at", "deviceID", *columns])
    for record, row in zip(records, rows, strict=True):
        writer.writerow([iso(record.updated_at), record.device_id, *(_cell(row.get(c)) for c in columns)])
    return out.getvalue()


# ------------------------------------------------------------------------------------------ summary


def _get(payload: Mapping[str, Any], *path: str) -> Any:
    node: Any = payload
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def summarise(
    records: Iterable[VitalsRecord], *, device_id: str, start: datetime, end: datetime, limit: int
) -> dict[str, Any]:
    """
    ``GET /v1/diagnostics/:id/summary``: ``[start, end)`` cut into at most ``limit`` equal buckets (whole
    seconds, the first starting at ``start``); one sample per bucket that holds reports, with the signal
    strength's statistics (and its warnings: samples under `SIGNAL_WARNING_BELOW` %) and the means of the
    other figures. ``bucketSize`` is in seconds.
    """
    span = max(1.0, (end - start).total_seconds())
    size = max(1, math.ceil(span / max(1, limit)))
    buckets: dict[int, list[VitalsRecord]] = {}
    memory_total: float | None = None
    has_battery = False
    for record in records:
        index = int((record.updated_at - start).total_seconds() // size)
        if index >= 0 and record.updated_at < end:
            buckets.setdefault(index, []).append(record)
        total = _number(_get(record.payload, "device", "system", "memory", "total"))
        memory_total = total if total is not None else memory_total
        has_battery = (
            has_battery or _number(_get(record.payload, "device", "power", "battery", "charge")) is not None
        )
    samples = [_sample(start + timedelta(seconds=i * size), buckets[i]) for i in sorted(buckets)]
    return {
        "deviceID": device_id,
        "memoryAvailable": memory_total,
        "bucketSize": size,
        "startDate": iso(start),
        "endDate": iso(end),
        "hasBattery": has_battery,
        "samples": samples,
    }


def _series(records: list[VitalsRecord], *path: str) -> list[float]:
    return [v for r in records if (v := _number(_get(r.payload, *path))) is not None]


def _sample(at: datetime, records: list[VitalsRecord]) -> dict[str, Any]:
    strength = _series(records, "device", "network", "signal", "strength")
    warnings = [
        {"timestamp": iso(r.updated_at), "value": v, "range": {"lt": SIGNAL_WARNING_BELOW}}
        for r in records
        if (v := _number(_get(r.payload, "device", "network", "signal", "strength"))) is not None
        and v < SIGNAL_WARNING_BELOW
    ]
    states = [_get(r.payload, "device", "power", "battery", "state") for r in records]
    return {
        "timestamp": iso(at),
        "batteryCharging": any(s == "charging" for s in states),
        "batteryConnected": any(isinstance(s, str) and s not in ("disconnected", "unknown") for s in states),
        "signalStrength": {
            "max": max(strength) if strength else None,
            "min": min(strength) if strength else None,
            "avg": _mean(strength),
            "med": round(statistics.median(strength), 2) if strength else None,
            "warnings": warnings,
        },
        "signalStrengthValue": _mean(_series(records, "device", "network", "signal", "strengthv")),
        "signalQuality": _mean(_series(records, "device", "network", "signal", "quality")),
        "roundTripTime": _mean(_series(records, "device", "cloud", "coap", "round_trip")),
        "memoryUsed": _mean(_series(records, "device", "system", "memory", "used")),
        "batteryCharge": _mean(_series(records, "device", "power", "battery", "charge")),
    }


# ------------------------------------------------------------------------------------------ metadata


def _figure(
    title: str,
    units: str | None,
    description: str,
    *,
    priority: int,
    warning_below: float | None = None,
    by: float | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"title": title, "type": "number", "priority": priority}
    if units is not None:
        doc["units"] = {"title": units}
        if by is not None:
            doc["units"]["convert"] = {"type": "div", "by": by}
    if warning_below is not None:
        doc["ranges"] = {"type": "range", "warning": {"lt": warning_below}}
    doc["messages"] = {
        "description": description,
        "healthy": f"{title} is healthy.",
        "warning": f"{title} is low." if warning_below is not None else f"{title} needs attention.",
    }
    return doc


#: ``GET /v1/diagnostics/:id/metadata``: what each vital means, its units and when it is a warning.
VITALS_METADATA: dict[str, Any] = {
    "device": {
        "power": {
            "battery": {
                "charge": _figure(
                    "Battery charge", "%", "State of charge of the battery", priority=1, warning_below=10
                ),
                "state": {
                    "title": "Battery state",
                    "type": "enum",
                    "priority": 2,
                    "values": {
                        "all": [
                            "unknown",
                            "not charging",
                            "charging",
                            "charged",
                            "discharging",
                            "fault",
                            "disconnected",
                        ],
                        "healthy": ["not charging", "charging", "charged", "discharging"],
                        "warning": ["unknown", "fault", "disconnected"],
                    },
                    "messages": {
                        "description": "What the battery is doing",
                        "healthy": "The battery works normally.",
                        "warning": "The battery is missing or faulty.",
                    },
                },
            }
        },
        "system": {
            "memory": {
                "used": _figure("RAM used", "kB", "RAM in use", priority=5, by=1000),
                "total": _figure("RAM total", "kB", "RAM the application may use", priority=6, by=1000),
            }
        },
        "network": {
            "signal": {
                "strength": _figure(
                    "Signal strength", "%", "Strength of the radio signal", priority=3, warning_below=20
                ),
                "strengthv": _figure("Signal strength value", "dBm", "RSSI or RSRP", priority=4),
            }
        },
        "cloud": {
            "disconnects": _figure("Cloud disconnects", None, "Disconnections from the cloud", priority=7),
            "publish": {
                "rate_limited": _figure(
                    "Rate-limited publishes", None, "Events the device dropped over its rate", priority=8
                )
            },
        },
    },
    "service": {
        "coap": {"round_trip": _figure("Round trip", "ms", "Cloud to device and back", priority=9)},
        "cloud": {
            "uptime": _figure("Session uptime", "s", "Seconds since the device connected", priority=10)
        },
    },
}
