"""
Products, their team (people with a role, programmatic API users) and their device groups, as the services
see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devicecloud.domain.access import Role


@dataclass(frozen=True, slots=True)
class Product:
    """
    A fleet: devices of one platform, a team, groups. ``owner_username`` names its Owner (the API's
    ``user``).
    """

    id: int
    slug: str
    name: str
    description: str | None
    platform_id: int
    owner_id: int | None
    owner_username: str | None
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def quarantine(self) -> bool:
        return bool(self.settings.get("quarantine", False))


@dataclass(frozen=True, slots=True)
class TeamMember:
    """
    A person in a product's team.
    """

    user_id: int
    username: str
    role: Role


@dataclass(frozen=True, slots=True)
class ApiUser:
    """
    A programmatic team member: a friendly name, scopes, one token at a time, no password.
    """

    id: int
    product_id: int
    username: str
    friendly_name: str
    scopes: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """
    A named subset of a product's devices (catalogue §15). ``fw_version``: the highest product firmware
    version released to it (None: none).
    """

    id: int
    product_id: int
    name: str
    description: str | None
    color: str
    device_count: int = 0
    fw_version: int | None = None


@dataclass(frozen=True, slots=True)
class FirmwareImpact:
    """
    Which devices a firmware release would update, by the version they run (``None``: not reported yet).
    """

    total: int
    by_version: list[tuple[int | None, int]] = field(default_factory=list)
