"""
SQL repositories of products: the product rows, the team (members with roles, API users) and device groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, and_, any_, bindparam, delete, func, insert, select, type_coerce, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.access import Role
from devicecloud.domain.products import ApiUser, DeviceGroup, Product, TeamMember
from devicecloud.errors import Conflict, NotFound
from devicecloud.store.tables import (
    device_group_members,
    device_groups,
    product_api_users,
    product_devices,
    product_firmware,
    product_firmware_groups,
    product_members,
    products,
    users,
)

_PRODUCT_COLUMNS = (*products.c, users.c.username.label("owner_username"))

# Built once, keyed by "is PostgreSQL" (every GET /v1/products/:p reads its group names): one array
# parameter there, so one prepared statement for any number of products; an expanding IN elsewhere.
_GROUP_NAMES = {
    pg: select(device_groups.c.product_id, device_groups.c.name)
    .where(
        device_groups.c.product_id == any_(bindparam("ids", type_=postgresql.ARRAY(Integer())))
        if pg
        else device_groups.c.product_id.in_(bindparam("ids", expanding=True))
    )
    .order_by(device_groups.c.name)
    for pg in (False, True)
}


# Built once: a device's product membership, read outside any unit of work (store/sql/token_lookup.py).
FIND_MEMBERSHIP = select(
    product_devices.c.product_id, product_devices.c.firmware_version, product_devices.c.customer_id
).where(product_devices.c.device_id == bindparam("device_id"))


def _product(row: Row[Any]) -> Product:
    return Product(
        id=row.id,
        slug=row.slug,
        name=row.name,
        description=row.description,
        platform_id=row.platform_id,
        owner_id=row.owner_id,
        owner_username=row.owner_username,
        settings=dict(row.settings or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _api_user(row: Row[Any]) -> ApiUser:
    return ApiUser(
        id=row.id,
        product_id=row.product_id,
        username=row.username,
        friendly_name=row.friendly_name,
        scopes=tuple(row.scopes or ()),
        created_at=row.created_at,
    )


def _select_products() -> Any:
    return select(*_PRODUCT_COLUMNS).join_from(
        products, users, products.c.owner_id == users.c.id, isouter=True
    )


def _with_role(where: Any) -> Any:
    role = (
        select(product_members.c.role)
        .where(
            and_(
                product_members.c.product_id == products.c.id,
                product_members.c.user_id == bindparam("user_id"),
            )
        )
        .scalar_subquery()
    )
    return (
        select(*_PRODUCT_COLUMNS, role.label("member_role"))
        .join_from(products, users, products.c.owner_id == users.c.id, isouter=True)
        .where(where)
    )


# Built once (every product request reads one): a product by id or slug with a user's role in its team.
_PRODUCT_BY_ID = _with_role(products.c.id == bindparam("product_id"))
_PRODUCT_BY_SLUG = _with_role(products.c.slug == bindparam("slug"))


def _group_names_column(*, postgres: bool) -> Any:
    """
    The product's group names as a JSON list (PostgreSQL orders them by name, as `names_by_product` does;
    SQLite's are sorted by the caller: its BINARY order of names is Python's).
    """
    names = (
        func.json_agg(aggregate_order_by(device_groups.c.name, device_groups.c.name))
        if postgres
        else (func.json_group_array(device_groups.c.name))
    )
    found = select(names).where(device_groups.c.product_id == products.c.id).scalar_subquery()
    return type_coerce(found, JSON()).label("group_names")


# Built once, keyed by (is PostgreSQL, by id): GET /v1/products/:p reads the product, the caller's role and
# its group names in one statement.
_WITH_GROUPS = {
    (pg, by_id): _with_role(
        products.c.id == bindparam("product_id") if by_id else products.c.slug == bindparam("slug")
    ).add_columns(_group_names_column(postgres=pg))
    for pg in (False, True)
    for by_id in (False, True)
}


class SqlProducts:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # ------------------------------------------------------------------ products

    async def add(
        self,
        *,
        slug: str,
        name: str,
        description: str | None,
        platform_id: int,
        owner_id: int,
        settings: dict[str, Any],
        now: datetime,
    ) -> Product:
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    insert(products)
                    .values(
                        slug=slug,
                        name=name,
                        description=description,
                        platform_id=platform_id,
                        owner_id=owner_id,
                        settings=settings,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(products.c.id)
                )
        except IntegrityError as exc:
            raise Conflict("That product slug is already taken") from exc
        found = await self.get(int(result.scalar_one()))
        assert found is not None
        return found

    async def get(self, product_id: int) -> Product | None:
        found = await self.with_role(product_id, None)
        return found[0] if found else None

    async def get_by_slug(self, slug: str) -> Product | None:
        found = await self.with_role(slug, None)
        return found[0] if found else None

    async def with_role(self, ref: int | str, user_id: int | None) -> tuple[Product, Role | None] | None:
        params: dict[str, Any] = {"user_id": user_id}
        if isinstance(ref, int):
            stmt, params["product_id"] = _PRODUCT_BY_ID, ref
        else:
            stmt, params["slug"] = _PRODUCT_BY_SLUG, ref
        row = (await self._conn.execute(stmt, params)).first()
        if row is None:
            return None
        return _product(row), Role(row.member_role) if row.member_role is not None else None

    async def with_role_and_groups(
        self, ref: int | str, user_id: int | None
    ) -> tuple[Product, Role | None, list[str]] | None:
        params: dict[str, Any] = {"user_id": user_id}
        postgres = self._conn.dialect.name == "postgresql"
        if isinstance(ref, int):
            stmt, params["product_id"] = _WITH_GROUPS[postgres, True], ref
        else:
            stmt, params["slug"] = _WITH_GROUPS[postgres, False], ref
        row = (await self._conn.execute(stmt, params)).first()
        if row is None:
            return None
        names = [str(name) for name in row.group_names or ()]
        if not postgres:
            names.sort()
        return _product(row), Role(row.member_role) if row.member_role is not None else None, names

    async def slug_taken(self, slug: str) -> bool:
        stmt = select(func.count()).select_from(products).where(products.c.slug == slug)
        return bool((await self._conn.execute(stmt)).scalar_one())

    async def list_for_member(self, user_id: int) -> Sequence[Product]:
        stmt = (
            _select_products()
            .join(product_members, product_members.c.product_id == products.c.id)
            .where(product_members.c.user_id == user_id)
            .order_by(products.c.id)
        )
        return [_product(row) for row in await self._conn.execute(stmt)]

    async def list_all(self) -> Sequence[Product]:
        return [_product(row) for row in await self._conn.execute(_select_products().order_by(products.c.id))]

    async def update(self, product_id: int, **changes: Any) -> Product:
        await self._conn.execute(update(products).where(products.c.id == product_id).values(**changes))
        found = await self.get(product_id)
        if found is None:
            raise NotFound("Product not found")
        return found

    # ------------------------------------------------------------------ team

    async def role_of(self, product_id: int, user_id: int) -> Role | None:
        stmt = select(product_members.c.role).where(
            and_(product_members.c.product_id == product_id, product_members.c.user_id == user_id)
        )
        value = (await self._conn.execute(stmt)).scalar_one_or_none()
        return Role(value) if value is not None else None

    async def members(self, product_id: int) -> Sequence[TeamMember]:
        stmt = (
            select(product_members.c.user_id, product_members.c.role, users.c.username)
            .join_from(product_members, users, product_members.c.user_id == users.c.id)
            .where(product_members.c.product_id == product_id)
            .order_by(product_members.c.created_at, users.c.username)
        )
        return [
            TeamMember(row.user_id, row.username, Role(row.role)) for row in await self._conn.execute(stmt)
        ]

    async def add_member(self, product_id: int, user_id: int, role: Role, now: datetime) -> None:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    insert(product_members).values(
                        product_id=product_id, user_id=user_id, role=role.value, created_at=now
                    )
                )
        except IntegrityError as exc:
            raise Conflict("That user is already a member of this product's team") from exc

    async def set_role(self, product_id: int, user_id: int, role: Role) -> None:
        await self._conn.execute(
            update(product_members)
            .where(and_(product_members.c.product_id == product_id, product_members.c.user_id == user_id))
            .values(role=role.value)
        )

    async def remove_member(self, product_id: int, user_id: int) -> None:
        await self._conn.execute(
            delete(product_members).where(
                and_(product_members.c.product_id == product_id, product_members.c.user_id == user_id)
            )
        )

    # ------------------------------------------------------------------ API users

    async def add_api_user(
        self, *, product_id: int, username: str, friendly_name: str, scopes: Sequence[str], now: datetime
    ) -> ApiUser:
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    insert(product_api_users)
                    .values(
                        product_id=product_id,
                        username=username,
                        friendly_name=friendly_name,
                        scopes=list(scopes),
                        created_at=now,
                    )
                    .returning(*product_api_users.c)
                )
        except IntegrityError as exc:
            raise Conflict("That API user name is already taken") from exc
        return _api_user(result.one())

    async def api_users(self, product_id: int) -> Sequence[ApiUser]:
        stmt = (
            select(product_api_users)
            .where(product_api_users.c.product_id == product_id)
            .order_by(product_api_users.c.id)
        )
        return [_api_user(row) for row in await self._conn.execute(stmt)]

    async def api_user_by_username(self, product_id: int, username: str) -> ApiUser | None:
        stmt = select(product_api_users).where(
            and_(product_api_users.c.product_id == product_id, product_api_users.c.username == username)
        )
        row = (await self._conn.execute(stmt)).first()
        return _api_user(row) if row else None

    async def update_api_user(self, api_user_id: int, **changes: Any) -> ApiUser:
        result = await self._conn.execute(
            update(product_api_users)
            .where(product_api_users.c.id == api_user_id)
            .values(**changes)
            .returning(*product_api_users.c)
        )
        return _api_user(result.one())

    async def delete_api_user(self, api_user_id: int) -> None:
        await self._conn.execute(delete(product_api_users).where(product_api_users.c.id == api_user_id))

    # ------------------------------------------------------------------ product devices (membership only)

    async def add_device(
        self, product_id: int, device_id: str, *, firmware_version: int | None, now: datetime
    ) -> None:
        """
        Make a known device a member of the product (issue 11 section 3 brings the HTTP doors).
        """
        await self._conn.execute(
            insert(product_devices).values(
                product_id=product_id, device_id=device_id, firmware_version=firmware_version, created_at=now
            )
        )

    async def set_device_groups(self, device_id: str, group_ids: Sequence[int]) -> None:
        await self._conn.execute(
            delete(device_group_members).where(device_group_members.c.device_id == device_id)
        )
        if group_ids:
            await self._conn.execute(
                insert(device_group_members), [{"group_id": g, "device_id": device_id} for g in group_ids]
            )


def _group(row: Row[Any]) -> DeviceGroup:
    return DeviceGroup(
        id=row.id,
        product_id=row.product_id,
        name=row.name,
        description=row.description,
        color=row.color,
        device_count=int(row.device_count),
        fw_version=row.fw_version,
    )


def _select_groups() -> Any:
    count = (
        select(func.count())
        .select_from(device_group_members)
        .where(device_group_members.c.group_id == device_groups.c.id)
        .scalar_subquery()
    )
    released = (  # the highest product firmware version released to the group (decision 0025)
        select(func.max(product_firmware.c.version))
        .select_from(
            product_firmware_groups.join(
                product_firmware, product_firmware.c.id == product_firmware_groups.c.firmware_id
            )
        )
        .where(product_firmware_groups.c.group_id == device_groups.c.id)
        .scalar_subquery()
    )
    return select(*device_groups.c, count.label("device_count"), released.label("fw_version"))


class SqlGroups:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def list_for_product(
        self, product_id: int, name_contains: str | None = None
    ) -> Sequence[DeviceGroup]:
        stmt = _select_groups().where(device_groups.c.product_id == product_id)
        if name_contains:
            escaped = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(device_groups.c.name.like(f"%{escaped}%", escape="\\"))
        return [_group(row) for row in await self._conn.execute(stmt.order_by(device_groups.c.name))]

    async def names_by_product(self, product_ids: Sequence[int]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {p: [] for p in product_ids}
        if not product_ids:
            return found
        stmt = _GROUP_NAMES[self._conn.dialect.name == "postgresql"]
        for row in await self._conn.execute(stmt, {"ids": list(product_ids)}):
            found[row.product_id].append(row.name)
        return found

    async def get(self, product_id: int, name: str) -> DeviceGroup | None:
        stmt = _select_groups().where(
            and_(device_groups.c.product_id == product_id, device_groups.c.name == name)
        )
        row = (await self._conn.execute(stmt)).first()
        return _group(row) if row else None

    async def add(
        self, product_id: int, *, name: str, description: str | None, color: str, now: datetime
    ) -> DeviceGroup:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    insert(device_groups).values(
                        product_id=product_id, name=name, description=description, color=color, created_at=now
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"A group named {name} already exists") from exc
        found = await self.get(product_id, name)
        assert found is not None
        return found

    async def update(self, group: DeviceGroup, **changes: Any) -> DeviceGroup:
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    update(device_groups).where(device_groups.c.id == group.id).values(**changes)
                )
        except IntegrityError as exc:
            raise Conflict(f"A group named {changes.get('name')} already exists") from exc
        found = await self.get(group.product_id, changes.get("name", group.name))
        assert found is not None
        return found

    async def delete(self, group: DeviceGroup) -> None:
        await self._conn.execute(delete(device_groups).where(device_groups.c.id == group.id))

    async def count(self, product_id: int) -> int:
        stmt = select(func.count()).select_from(device_groups).where(device_groups.c.product_id == product_id)
        return int((await self._conn.execute(stmt)).scalar_one())
