"""
SQL repository of product firmware (decision 0025): the versions, their releases (product default, groups)
and what the release precedence reads of a product's devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.product_firmware import FleetDevice, ProductFirmware, Release
from devicecloud.errors import Conflict
from devicecloud.store.tables import (
    device_group_members,
    device_groups,
    product_devices,
    product_firmware,
    product_firmware_groups,
    users,
)

__all__ = ["SqlProductFirmware"]

_COLUMNS = (*product_firmware.c, users.c.username.label("uploader"))


def _firmware(row: Row[Any], groups: Sequence[tuple[int, str]]) -> ProductFirmware:
    return ProductFirmware(
        id=row.id,
        product_id=row.product_id,
        version=row.version,
        title=row.title,
        description=row.description,
        name=row.name,
        size=row.size,
        sha256=row.sha256,
        platform_id=row.platform_id,
        binary_id=row.binary_id,
        uploaded_by=row.uploader,
        uploaded_at=row.uploaded_at,
        updated_at=row.updated_at,
        product_default=row.product_default,
        intelligent=row.intelligent,
        mandatory=row.mandatory,
        released_at=row.released_at,
        groups=tuple(name for _, name in groups),
        group_ids=tuple(group_id for group_id, _ in groups),
    )


class SqlProductFirmware:
    """
    `store.interfaces.ProductFirmwareRepository` on SQL.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    def _select(self) -> Any:
        return select(*_COLUMNS).select_from(
            product_firmware.outerjoin(users, users.c.id == product_firmware.c.uploaded_by)
        )

    async def _groups(self, firmware_ids: Sequence[int]) -> dict[int, list[tuple[int, str]]]:
        found: dict[int, list[tuple[int, str]]] = {i: [] for i in firmware_ids}
        if not firmware_ids:
            return found
        stmt = (
            select(product_firmware_groups.c.firmware_id, device_groups.c.id, device_groups.c.name)
            .select_from(
                product_firmware_groups.join(
                    device_groups, device_groups.c.id == product_firmware_groups.c.group_id
                )
            )
            .where(product_firmware_groups.c.firmware_id.in_(list(firmware_ids)))
            .order_by(device_groups.c.name)
        )
        for row in await self._conn.execute(stmt):
            found[row.firmware_id].append((row.id, row.name))
        return found

    async def list_for_product(self, product_id: int) -> list[ProductFirmware]:
        stmt = self._select().where(product_firmware.c.product_id == product_id)
        rows = list(await self._conn.execute(stmt.order_by(product_firmware.c.version.desc())))
        groups = await self._groups([row.id for row in rows])
        return [_firmware(row, groups[row.id]) for row in rows]

    async def get(self, product_id: int, version: int) -> ProductFirmware | None:
        stmt = self._select().where(
            and_(product_firmware.c.product_id == product_id, product_firmware.c.version == version)
        )
        row = (await self._conn.execute(stmt)).first()
        if row is None:
            return None
        return _firmware(row, (await self._groups([row.id]))[row.id])

    async def add(self, values: dict[str, Any]) -> None:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(insert(product_firmware).values(**values))
        except IntegrityError as exc:
            raise Conflict(
                f"Version {values['version']} of this product's firmware already exists", code="Conflict"
            ) from exc

    async def update(self, firmware_id: int, **changes: Any) -> None:
        await self._conn.execute(
            update(product_firmware).where(product_firmware.c.id == firmware_id).values(**changes)
        )

    async def delete(self, firmware_id: int) -> None:
        await self._conn.execute(delete(product_firmware).where(product_firmware.c.id == firmware_id))

    async def release(
        self,
        firmware: ProductFirmware,
        *,
        product_default: bool | None,
        group_ids: Sequence[int] | None,
        intelligent: bool,
        now: datetime,
    ) -> None:
        """
        Release ``firmware``: as the product default (taken from every other version) or not, to exactly
        ``group_ids`` (None: its groups unchanged); marks it released when it now reaches any device.
        """
        if product_default:
            await self._conn.execute(
                update(product_firmware)
                .where(
                    and_(
                        product_firmware.c.product_id == firmware.product_id,
                        product_firmware.c.id != firmware.id,
                        product_firmware.c.product_default.is_(True),
                    )
                )
                .values(product_default=False, updated_at=now)
            )
        if group_ids is not None:
            await self._conn.execute(
                delete(product_firmware_groups).where(product_firmware_groups.c.firmware_id == firmware.id)
            )
            if group_ids:
                await self._conn.execute(
                    insert(product_firmware_groups),
                    [{"firmware_id": firmware.id, "group_id": g} for g in group_ids],
                )
        default = firmware.product_default if product_default is None else product_default
        reaches = default or bool(firmware.group_ids if group_ids is None else group_ids)
        changes: dict[str, Any] = {"product_default": default, "intelligent": intelligent, "updated_at": now}
        if reaches and firmware.released_at is None:
            changes["released_at"] = now
        await self.update(firmware.id, **changes)

    async def releases(self, product_id: int) -> list[Release]:
        """
        Every version of the product that is released (as the default or to a group).
        """
        stmt = (
            select(
                product_firmware.c.version,
                product_firmware.c.product_default,
                product_firmware_groups.c.group_id,
            )
            .select_from(
                product_firmware.outerjoin(
                    product_firmware_groups, product_firmware_groups.c.firmware_id == product_firmware.c.id
                )
            )
            .where(product_firmware.c.product_id == product_id)
        )
        found: dict[int, tuple[bool, set[int]]] = {}
        for row in await self._conn.execute(stmt):
            _, groups = found.setdefault(row.version, (bool(row.product_default), set()))
            if row.group_id is not None:
                groups.add(row.group_id)
        return [
            Release(version, default, frozenset(groups))
            for version, (default, groups) in found.items()
            if default or groups
        ]

    async def fleet(self, product_id: int, device_ids: Sequence[str] | None = None) -> list[FleetDevice]:
        """
        What the release precedence reads of the product's devices (all of them, or ``device_ids``);
        quarantined and denied devices are left out: they take no firmware.
        """
        where = and_(
            product_devices.c.product_id == product_id,
            product_devices.c.quarantined.is_(False),
            product_devices.c.denied.is_(False),
        )
        if device_ids is not None:
            where = and_(where, product_devices.c.device_id.in_(list(device_ids)))
        stmt = select(
            product_devices.c.device_id,
            product_devices.c.development,
            product_devices.c.desired_firmware_version,
            product_devices.c.firmware_version,
        ).where(where)
        rows = list(await self._conn.execute(stmt))
        groups: dict[str, set[int]] = {row.device_id: set() for row in rows}
        members = select(device_group_members.c.device_id, device_group_members.c.group_id).where(
            device_group_members.c.device_id.in_(select(product_devices.c.device_id).where(where))
        )
        for row in await self._conn.execute(members):
            groups.setdefault(row.device_id, set()).add(row.group_id)
        return [
            FleetDevice(
                device_id=row.device_id,
                development=bool(row.development),
                desired_firmware_version=row.desired_firmware_version,
                group_ids=frozenset(groups[row.device_id]),
                firmware_version=row.firmware_version,
            )
            for row in rows
        ]

    async def device_counts(self, product_id: int) -> dict[int, int]:
        """
        How many of the product's devices report running each version.
        """
        stmt = (
            select(product_devices.c.firmware_version, func.count().label("n"))
            .where(
                and_(
                    product_devices.c.product_id == product_id,
                    product_devices.c.firmware_version.is_not(None),
                )
            )
            .group_by(product_devices.c.firmware_version)
        )
        return {row.firmware_version: int(row.n) for row in await self._conn.execute(stmt)}
