"""
SIM cards (catalogue §8, decision 0022): the registry's records, the state machine of carrier actions, and
the checks on what enters (ICCIDs, lists, usage rows).

Rules kept here:
- an ICCID is 18-22 digits (ITU-T E.118), compared as given;
- a SIM is ``active`` or ``inactive``; activate and reactivate make it active, deactivate inactive; each
  action is refused from the state where it would change nothing;
- data usage is counted in bytes and shown in megabytes (10^6 bytes), as the carrier reports do.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum

from devicecloud.domain.devices import normalise_device_id
from devicecloud.errors import InvalidInput

ICCID_PATTERN = re.compile(r"^[0-9]{18,22}$")
MAX_IMPORT = 1000  # ICCIDs in one import request
BYTES_PER_MB = 1_000_000
MAX_DAY_MBS = Decimal(1_000_000)  # a terabyte a day on one SIM is a typo, not a reading


class SimStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class SimAction(StrEnum):
    ACTIVATE = "activate"
    DEACTIVATE = "deactivate"
    REACTIVATE = "reactivate"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Sim:
    """
    One SIM card of the registry, owned by a user (``user_id``) or a product (``product_id``).
    """

    iccid: str
    user_id: int | None
    product_id: int | None
    status: SimStatus
    activations_count: int
    deactivations_count: int
    first_activated_on: datetime | None
    last_activated_on: datetime | None
    last_activated_via: str | None
    last_status_change_action: str | None
    last_status_change_action_error: bool
    carrier: str
    last_device_id: str | None
    created_at: datetime
    updated_at: datetime
    owner_username: str | None = None  # joined: the owning user's email
    last_device_name: str | None = None  # joined: the last device's current name


@dataclass(frozen=True, slots=True)
class SimQuery:
    """
    A product SIM list's filters (parts of the ICCID, device id or device name) and page.
    """

    iccid: str | None = None
    device_id: str | None = None
    device_name: str | None = None
    page: int = 1
    per_page: int = 25


@dataclass(frozen=True, slots=True)
class UsageDay:
    day: date
    bytes_used: int


@dataclass(frozen=True, slots=True)
class UsageRow:
    """
    One imported reading: what ``iccid`` used on ``day``, optionally by which device.
    """

    iccid: str
    day: date
    bytes_used: int
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """
    The state a SIM moves to under an action, and which counters move.
    """

    status: SimStatus
    activation: bool
    deactivation: bool


def check_iccid(value: object) -> str:
    if not isinstance(value, str) or not ICCID_PATTERN.match(value.strip()):
        raise InvalidInput("An ICCID is 18 to 22 digits")
    return value.strip()


def parse_iccids(values: object) -> list[str]:
    """
    ICCIDs from a list of strings or from text (a .txt file: one per line, or separated by commas or
    spaces), checked, in order, without repeats. Any bad entry refuses the whole list.
    """
    if isinstance(values, str):
        items: list[object] = [part for part in re.split(r"[\s,;]+", values) if part]
    elif isinstance(values, list):
        items = list(values)
    else:
        raise InvalidInput("sims must be a list of ICCIDs")
    if not items:
        raise InvalidInput("Give at least one ICCID in sims[] or a .txt file")
    if len(items) > MAX_IMPORT:
        raise InvalidInput(f"At most {MAX_IMPORT} ICCIDs can be imported at once")
    seen: dict[str, None] = {}
    for item in items:
        try:
            seen[check_iccid(item)] = None
        except InvalidInput as exc:
            shown = item[:30] if isinstance(item, str) else type(item).__name__
            raise InvalidInput(f"{shown!r} is not an ICCID: an ICCID is 18 to 22 digits") from exc
    return list(seen)


def transition(status: SimStatus, action: SimAction, activations_count: int) -> Transition:
    """
    What ``action`` does to a SIM in ``status``; `InvalidInput` when it does not apply.
    """
    if action is SimAction.ACTIVATE:
        if status is SimStatus.ACTIVE:
            raise InvalidInput("The SIM card is already active")
        return Transition(SimStatus.ACTIVE, activation=True, deactivation=False)
    if action is SimAction.REACTIVATE:
        if status is SimStatus.ACTIVE:
            raise InvalidInput("The SIM card is already active")
        if activations_count == 0:
            raise InvalidInput("The SIM card was never activated: use action=activate")
        return Transition(SimStatus.ACTIVE, activation=True, deactivation=False)
    if action is SimAction.DEACTIVATE:
        if status is not SimStatus.ACTIVE:
            raise InvalidInput("The SIM card is not active")
        return Transition(SimStatus.INACTIVE, activation=False, deactivation=True)
    raise InvalidInput("action must be activate, deactivate or reactivate")


def parse_action(value: object) -> SimAction:
    if isinstance(value, str) and value in (
        SimAction.ACTIVATE,
        SimAction.DEACTIVATE,
        SimAction.REACTIVATE,
    ):
        return SimAction(value)
    raise InvalidInput("action must be activate, deactivate or reactivate")


def megabytes(bytes_used: int) -> float:
    return round(bytes_used / BYTES_PER_MB, 6)


def parse_usage_row(fields: dict[str, str], line: int) -> UsageRow:
    """
    One CSV row of an operator's usage import: ``iccid``, ``date`` (YYYY-MM-DD), ``mbs_used`` (decimal
    megabytes) and an optional ``device_id``.
    """
    where = f"line {line}"
    try:
        iccid = check_iccid(fields.get("iccid"))
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.description}") from exc
    try:
        day = date.fromisoformat((fields.get("date") or "").strip())
    except ValueError as exc:
        raise InvalidInput(f"{where}: date must be YYYY-MM-DD") from exc
    try:
        mbs = Decimal((fields.get("mbs_used") or "").strip())
    except InvalidOperation as exc:
        raise InvalidInput(f"{where}: mbs_used must be a decimal number of megabytes") from exc
    if not mbs.is_finite() or mbs < 0 or mbs > MAX_DAY_MBS:
        raise InvalidInput(f"{where}: mbs_used must be between 0 and {MAX_DAY_MBS}")
    raw_device = (fields.get("device_id") or "").strip()
    device_id = normalise_device_id(raw_device) if raw_device else None
    if raw_device and device_id is None:
        raise InvalidInput(f"{where}: device_id must be 24 hexadecimal digits")
    return UsageRow(iccid, day, int(mbs * BYTES_PER_MB), device_id)


USAGE_COLUMNS = ("iccid", "date", "mbs_used")


def parse_usage_csv(text: str) -> list[UsageRow]:
    """
    An operator's usage file: CSV with a header naming at least ``iccid``, ``date`` and ``mbs_used``
    (``device_id`` optional, other columns ignored). Any bad row refuses the whole file, naming its line.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in USAGE_COLUMNS if name not in header]
    if missing:
        raise InvalidInput(
            f"The CSV header must name {', '.join(USAGE_COLUMNS)}; missing: {', '.join(missing)}"
        )
    reader.fieldnames = header
    rows = []
    for record in reader:
        if None in record:
            raise InvalidInput(f"line {reader.line_num}: more values than the header has columns")
        fields = {key: value or "" for key, value in record.items() if key is not None}
        rows.append(parse_usage_row(fields, reader.line_num))
    return rows
