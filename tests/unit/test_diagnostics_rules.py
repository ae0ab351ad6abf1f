"""Vitals as data: CSV rows (flattened, formula-safe), summary buckets and their edges, date parsing."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from devicecloud.domain.diagnostics import VitalsRecord, flatten, summarise, to_csv
from devicecloud.errors import InvalidInput
from devicecloud.services.diagnostics import parse_date

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)


def report(minutes: float, strength: float | None = 80.0, **device: object) -> VitalsRecord:
    signal = {"strength": strength} if strength is not None else {}
    payload = {"device": {"network": {"signal": signal}, **device}}
    return VitalsRecord("0123456789abcdef01234567", T0 + timedelta(minutes=minutes), payload)


def test_flatten_keeps_errors_as_their_own_column() -> None:
    payload = {"device": {"power": {"battery": {"charge": {"err": -120}}}, "system": {"uptime": 5}}}
    assert {"device.power.battery.charge.err": -120, "device.system.uptime": 5} == flatten(payload)


def test_csv_columns_are_the_union_and_cells_cannot_be_formulas() -> None:
    records = [
        report(0, cloud={"connection": {"status": "=HYPERLINK(1)"}}),
        report(1, strength=-3.5),
    ]
    rows = list(csv.reader(io.StringIO(to_csv(records))))
    assert [
        "updated_at",
        "deviceID",
        "device.cloud.connection.status",
        "device.network.signal.strength",
    ] == rows[0]
    assert ["2026-03-01T00:00:00.000Z", records[0].device_id, "'=HYPERLINK(1)", "80.0"] == rows[1]
    assert ["2026-03-01T00:01:00.000Z", records[1].device_id, "", "-3.5"] == rows[2]  # numbers stay numbers


def test_summary_buckets_split_at_their_boundary_and_drop_the_outside() -> None:
    records = [report(0, 90), report(59.99, 10), report(60, 50), report(119, 30), report(120, 99)]
    summary = summarise(
        [report(-1, 1), *records], device_id="d", start=T0, end=T0 + timedelta(hours=2), limit=2
    )
    assert 3600 == summary["bucketSize"]
    first, second = summary["samples"]
    assert (
        "2026-03-01T00:00:00.000Z",
        {"max": 90.0, "min": 10.0, "avg": 50.0, "med": 50.0},
    ) == (first["timestamp"], {k: first["signalStrength"][k] for k in ("max", "min", "avg", "med")})
    assert [{"timestamp": "2026-03-01T00:59:59.400Z", "value": 10.0, "range": {"lt": 20.0}}] == first[
        "signalStrength"
    ]["warnings"]
    assert ("2026-03-01T01:00:00.000Z", 40.0) == (second["timestamp"], second["signalStrength"]["avg"])
    assert not summary["hasBattery"]


def test_summary_of_nothing_and_battery_figures() -> None:
    assert [] == summarise([], device_id="d", start=T0, end=T0 + timedelta(days=1), limit=30)["samples"]
    charged = report(5, power={"battery": {"charge": 50.0, "state": "charging"}})
    summary = summarise([charged], device_id="d", start=T0, end=T0 + timedelta(days=1), limit=30)
    assert summary["hasBattery"]
    [sample] = summary["samples"]
    assert (True, True, 50.0) == (
        sample["batteryCharging"],
        sample["batteryConnected"],
        sample["batteryCharge"],
    )
    assert 2880 == summary["bucketSize"]  # a day in 30 buckets of 48 minutes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00.250+02:00", datetime(2026, 3, 1, 8, 0, 0, 250_000, tzinfo=UTC)),
        ("2026-03-01", datetime(2026, 3, 1, tzinfo=UTC)),
        ("", None),
        (None, None),
    ],
)
def test_dates(text: str | None, expected: datetime | None) -> None:
    assert expected == parse_date(text)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "1" * 65, "2026-03-01T25:00:00Z"])
def test_bad_dates(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_date(text)
    assert ("bad_request", "start_date and end_date must be ISO8601 formatted") == (
        caught.value.code,
        caught.value.extra["description"],
    )
