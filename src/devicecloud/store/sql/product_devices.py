"""
SQL repository of product devices (issue 11 section 3): membership rows, the import's set-based writes, the
filtered and paginated list, group assignment, and the joins a device's Hello makes (written behind).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Integer,
    String,
    Table,
    and_,
    any_,
    bindparam,
    delete,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.devices import Device, ProductMembership
from devicecloud.domain.product_devices import DeviceListQuery, KnownDevice, ProductReport
from devicecloud.store.sql.devices import device_from_row, select_devices
from devicecloud.store.tables import (
    device_group_members,
    device_groups,
    devices,
    product_devices,
    product_members,
    products,
)

_IN_CHUNK = 5000  # ids per IN (...) list: below every dialect's limit on bound parameters (32,766)


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Table) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _contains(column: Any, text: str, *, fold: bool = True) -> Any:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if not fold:
        return column.like(f"%{escaped}%", escape="\\")
    return func.lower(column).like(f"%{escaped.lower()}%", escape="\\")


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _one_of(column: Any, *, postgres: bool) -> Any:
    """
    ``column`` is one of the list bound as ``ids``: on PostgreSQL one array parameter (``= ANY``), so the
    statement's text, and asyncpg's prepared statement, is the same for every length; elsewhere ``IN``.
    """
    if postgres:
        return column == any_(bindparam("ids", type_=postgresql.ARRAY(String())))
    return column.in_(bindparam("ids", expanding=True))


# Built once (a page of a list reads them): keyed by "is PostgreSQL".
_RECORDS = {pg: select_devices().where(_one_of(devices.c.id, postgres=pg)) for pg in (False, True)}


def _groups_column(*, postgres: bool) -> Any:
    """
    The device's groups as a JSON list of [id, name], in one correlated subquery of the records' read: a
    page of a list is then one round trip, not two. PostgreSQL orders them by name as `groups_of` does (its
    collation); SQLite's order is the caller's to make (its BINARY order of names is Python's).
    """
    pair = (func.json_build_array if postgres else func.json_array)(device_groups.c.id, device_groups.c.name)
    listed = (
        func.json_agg(aggregate_order_by(pair, device_groups.c.name))
        if postgres
        else func.json_group_array(pair)
    )
    return type_coerce(
        select(listed)
        .select_from(
            device_group_members.join(device_groups, device_groups.c.id == device_group_members.c.group_id)
        )
        .where(device_group_members.c.device_id == devices.c.id)
        .scalar_subquery(),
        JSON(),
    ).label("group_list")


_RECORDS_WITH_GROUPS = {
    pg: select_devices().add_columns(_groups_column(postgres=pg)).where(_one_of(devices.c.id, postgres=pg))
    for pg in (False, True)
}
_GROUPS_OF = {
    pg: select(device_group_members.c.device_id, device_groups.c.id, device_groups.c.name)
    .join(device_groups, device_groups.c.id == device_group_members.c.group_id)
    .where(_one_of(device_group_members.c.device_id, postgres=pg))
    .order_by(device_groups.c.name)
    for pg in (False, True)
}

_SORT_COLUMNS = {
    "deviceId": product_devices.c.device_id,
    "firmwareVersion": product_devices.c.firmware_version,
    "lastConnection": devices.c.last_handshake_at,
}


class SqlProductDevices:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def known(self, ids: Sequence[str]) -> dict[str, KnownDevice]:
        """
        The ids among ``ids`` that have a device record, with their owner and membership.
        """
        found: dict[str, KnownDevice] = {}
        if not ids:
            return found
        wanted = self._id_rows(ids)
        stmt = select(devices.c.id, devices.c.owner_id, product_devices).select_from(
            wanted.join(devices, devices.c.id == wanted.c.id).outerjoin(
                product_devices, product_devices.c.device_id == devices.c.id
            )
        )
        for row in await self._conn.execute(stmt):
            membership = None
            if row.product_id is not None:
                membership = ProductMembership(
                    product_id=row.product_id,
                    firmware_version=row.firmware_version,
                    development=bool(row.development),
                    desired_firmware_version=row.desired_firmware_version,
                    quarantined=bool(row.quarantined),
                    denied=bool(row.denied),
                )
            found[row.id] = KnownDevice(row.owner_id, membership)
        return found

    async def team_members_among(self, product_id: int, user_ids: Sequence[int]) -> set[int]:
        """
        The users among ``user_ids`` who have a role in the product.
        """
        found: set[int] = set()
        for start in range(0, len(user_ids), _IN_CHUNK):
            stmt = select(product_members.c.user_id).where(
                and_(
                    product_members.c.product_id == product_id,
                    product_members.c.user_id.in_(list(user_ids[start : start + _IN_CHUNK])),
                )
            )
            found.update(row.user_id for row in await self._conn.execute(stmt))
        return found

    async def add(
        self, product_id: int, new_records: Sequence[str], members: Sequence[str], now: datetime
    ) -> None:
        """
        Import: a bare device record for each of ``new_records`` (ids that never connected nor had a key),
        then a membership row for each of ``members``. Two set-based statements (``INSERT … SELECT`` over the
        ids passed as one array), duplicates made meanwhile by another writer ignored.
        """
        at = bindparam("now", value=now, type_=devices.c.created_at.type)
        if new_records:
            source = self._id_rows(new_records)
            rows = select(source.c.id, false(), literal_column("'{}'"), at, at).where(true())
            await self._conn.execute(
                self._ignoring_duplicates(devices).from_select(
                    ["id", "online", "describe", "created_at", "updated_at"], rows
                )
            )
        if members:
            source = self._id_rows(members)
            rows = select(source.c.id, literal(product_id, Integer), at, false(), false(), false()).where(
                true()
            )
            await self._conn.execute(
                self._ignoring_duplicates(product_devices).from_select(
                    ["device_id", "product_id", "created_at", "development", "quarantined", "denied"], rows
                )
            )

    def _id_rows(self, ids: Sequence[str]) -> Any:
        """
        ``ids`` as rows of one column ``id``, from a single bound parameter (an array on PostgreSQL, a JSON
        array through ``json_each`` on SQLite): no statement or parameter per id.
        """
        if self._conn.dialect.name == "postgresql":
            values = bindparam("ids", value=list(ids), type_=postgresql.ARRAY(String))
            return select(func.unnest(values).label("id")).subquery()
        each = func.json_each(bindparam("ids", value=json.dumps(list(ids)), type_=String)).table_valued(
            "value"
        )
        return select(each.c.value.label("id")).subquery()

    def _ignoring_duplicates(self, table: Table) -> Any:
        return _insert_ignoring_duplicates(self._conn, table)

    async def approve(self, product_id: int, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids):
            await self._conn.execute(
                update(product_devices)
                .where(
                    and_(product_devices.c.product_id == product_id, product_devices.c.device_id.in_(chunk))
                )
                .values(quarantined=False, denied=False)
            )

    async def report(self, reports: Sequence[ProductReport], now: datetime) -> None:
        """
        What Hellos said (written behind): join the devices that are members of no product, then record
        the product firmware version of those that are members of the product they named.
        """
        # Only rows whose device and product exist: one report that cannot be written must not fail the
        # flush that carries every device's presence (it would be retried, and fail, forever).
        products_found = await self._existing(products.c.id, sorted({r.product_id for r in reports}))
        devices_found = await self._existing(devices.c.id, sorted({r.device_id for r in reports}))
        reports = [r for r in reports if r.product_id in products_found and r.device_id in devices_found]
        if not reports:
            return
        await self._conn.execute(
            _insert_ignoring_duplicates(self._conn, product_devices),
            [
                {
                    "device_id": r.device_id,
                    "product_id": r.product_id,
                    "firmware_version": r.firmware_version,
                    "created_at": now,
                    "development": False,
                    "quarantined": r.quarantined,
                    "denied": False,
                }
                for r in reports
            ],
        )
        versions = [r for r in reports if r.firmware_version is not None]
        if versions:
            await self._conn.execute(
                update(product_devices)
                .where(
                    and_(
                        product_devices.c.device_id == bindparam("r_device"),
                        product_devices.c.product_id == bindparam("r_product"),
                    )
                )
                .values(firmware_version=bindparam("r_version")),
                [
                    {"r_device": r.device_id, "r_product": r.product_id, "r_version": r.firmware_version}
                    for r in versions
                ],
            )

    async def _existing(self, column: Any, values: Sequence[Any]) -> set[Any]:
        found: set[Any] = set()
        for start in range(0, len(values), _IN_CHUNK):
            stmt = select(column).where(column.in_(list(values[start : start + _IN_CHUNK])))
            found.update(row[0] for row in await self._conn.execute(stmt))
        return found

    async def update(self, device_id: str, **changes: Any) -> None:
        await self._conn.execute(
            update(product_devices).where(product_devices.c.device_id == device_id).values(**changes)
        )

    async def remove(self, device_id: str) -> None:
        await self._conn.execute(delete(product_devices).where(product_devices.c.device_id == device_id))

    async def by_name(self, product_id: int, name: str) -> list[str]:
        stmt = (
            select(devices.c.id)
            .join_from(product_devices, devices, product_devices.c.device_id == devices.c.id)
            .where(and_(product_devices.c.product_id == product_id, devices.c.name == name))
            .limit(2)
        )
        return [row.id for row in await self._conn.execute(stmt)]

    async def ordered(self, product_id: int, query: DeviceListQuery) -> str:
        """
        The ids of the product's devices that match the query's filters, in the list's order, concatenated
        (an id is 24 characters): one statement for every page of the list (the service slices it).

        On PostgreSQL the ids come back as one ``string_agg`` value: 100,000 ids are one 2.4 MB string, not
        100,000 rows to decode. Only the name and serial number filters and the last-connection order read
        the device records; the rest is answered from ``product_devices`` and the group members.
        """
        where: list[Any] = [product_devices.c.product_id == product_id]
        on_records: list[Any] = []
        if query.device_id:  # ids are stored lower-case: no function on the column
            where.append(_contains(product_devices.c.device_id, query.device_id.lower(), fold=False))
        if query.device_name:
            on_records.append(_contains(devices.c.name, query.device_name))
        if query.serial_number:
            on_records.append(_contains(devices.c.serial_number, query.serial_number))
        if query.quarantined is not None:
            where.append(product_devices.c.quarantined == query.quarantined)
        if query.groups is not None:
            in_groups = (
                select(device_group_members.c.device_id)
                .join(device_groups, device_groups.c.id == device_group_members.c.group_id)
                .where(and_(device_groups.c.product_id == product_id, device_groups.c.name.in_(query.groups)))
            )
            where.append(product_devices.c.device_id.in_(in_groups))
        column = _SORT_COLUMNS[query.sort_attr]
        joined = bool(on_records) or column is devices.c.last_handshake_at
        source: Any = product_devices
        if joined:
            source = product_devices.join(devices, devices.c.id == product_devices.c.device_id)
        condition = and_(*where, *on_records)
        direction = column.desc() if query.sort_dir == "desc" else column.asc()
        tie = devices.c.id if joined else product_devices.c.device_id  # the same value: the one an index has
        order = (direction.nulls_last(), tie)
        if self._conn.dialect.name == "postgresql":
            joined_ids = func.string_agg(
                product_devices.c.device_id, postgresql.aggregate_order_by(literal_column("''"), *order)
            )
            value = (
                await self._conn.execute(select(joined_ids).select_from(source).where(condition))
            ).scalar()
            return str(value or "")
        stmt = select(product_devices.c.device_id).select_from(source).where(condition).order_by(*order)
        return "".join(row.device_id for row in await self._conn.execute(stmt))

    async def records(self, ids: Sequence[str]) -> list[Device]:
        """
        The records of ``ids`` that exist, in the order given.
        """
        if not ids:
            return []
        stmt = _RECORDS[self._conn.dialect.name == "postgresql"]
        rows = await self._conn.execute(stmt, {"ids": list(ids)})
        found = {row.id: device_from_row(row) for row in rows}
        return [found[i] for i in ids if i in found]

    async def records_with_groups(self, ids: Sequence[str]) -> list[tuple[Device, list[tuple[int, str]]]]:
        """
        The records of ``ids`` that exist, in the order given, each with its groups as `groups_of` has them.
        """
        if not ids:
            return []
        postgres = self._conn.dialect.name == "postgresql"
        rows = await self._conn.execute(_RECORDS_WITH_GROUPS[postgres], {"ids": list(ids)})
        found: dict[str, tuple[Device, list[tuple[int, str]]]] = {}
        for row in rows:
            groups = [(int(group_id), str(name)) for group_id, name in row.group_list or ()]
            if not postgres:
                groups.sort(key=lambda group: group[1])
            found[row.id] = (device_from_row(row), groups)
        return [found[i] for i in ids if i in found]

    async def groups_of(self, device_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        found: dict[str, list[tuple[int, str]]] = {i: [] for i in device_ids}
        stmt = _GROUPS_OF[self._conn.dialect.name == "postgresql"]
        for chunk in _chunks(device_ids):
            for row in await self._conn.execute(stmt, {"ids": list(chunk)}):
                found[row.device_id].append((row.id, row.name))
        return found

    async def members_among(self, product_id: int, ids: Sequence[str]) -> list[str]:
        """
        The ids among ``ids`` that are devices of the product.
        """
        found: list[str] = []
        for chunk in _chunks(ids):
            stmt = select(product_devices.c.device_id).where(
                and_(product_devices.c.product_id == product_id, product_devices.c.device_id.in_(list(chunk)))
            )
            found.extend(row.device_id for row in await self._conn.execute(stmt))
        return found

    async def add_to_groups(self, device_ids: Sequence[str], group_ids: Sequence[int]) -> None:
        rows = [{"group_id": g, "device_id": d} for d in device_ids for g in group_ids]
        if rows:
            await self._conn.execute(_insert_ignoring_duplicates(self._conn, device_group_members), rows)

    async def remove_from_groups(self, device_ids: Sequence[str], group_ids: Sequence[int]) -> None:
        if not group_ids:
            return
        for chunk in _chunks(device_ids):
            await self._conn.execute(
                delete(device_group_members).where(
                    and_(
                        device_group_members.c.device_id.in_(list(chunk)),
                        or_(*(device_group_members.c.group_id == g for g in group_ids)),
                    )
                )
            )
