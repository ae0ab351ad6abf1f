"""
SQL repository of a product's customers (issue 11 section 6): the customer rows, and which product devices
each claimed (``product_devices.customer_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.accounts import Customer
from devicecloud.domain.devices import Device
from devicecloud.errors import Conflict
from devicecloud.store.sql.devices import device_from_row, select_devices
from devicecloud.store.tables import customers, product_devices


def _customer(row: Row[Any]) -> Customer:
    return Customer(
        id=row.id,
        product_id=row.product_id,
        username=row.username,
        password_hash=row.password_hash,
        created_at=row.created_at,
    )


class SqlCustomers:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, product_id: int, username: str, password_hash: str | None, now: datetime) -> Customer:
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    insert(customers)
                    .values(
                        product_id=product_id, username=username, password_hash=password_hash, created_at=now
                    )
                    .returning(*customers.c)
                )
        except IntegrityError as exc:
            raise Conflict("Customer already exists", code="customer_exists") from exc
        return _customer(result.one())

    async def get(self, customer_id: int) -> Customer | None:
        row = (await self._conn.execute(select(customers).where(customers.c.id == customer_id))).first()
        return _customer(row) if row else None

    async def get_by_username(self, product_id: int, username: str) -> Customer | None:
        stmt = select(customers).where(customers.c.product_id == product_id, customers.c.username == username)
        row = (await self._conn.execute(stmt)).first()
        return _customer(row) if row else None

    async def page(self, product_id: int, offset: int, limit: int) -> tuple[list[Customer], int]:
        total = await self._conn.scalar(
            select(func.count()).select_from(customers).where(customers.c.product_id == product_id)
        )
        stmt = (
            select(customers)
            .where(customers.c.product_id == product_id)
            .order_by(customers.c.id)
            .offset(offset)
            .limit(limit)
        )
        return [_customer(row) for row in await self._conn.execute(stmt)], int(total or 0)

    async def device_ids(self, customer_ids: Sequence[int]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {customer_id: [] for customer_id in customer_ids}
        if not customer_ids:
            return found
        stmt = (
            select(product_devices.c.customer_id, product_devices.c.device_id)
            .where(product_devices.c.customer_id.in_(list(customer_ids)))
            .order_by(product_devices.c.device_id)
        )
        for row in await self._conn.execute(stmt):
            found[int(row.customer_id)].append(str(row.device_id))
        return found

    async def devices(self, customer_id: int) -> Sequence[Device]:
        stmt = select_devices().where(product_devices.c.customer_id == customer_id)
        return [device_from_row(row) for row in await self._conn.execute(stmt)]

    async def set_password(self, customer_id: int, password_hash: str) -> None:
        await self._conn.execute(
            update(customers).where(customers.c.id == customer_id).values(password_hash=password_hash)
        )

    async def delete(self, customer_id: int) -> None:
        # Said outright rather than left to ON DELETE SET NULL: the devices become nobody's either way.
        await self._conn.execute(
            update(product_devices)
            .where(product_devices.c.customer_id == customer_id)
            .values(customer_id=None)
        )
        await self._conn.execute(delete(customers).where(customers.c.id == customer_id))

    async def give_device(self, device_id: str, customer_id: int | None) -> None:
        await self._conn.execute(
            update(product_devices)
            .where(product_devices.c.device_id == device_id)
            .values(customer_id=customer_id)
        )
