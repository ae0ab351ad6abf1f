"""
Devices as the services see them, and the plain values the gateway reports about live links.

Nothing here knows the wire protocol: the gateway translates protocol events into these values, so services
stay independent of `protocol` (an import contract).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DEVICE_ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")

# Variable type names as the Particle API shows them in `variables` ({"temp": "double"}).
VARIABLE_TYPES = ("bool", "int32", "double", "string")

PLATFORM_NAMES = {
    0: "core",
    6: "photon",
    8: "p1",
    10: "electron",
    12: "argon",
    13: "boron",
    14: "xenon",
    22: "asom",
    23: "bsom",
    25: "b5som",
    26: "tracker",
    28: "trackerm",
    32: "p2",
    35: "esomx",
}
CELLULAR_PLATFORMS = frozenset({10, 13, 23, 25, 26, 28, 35})
WIFI_PLATFORMS = frozenset({0, 6, 8, 12, 22, 32})  # Core, Photon, P1, Argon, A SoM, P2 (Xenon has neither)


def normalise_device_id(value: str) -> str | None:
    """
    A device id in canonical form (24 lowercase hex), or None when ``value`` is not one.
    """
    candidate = value.strip().lower()
    return candidate if DEVICE_ID_PATTERN.match(candidate) else None


@dataclass(frozen=True, slots=True)
class DeviceHelloInfo:
    """
    What a device says about itself when it connects (from its Hello message).
    """

    platform_id: int | None
    product_id: int | None
    product_firmware_version: int | None
    flags: int = 0


@dataclass(frozen=True, slots=True)
class DeviceDescription:
    """
    A device's describe: its cloud functions and variables, plus system info when it sent them.
    """

    functions: tuple[str, ...] | None = None
    variables: dict[str, str] | None = None
    system_firmware_version: str | None = None
    modules: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class ProductMembership:
    """
    A device's row in a product (issue 11 section 3): the product-only fields.

    ``quarantined``: it joined by naming the product in its Hello and waits for approval (visible, not
    controllable); ``denied``: refused at connect until removed from the product or approved.
    """

    product_id: int
    firmware_version: int | None = None
    development: bool = False
    desired_firmware_version: int | None = None
    quarantined: bool = False
    denied: bool = False
    customer_id: int | None = None  # the product's customer that claimed it (issue 11 section 6)


@dataclass(frozen=True, slots=True)
class DeviceKeyRecord:
    """
    What a device's connection needs of its record, as the key check's one read finds it (ADR 0010): the
    key, the owner its status goes to, whether it has a name, what the store holds of its Describe, the
    epoch of its latest link and its product membership.
    """

    owner_id: int | None
    named: bool
    public_key_der: bytes | None
    describe: dict[str, Any]
    system_firmware_version: str | None
    session_epoch: int | None
    membership: ProductMembership | None


@dataclass(frozen=True, slots=True)
class Device:
    """
    A device record: identity, ownership, what it last reported and when it was last seen.
    """

    id: str
    owner_id: int | None
    owner_username: str | None
    name: str | None
    platform_id: int | None
    product_id: int | None
    public_key_der: bytes | None
    last_ip_address: str | None
    last_heard: datetime | None
    last_handshake_at: datetime | None
    online: bool
    functions: tuple[str, ...]
    variables: dict[str, str]
    system_firmware_version: str | None
    notes: str | None
    serial_number: str | None
    created_at: datetime
    updated_at: datetime
    describe: dict[str, Any] = field(default_factory=dict)
    # The node holding its latest link and that link's epoch (see DevicePresence).
    node_id: str | None = None
    session_epoch: int | None = None
    membership: ProductMembership | None = None  # its product, when it is a product device

    @property
    def cellular(self) -> bool:
        return self.platform_id in CELLULAR_PLATFORMS


@dataclass(frozen=True, slots=True)
class DevicePresence:
    """
    What a live link says about a device's presence, as written behind to its record.

    ``platform_id`` and ``product_id`` are ``None`` when the device did not say (the record keeps its value).
    ``node_id`` and ``session_epoch`` name the link: the write is fenced on them, so a link older than the
    record's latest (the device moved to another node meanwhile) writes nothing.
    """

    device_id: str
    online: bool
    last_ip_address: str | None
    last_handshake_at: datetime | None
    last_heard: datetime | None
    platform_id: int | None
    product_id: int | None
    updated_at: datetime
    node_id: str | None = None
    session_epoch: int = 0


@dataclass(frozen=True, slots=True)
class HeardRow:
    """
    A keep-alive written behind: ``last_heard`` alone, fenced on its link like `DevicePresence`.
    """

    device_id: str
    last_heard: datetime
    session_epoch: int
    node_id: str | None


@dataclass(frozen=True, slots=True)
class ClaimCode:
    """
    A claim code just used up: for a user (``user_id``) or for a product's customer (``customer_id``).
    """

    user_id: int | None
    customer_id: int | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PendingKey:
    """
    A key offered by an unknown device, waiting for an operator's approval.
    """

    device_id: str
    public_key_der: bytes
    ip_address: str | None
    first_seen: datetime
    last_seen: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class VariableReading:
    """
    A variable's value as read from a device, with the type it was decoded as.
    """

    name: str
    value: bool | int | float | str | None
    type: str
