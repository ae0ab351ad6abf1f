"""
SQL repositories of devices: device records, keys waiting for approval, and claim codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    String,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect, Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.devices import (
    ClaimCode,
    Device,
    DeviceKeyRecord,
    DevicePresence,
    HeardRow,
    PendingKey,
    ProductMembership,
)
from devicecloud.errors import Conflict, NotFound
from devicecloud.store.tables import (
    claim_codes,
    devices,
    json_value,
    nodes,
    pending_device_keys,
    product_devices,
    product_members,
    users,
)

# A device's product membership (one primary-key probe): access to a product device is the product's.
_MEMBERSHIP_COLUMNS = (
    product_devices.c.product_id.label("pd_product_id"),
    product_devices.c.firmware_version.label("pd_firmware_version"),
    product_devices.c.development.label("pd_development"),
    product_devices.c.desired_firmware_version.label("pd_desired_firmware_version"),
    product_devices.c.quarantined.label("pd_quarantined"),
    product_devices.c.denied.label("pd_denied"),
    product_devices.c.customer_id.label("pd_customer_id"),
)
_MEMBERSHIP_NAMES = tuple(column.name for column in _MEMBERSHIP_COLUMNS)
_DEVICE_COLUMNS = (*devices.c, users.c.username.label("owner_username"), *_MEMBERSHIP_COLUMNS)


def _membership(row: Mapping[str, Any]) -> ProductMembership | None:
    if row.get("pd_product_id") is None:
        return None
    return ProductMembership(
        product_id=row["pd_product_id"],
        firmware_version=row["pd_firmware_version"],
        development=bool(row["pd_development"]),
        desired_firmware_version=row["pd_desired_firmware_version"],
        quarantined=bool(row["pd_quarantined"]),
        denied=bool(row["pd_denied"]),
        customer_id=row["pd_customer_id"],
    )


def device_from_row(row: Row[Any]) -> Device:
    # By position: a Row's mapping view costs more than the whole zip (lists convert 25 of these a page).
    return device_from_values(dict(zip(DEVICE_COLUMN_NAMES, row, strict=False)))


def device_from_values(row: Mapping[str, Any]) -> Device:
    """
    A device from column values by name (a Row's mapping, or the hot path's converted values).
    """
    describe = dict(row["describe"] or {})
    return Device(
        id=row["id"],
        owner_id=row["owner_id"],
        owner_username=row["owner_username"],
        name=row["name"],
        platform_id=row["platform_id"],
        product_id=row["product_id"],
        public_key_der=row["public_key"],
        last_ip_address=row["last_ip_address"],
        last_heard=row["last_heard"],
        last_handshake_at=row["last_handshake_at"],
        online=bool(row["online"]),
        functions=tuple(describe.get("functions") or ()),
        variables=dict(describe.get("variables") or {}),
        system_firmware_version=row["system_firmware_version"],
        notes=row["notes"],
        serial_number=row["serial_number"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        describe=describe,
        node_id=row["node_id"],
        session_epoch=row["session_epoch"],
        membership=_membership(row),
    )


def _device_source() -> Any:
    return devices.outerjoin(users, devices.c.owner_id == users.c.id).outerjoin(
        product_devices, product_devices.c.device_id == devices.c.id
    )


def _select_devices() -> Any:
    return select(*_DEVICE_COLUMNS).select_from(_device_source())


def select_devices() -> Any:
    """
    Device records with their owner's username and their product membership (add a where clause).
    """
    return _select_devices()


# Built once, for the hot path of every device request (store/sql/token_lookup.py).
FIND_DEVICE = _select_devices().where(devices.c.id == bindparam("device_id"))
DEVICE_COLUMN_NAMES = tuple(column.name for column in _DEVICE_COLUMNS)
# Built once: the key check of a connecting device (ADR 0010), only the columns a connection uses: a
# quarter of the whole record's, no owner join, no dates to convert (about 9 µs less per handshake).
FIND_DEVICE_KEY = (
    select(
        devices.c.owner_id,
        devices.c.name,
        devices.c.public_key,
        devices.c.describe,
        devices.c.system_firmware_version,
        devices.c.session_epoch,
        *_MEMBERSHIP_COLUMNS,
    )
    .select_from(devices.outerjoin(product_devices, product_devices.c.device_id == devices.c.id))
    .where(devices.c.id == bindparam("device_id"))
)


def device_key_from_values(values: Sequence[Any]) -> DeviceKeyRecord:
    """
    A `FIND_DEVICE_KEY` row as the record a connection needs; its describe as the driver gives it (JSON text
    from SQLite's and asyncpg's own reads, a dict through SQLAlchemy).
    """
    owner_id, name, public_key, describe, firmware, epoch, *membership = values
    return DeviceKeyRecord(
        owner_id=owner_id,
        named=name is not None,
        public_key_der=public_key,
        describe=dict(json_value(describe) or {}),
        system_firmware_version=firmware,
        session_epoch=epoch,
        membership=_membership(dict(zip(_MEMBERSHIP_NAMES, membership, strict=True))),
    )


# Built once: a user's device request — the device and the user's role in its product, if it is in one and
# the user is in its team (one more primary-key probe in the same statement), so a team member's request on
# the device routes costs the one read an owner's does.
FIND_DEVICE_FOR_USER = (
    select(*_DEVICE_COLUMNS, product_members.c.role.label("member_role"))
    .select_from(
        _device_source().outerjoin(
            product_members,
            and_(
                product_members.c.product_id == product_devices.c.product_id,
                product_members.c.user_id == bindparam("user_id"),
            ),
        )
    )
    .where(devices.c.id == bindparam("device_id"))
)

# Built once: the write-behind of device presence, run with one parameter set per device (executemany).
# Fenced: it writes only when its link, (epoch, node), is not older than the record's latest, so a link that
# ended after its device moved to another node never marks it offline there (ties: the node ids decide).
_EPOCH = bindparam("p_epoch", type_=BigInteger())
_NODE = bindparam("p_node", type_=String())
WRITE_PRESENCE = (
    update(devices)
    .where(
        devices.c.id == bindparam("p_id"),
        or_(
            devices.c.session_epoch.is_(None),
            devices.c.session_epoch < _EPOCH,
            and_(devices.c.session_epoch == _EPOCH, func.coalesce(devices.c.node_id, "") <= _NODE),
        ),
    )
    .values(
        node_id=func.nullif(_NODE, ""),
        session_epoch=_EPOCH,
        online=bindparam("p_online"),
        last_ip_address=bindparam("p_ip"),
        last_handshake_at=bindparam("p_handshake"),
        last_heard=bindparam("p_heard"),
        updated_at=bindparam("p_updated"),
        platform_id=func.coalesce(
            bindparam("p_platform", type_=devices.c.platform_id.type), devices.c.platform_id
        ),
        product_id=func.coalesce(
            bindparam("p_product", type_=devices.c.product_id.type), devices.c.product_id
        ),
    )
)


# The write-behind of keep-alives: last_heard alone, fenced like WRITE_PRESENCE, compiled once per dialect for
# the driver.
_HEARD_EPOCH = bindparam("h_epoch", type_=BigInteger())
_HEARD_NODE = bindparam("h_node", type_=String())
WRITE_HEARD = (
    update(devices)
    .where(
        devices.c.id == bindparam("h_id"),
        or_(
            devices.c.session_epoch.is_(None),
            devices.c.session_epoch < _HEARD_EPOCH,
            and_(
                devices.c.session_epoch == _HEARD_EPOCH,
                func.coalesce(devices.c.node_id, literal_column("''")) <= _HEARD_NODE,  # no bound literal
            ),
        ),
    )
    .values(last_heard=bindparam("h_heard", type_=devices.c.last_heard.type))
)
_HEARD_NAMES = ("h_heard", "h_id", "h_epoch", "h_node")  # the order write_heard builds each row in
_heard_statements: dict[str, tuple[str, tuple[int, ...], Callable[[datetime], Any]]] = {}


def _heard_statement(dialect: Dialect) -> tuple[str, tuple[int, ...], Callable[[datetime], Any]]:
    """
    WRITE_HEARD for ``dialect``: the SQL text, where each positional parameter comes from in a row built in
    `_HEARD_NAMES` order (a parameter may appear twice), and last_heard's bind processor (UTC check, then the
    dialect's own conversion).
    """
    found = _heard_statements.get(dialect.name)
    if found is None:
        compiled = WRITE_HEARD.compile(dialect=dialect)
        positions = compiled.positiontup
        if not positions or set(positions) != set(_HEARD_NAMES):
            msg = f"unexpected parameters for {dialect.name}: {positions}"
            raise RuntimeError(msg)
        convert = devices.c.last_heard.type.dialect_impl(dialect).bind_processor(dialect)
        order = tuple(_HEARD_NAMES.index(name) for name in positions)
        found = (compiled.string, order, convert if convert is not None else (lambda at: at))
        _heard_statements[dialect.name] = found
    return found


# Built once: the write-behind of Describes (executemany); no system firmware version keeps the stored one.
WRITE_DESCRIBE = (
    update(devices)
    .where(devices.c.id == bindparam("d_id"))
    .values(
        describe=bindparam("d_describe", type_=devices.c.describe.type),
        system_firmware_version=func.coalesce(
            bindparam("d_firmware", type_=devices.c.system_firmware_version.type),
            devices.c.system_firmware_version,
        ),
        updated_at=bindparam("d_updated", type_=devices.c.updated_at.type),
    )
)
_IN_CLAUSE_CHUNK = 500  # ids per IN (...) list: far below every dialect's limit on bound parameters


class SqlDevices:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, device_id: str) -> Device | None:
        row = (await self._conn.execute(_select_devices().where(devices.c.id == device_id))).first()
        return device_from_row(row) if row else None

    async def get_by_name(self, owner_id: int, name: str) -> Device | None:
        stmt = _select_devices().where(devices.c.owner_id == owner_id, devices.c.name == name)
        row = (await self._conn.execute(stmt)).first()
        return device_from_row(row) if row else None

    async def list_for_owner(self, owner_id: int) -> Sequence[Device]:
        stmt = _select_devices().where(devices.c.owner_id == owner_id)
        stmt = stmt.order_by(devices.c.last_handshake_at.desc().nulls_last(), devices.c.id)
        return [device_from_row(row) for row in await self._conn.execute(stmt)]

    async def name_taken(self, owner_id: int, name: str, *, except_id: str | None = None) -> bool:
        stmt = select(devices.c.id).where(devices.c.owner_id == owner_id, devices.c.name == name)
        if except_id is not None:
            stmt = stmt.where(devices.c.id != except_id)
        return (await self._conn.execute(stmt)).first() is not None

    async def add(self, device_id: str, *, now: datetime, **values: Any) -> Device:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    insert(devices).values(
                        id=device_id, online=False, describe={}, created_at=now, updated_at=now, **values
                    )
                )
        except IntegrityError as exc:
            raise Conflict("That device already exists") from exc
        added = await self.get(device_id)
        if added is None:  # pragma: no cover - inserted just above
            raise NotFound("Device not found")
        return added

    async def update(self, device_id: str, **changes: Any) -> Device:
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    update(devices).where(devices.c.id == device_id).values(**changes)
                )
        except IntegrityError as exc:
            raise Conflict("That name is already used by another of your devices", code="name_taken") from exc
        if not result.rowcount:
            raise NotFound("Device not found")
        updated = await self.get(device_id)
        if updated is None:  # pragma: no cover - updated just above
            raise NotFound("Device not found")
        return updated

    async def set_offline_unless_held(
        self, now: datetime, *, live_since: datetime, stale: str | None
    ) -> list[str]:
        live = select(nodes.c.id).where(nodes.c.seen_at >= live_since)
        if stale is not None:
            live = live.where(nodes.c.id != stale)
        result = await self._conn.execute(
            update(devices)
            .where(
                devices.c.online.is_(True), or_(devices.c.node_id.is_(None), devices.c.node_id.not_in(live))
            )
            .values(online=False, updated_at=now)
            .returning(devices.c.id)
        )
        return [str(device_id) for device_id in result.scalars()]

    async def write_presence(self, presence: Sequence[DevicePresence]) -> None:
        if not presence:
            return
        await self._conn.execute(
            WRITE_PRESENCE,
            [
                {
                    "p_id": p.device_id,
                    "p_online": p.online,
                    "p_ip": p.last_ip_address,
                    "p_handshake": p.last_handshake_at,
                    "p_heard": p.last_heard,
                    "p_updated": p.updated_at,
                    "p_platform": p.platform_id,
                    "p_product": p.product_id,
                    "p_node": p.node_id or "",
                    "p_epoch": p.session_epoch,
                }
                for p in presence
            ],
        )

    async def write_heard(self, heard: Sequence[HeardRow]) -> None:
        if not heard:
            return
        sql, order, process = _heard_statement(self._conn.dialect)
        # At the driver: SQLAlchemy builds a parameter dict per row through every bind processor, which
        # cost more than the database's work for thousands of keep-alives a second (bench/, issue 16).
        rows = [(process(r.last_heard), r.device_id, r.session_epoch, r.node_id or "") for r in heard]
        await self._conn.exec_driver_sql(sql, [tuple(row[i] for i in order) for row in rows])

    async def describes(self, device_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(device_ids), _IN_CLAUSE_CHUNK):
            chunk = device_ids[start : start + _IN_CLAUSE_CHUNK]
            stmt = select(devices.c.id, devices.c.describe).where(devices.c.id.in_(chunk))
            found.update((row.id, dict(row.describe or {})) for row in await self._conn.execute(stmt))
        return found

    async def write_describes(self, rows: Sequence[tuple[str, dict[str, Any], str | None, datetime]]) -> None:
        if not rows:
            return
        await self._conn.execute(
            WRITE_DESCRIBE,
            [
                {"d_id": device_id, "d_describe": describe, "d_firmware": firmware, "d_updated": at}
                for device_id, describe, firmware, at in rows
            ],
        )

    async def name_if_unnamed(self, device_id: str, name: str, *, now: datetime) -> bool:
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    update(devices)
                    .where(devices.c.id == device_id, devices.c.name.is_(None))
                    .values(name=name, updated_at=now)
                )
        except IntegrityError as exc:
            raise Conflict("That name is already used by another of your devices", code="name_taken") from exc
        return bool(result.rowcount)

    async def delete(self, device_id: str) -> None:
        await self._conn.execute(delete(devices).where(devices.c.id == device_id))


def _pending(row: Row[Any]) -> PendingKey:
    return PendingKey(
        device_id=row.device_id,
        public_key_der=row.public_key,
        ip_address=row.ip_address,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        attempts=row.attempts,
    )


class SqlPendingKeys:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def record(
        self, device_id: str, public_key_der: bytes, ip_address: str | None, now: datetime
    ) -> None:
        """
        Remember an offered key; a new key from the same id replaces the old one (latest offer wins).
        """
        existing = await self.get(device_id)
        if existing is None:
            await self._conn.execute(
                insert(pending_device_keys).values(
                    device_id=device_id,
                    public_key=public_key_der,
                    ip_address=ip_address,
                    first_seen=now,
                    last_seen=now,
                    attempts=1,
                )
            )
            return
        await self._conn.execute(
            update(pending_device_keys)
            .where(pending_device_keys.c.device_id == device_id)
            .values(
                public_key=public_key_der,
                ip_address=ip_address,
                last_seen=now,
                attempts=existing.attempts + 1,
            )
        )

    async def get(self, device_id: str) -> PendingKey | None:
        stmt = select(pending_device_keys).where(pending_device_keys.c.device_id == device_id)
        row = (await self._conn.execute(stmt)).first()
        return _pending(row) if row else None

    async def list(self) -> Sequence[PendingKey]:
        stmt = select(pending_device_keys).order_by(pending_device_keys.c.last_seen.desc())
        return [_pending(row) for row in await self._conn.execute(stmt)]

    async def delete(self, device_id: str) -> None:
        await self._conn.execute(
            delete(pending_device_keys).where(pending_device_keys.c.device_id == device_id)
        )


class SqlClaimCodes:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(
        self, code_hash: str, user_id: int | None, expires_at: datetime, *, customer_id: int | None = None
    ) -> None:
        await self._conn.execute(
            insert(claim_codes).values(
                code_hash=code_hash, user_id=user_id, customer_id=customer_id, expires_at=expires_at
            )
        )

    async def take(self, code_hash: str) -> ClaimCode | None:
        """
        Use up a claim code: returns it once, then None.
        """
        row = (
            await self._conn.execute(select(claim_codes).where(claim_codes.c.code_hash == code_hash))
        ).first()
        if row is None:
            return None
        result = await self._conn.execute(delete(claim_codes).where(claim_codes.c.code_hash == code_hash))
        if not result.rowcount:
            return None
        return ClaimCode(user_id=row.user_id, customer_id=row.customer_id, expires_at=row.expires_at)
