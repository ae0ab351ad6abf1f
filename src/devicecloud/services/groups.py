"""
Device groups of a product (catalogue §15): create, list, read, edit, delete, and the impact preview of
a firmware release locked to groups.

Rules kept here:
- every operation goes through `product_access.access_product` with its catalogue scope (decision 0016);
- a name is 1-64 lower-case letters, digits, ``-`` or ``_``, unique in its product; a colour is ``#rrggbb``
  (one from a fixed palette when none is given); deleting a group takes it off its devices;
- the impact preview counts the product's devices that a release of a version to the given groups (or as
  the product default) would update, by the version they run: the release precedence of
  `domain.product_firmware.target_firmware` (development → locked → group → default) applied to the
  product's current releases with this one changed, so locked and development devices, and devices a
  higher group release keeps, are not counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from devicecloud.domain.product_firmware import Release, release_impact
from devicecloud.domain.products import FirmwareImpact
from devicecloud.errors import InvalidInput, NotFound
from devicecloud.services.product_access import access_product

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.products import DeviceGroup
    from devicecloud.store.interfaces import Store, UnitOfWork

GROUP_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_DESCRIPTION = 1024
MAX_GROUPS_PER_PRODUCT = 1000
PALETTE = ("#e74c3c", "#3498db", "#2ecc71", "#9b59b6", "#f1c40f", "#e67e22", "#1abc9c", "#34495e")
IMPACT_ACTION = "edit_groups_for_firmware"


def check_group_name(value: Any) -> str:
    if not isinstance(value, str) or not GROUP_NAME.match(value):
        raise InvalidInput("name must be 1-64 lower-case letters, digits, dashes or underscores")
    return value


def _check_color(value: Any) -> str:
    if not isinstance(value, str) or not COLOR.match(value):
        raise InvalidInput("color must be a hex colour like #e74c3c")
    return value.lower()


def _check_description(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return value


def _group_not_found(name: str) -> NotFound:
    return NotFound(f"Group {name} not found", code="Not Found")


def _flag(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    raise InvalidInput(f"{name} must be true or false")


class GroupService:
    """
    A product's device groups.
    """

    def __init__(self, *, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def list_groups(self, principal: AnyPrincipal, ref: str, name: Any = None) -> Sequence[DeviceGroup]:
        if name is not None and not isinstance(name, str):
            raise InvalidInput("name must be text")
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "groups:list", "group")).product
            return await tx.groups.list_for_product(product.id, name or None)

    async def get(self, principal: AnyPrincipal, ref: str, name: str) -> DeviceGroup:
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "groups:get", "group")).product
            return await _group(tx, product.id, name)

    async def create(
        self, principal: AnyPrincipal, ref: str, *, name: Any, color: Any = None, description: Any = None
    ) -> DeviceGroup:
        checked = check_group_name(name)
        chosen_color = _check_color(color) if color is not None else None
        text = _check_description(description)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "groups:create", "group")).product
            count = await tx.groups.count(product.id)
            if count >= MAX_GROUPS_PER_PRODUCT:
                raise InvalidInput(f"A product has at most {MAX_GROUPS_PER_PRODUCT} groups")
            return await tx.groups.add(
                product.id,
                name=checked,
                description=text,
                color=chosen_color or PALETTE[count % len(PALETTE)],
                now=self._clock.now(),
            )

    async def update(
        self,
        principal: AnyPrincipal,
        ref: str,
        name: str,
        *,
        new_name: Any = None,
        color: Any = None,
        description: Any = ...,
    ) -> DeviceGroup:
        changes: dict[str, Any] = {}
        if new_name is not None:
            changes["name"] = check_group_name(new_name)
        if color is not None:
            changes["color"] = _check_color(color)
        if description is not ...:
            changes["description"] = _check_description(description)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "groups:update", "group")).product
            group = await _group(tx, product.id, name)
            if not changes:
                raise InvalidInput("Nothing to update: give name, color or description")
            return await tx.groups.update(group, **changes)

    async def delete(self, principal: AnyPrincipal, ref: str, name: str) -> None:
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "groups:remove", "group")).product
            await tx.groups.delete(await _group(tx, product.id, name))

    async def impact(
        self,
        principal: AnyPrincipal,
        ref: str,
        *,
        action: Any,
        firmware_version: Any,
        groups: Any = None,
        product_default: Any = None,
    ) -> FirmwareImpact:
        """
        How many devices a release of ``firmware_version`` to ``groups`` (or as the product default) updates.
        """
        if action != IMPACT_ACTION:
            raise InvalidInput(f"action must be {IMPACT_ACTION}")
        version = _version(firmware_version)
        everyone = _flag(product_default, "product_default")
        names = _names(groups)
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "groups.impact:get", "group")).product
            ids = [(await _group(tx, product.id, n)).id for n in names]
            fleet = await tx.product_firmware.fleet(product.id)
            releases = await tx.product_firmware.releases(product.id)
        rows = release_impact(fleet, releases, Release(version, everyone, frozenset(ids)))
        return FirmwareImpact(total=sum(n for _, n in rows), by_version=rows)


async def _group(tx: UnitOfWork, product_id: int, name: str) -> DeviceGroup:
    group = await tx.groups.get(product_id, name) if GROUP_NAME.match(name) else None
    if group is None:
        raise _group_not_found(name)
    return group


def _version(value: Any) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
        raise InvalidInput("firmware_version must be a positive whole number")
    return int(value)


def _names(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise InvalidInput("groups must be a comma-separated list of group names")
    return list(dict.fromkeys(n.strip() for n in value if n.strip()))
