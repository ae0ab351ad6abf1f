"""
Usage (catalogue §17, decision 0026): what devices cost an account, counted per device and day.

An account is a user (the devices it owns) or a product (its devices); a product device a user owns counts
for both. Device messages are the events a device publishes, the function calls and the variable reads it
answers; device data is the bytes they carried (names, data, arguments, results). Stdlib only.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

AccountKind = Literal["user", "product"]

#: The notification a crossed limit makes (the catalogue's ``developer:usage_activity:…`` family; inferred).
LIMIT_EVENT = "developer:usage_activity:limit_reached"
LIMITS = ("devices", "device_messages", "device_data")
REPORT_TYPES = ("devices", "products")


@dataclass(frozen=True, slots=True)
class Account:
    kind: AccountKind
    id: int


@dataclass(slots=True)
class DeviceCounts:
    """
    One device's counts for one day, as this process saw them (cumulative since it started).
    """

    connected: bool = False
    events: int = 0
    calls: int = 0
    reads: int = 0
    data_bytes: int = 0


@dataclass(frozen=True, slots=True)
class CounterRow:
    """
    One stored row: a device's counts for one day as one writer (a process incarnation) counted them.
    """

    device_id: str
    day: date
    writer: str
    owner_id: int | None
    product_id: int | None
    connected: bool
    events: int
    calls: int
    reads: int
    data_bytes: int


@dataclass(frozen=True, slots=True)
class DeviceDay:
    """
    One device's usage on one day, summed over writers (a row of a ``devices`` report).
    """

    day: date
    device_id: str
    product_id: int | None
    connected: bool
    events: int
    calls: int
    reads: int
    data_bytes: int

    @property
    def messages(self) -> int:
        return self.events + self.calls + self.reads


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """
    An account's usage over a period.
    """

    owned_devices: int
    billable_devices: int  # devices connected (or heard) in the period
    events: int
    calls: int
    reads: int
    data_bytes: int

    @property
    def device_messages(self) -> int:
        return self.events + self.calls + self.reads


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """
    What an account's agreement allows a billing period (the catalogue's sandbox figures by default).
    """

    max_devices: int = 100
    max_messages: int = 100_000
    max_data: int = 45_000_000

    def crossed(self, totals: UsageTotals) -> dict[str, tuple[int, int]]:
        """
        The limits ``totals`` reached: limit name → (used, allowed).
        """
        checks = {
            "devices": (max(totals.owned_devices, totals.billable_devices), self.max_devices),
            "device_messages": (totals.device_messages, self.max_messages),
            "device_data": (totals.data_bytes, self.max_data),
        }
        return {name: pair for name, pair in checks.items() if pair[0] >= pair[1]}


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    start: date
    end: date  # the last day, inclusive
    next_start: date


def billing_period(today: date) -> BillingPeriod:
    """
    The calendar month holding ``today`` (agreements are monthly).
    """
    start = today.replace(day=1)
    next_start = (start + timedelta(days=32)).replace(day=1)
    return BillingPeriod(start, next_start - timedelta(days=1), next_start)


@dataclass(frozen=True, slots=True)
class UsageReport:
    id: str
    account: Account
    state: Literal["pending", "available", "failed"]
    report_type: str
    date_period_start: date
    date_period_end: date
    devices: tuple[str, ...]
    products: tuple[int, ...]
    created_at_iso: str
    expires_at_iso: str
    download_key: str | None


@dataclass(frozen=True, slots=True)
class UsageNotification:
    id: str
    account: Account
    event_name: str
    period_start: date
    period_end: date
    limit: str
    used: int
    allowed: int
    created_at_iso: str


DEVICE_COLUMNS = (
    "date",
    "device_id",
    "product_id",
    "connected",
    "events",
    "function_calls",
    "variable_reads",
    "device_messages",
    "device_data_bytes",
)
PRODUCT_COLUMNS = (
    "date",
    "product_id",
    "devices_connected",
    "events",
    "function_calls",
    "variable_reads",
    "device_messages",
    "device_data_bytes",
)


def report_csv(report_type: str, days: list[DeviceDay]) -> str:
    """
    A usage report: one row per device and day (``devices``) or per product and day (``products``).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if report_type == "devices":
        writer.writerow(DEVICE_COLUMNS)
        for d in sorted(days, key=lambda d: (d.day, d.device_id)):
            writer.writerow(
                [
                    d.day.isoformat(),
                    d.device_id,
                    "" if d.product_id is None else d.product_id,
                    int(d.connected),
                    d.events,
                    d.calls,
                    d.reads,
                    d.messages,
                    d.data_bytes,
                ]
            )
        return out.getvalue()
    writer.writerow(PRODUCT_COLUMNS)
    grouped: dict[tuple[date, int], list[DeviceDay]] = {}
    for d in days:
        if d.product_id is not None:
            grouped.setdefault((d.day, d.product_id), []).append(d)
    for (day, product_id), items in sorted(grouped.items()):
        writer.writerow(
            [
                day.isoformat(),
                product_id,
                sum(1 for d in items if d.connected),
                sum(d.events for d in items),
                sum(d.calls for d in items),
                sum(d.reads for d in items),
                sum(d.messages for d in items),
                sum(d.data_bytes for d in items),
            ]
        )
    return out.getvalue()
