"""
The reads every request makes: a token (by hash) joined to its user (if it has one), and for device
requests the device.

Through a SQLAlchemy unit of work that read costs about 0.5 ms on SQLite (pool checkout, an explicit BEGIN,
nine hops to aiosqlite's thread, COMMIT), which alone would cap the API at under 2,000 requests/s. Here it is
one prebuilt statement in autocommit mode, no transaction. Under WAL every statement reads the latest
committed state, so a revocation committed by any connection is seen by the next lookup.

On PostgreSQL (asyncpg) the statement, compiled once, runs on a pooled connection's driver without a
transaction (no BEGIN and ROLLBACK round trips, decision 0030) and without SQLAlchemy's execution layer:
a token read costs about 270 µs of CPU through `AsyncConnection.execute` against about 110 µs checked out
and run on the driver (decision 0036); the rows go through the same converters as SQLite's. Other dialects
use the prebuilt statement through the engine, in autocommit mode.

On SQLite the statement runs inline, on the event loop's thread, over a plain `sqlite3` connection with no
busy wait (decision 0010): a whole device read costs 18 µs of CPU there against 44 µs through the hop to
aiosqlite's thread and back (futexes, the loop's wake-up, GIL hand-overs), more under load. When SQLite
answers BUSY instead of waiting (rare under WAL: a reader meets it only while the WAL index is rebuilt or a
checkpoint restarts the log) the read takes the hop to the aiosqlite connection, which waits its
``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

import aiosqlite
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import Select
from sqlalchemy.util import greenlet_spawn

from devicecloud.domain.access import Role
from devicecloud.domain.accounts import AccessToken, User
from devicecloud.domain.devices import Device, DeviceKeyRecord
from devicecloud.store.sql.accounts import FIND_TOKEN_WITH_USER, token_and_user
from devicecloud.store.sql.devices import (
    DEVICE_COLUMN_NAMES,
    FIND_DEVICE,
    FIND_DEVICE_FOR_USER,
    FIND_DEVICE_KEY,
    device_from_row,
    device_from_values,
    device_key_from_values,
)
from devicecloud.store.sql.products import FIND_MEMBERSHIP
from devicecloud.store.tables import UtcDateTime, access_tokens, json_value, users

_SQLITE_SQL = str(FIND_TOKEN_WITH_USER.compile(dialect=sqlite.dialect()))


@dataclass(frozen=True, slots=True)
class _Prebuilt:
    """A hot-path statement, and its text compiled once for SQLite and for asyncpg's own reads."""

    select: Select[Any]
    sqlite: str
    pg: tuple[str, tuple[str, ...]]


_DEVICE_FOR_USER = FIND_DEVICE_FOR_USER.compile(dialect=sqlite.dialect())
_SQLITE_DEVICE_FOR_USER_SQL = str(_DEVICE_FOR_USER)
_DEVICE_FOR_USER_PARAMS = tuple(_DEVICE_FOR_USER.positiontup or ())  # the order of its "?" placeholders
_SQLITE_MEMBERSHIP_SQL = str(FIND_MEMBERSHIP.compile(dialect=sqlite.dialect()))
_TOKEN_COLUMNS = len(access_tokens.c)


def _driver_sql(statement: Select[Any]) -> tuple[str, tuple[str, ...]]:
    """
    The statement as asyncpg runs it ($1, $2… placeholders) and the names of its parameters in that order.
    """
    compiled = statement.compile(dialect=pg_asyncpg.dialect())  # type: ignore[no-untyped-call]
    return str(compiled), tuple(compiled.positiontup or ())


_PG_TOKEN = _driver_sql(FIND_TOKEN_WITH_USER)
_DEVICE = _Prebuilt(FIND_DEVICE, str(FIND_DEVICE.compile(dialect=sqlite.dialect())), _driver_sql(FIND_DEVICE))
_DEVICE_KEY = _Prebuilt(
    FIND_DEVICE_KEY, str(FIND_DEVICE_KEY.compile(dialect=sqlite.dialect())), _driver_sql(FIND_DEVICE_KEY)
)
_PG_DEVICE_FOR_USER = _driver_sql(FIND_DEVICE_FOR_USER)
_PG_MEMBERSHIP = _driver_sql(FIND_MEMBERSHIP)


def _discard(raw: PoolProxiedConnection) -> None:
    raw.invalidate()
    raw.close()


_UTC = UtcDateTime()
_DIALECT = sqlite.dialect()


def _when(value: Any) -> Any:
    return _UTC.process_result_value(value, _DIALECT)


def _token_from_row(row: Any) -> tuple[AccessToken, User | None]:
    t = dict(zip((c.name for c in access_tokens.c), row[:_TOKEN_COLUMNS], strict=True))
    u = dict(zip((c.name for c in users.c), row[_TOKEN_COLUMNS:], strict=True))
    token = AccessToken(
        id=t["id"],
        token_hash=t["token_hash"],
        hint=t["hint"],
        user_id=t["user_id"],
        client_id=t["client_id"],
        scopes=tuple(json_value(t["scopes"]) or ()),
        created_at=_when(t["created_at"]),
        expires_at=_when(t["expires_at"]),
        refresh_token_hash=t["refresh_token_hash"],
        refresh_expires_at=_when(t["refresh_expires_at"]),
        product_id=t["product_id"],
        api_user_id=t["api_user_id"],
        customer_id=t["customer_id"],
    )
    if t["user_id"] is None:  # a product's token (decision 0016): the outer join found no user
        return token, None
    user = User(
        id=u["id"],
        username=u["username"],
        password_hash=u["password_hash"],
        account_info=dict(json_value(u["account_info"]) or {}),
        mfa_enabled=bool(u["mfa_enabled"]),
        mfa_secret=u["mfa_secret"],
        created_at=_when(u["created_at"]),
    )
    return token, user


def _device_from_values_row(row: Any) -> Device:
    values = dict(zip(DEVICE_COLUMN_NAMES, row, strict=True))
    values["describe"] = json_value(values["describe"]) or {}
    for column in ("last_heard", "last_handshake_at", "created_at", "updated_at"):
        values[column] = _when(values[column])
    return device_from_values(values)


class TokenLookup:
    """
    ``lookup(token_hash)`` for the request hot path; ``close()`` releases its connection.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # One statement each: no transaction (on PostgreSQL a BEGIN and a ROLLBACK are two round trips).
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sqlite_path = engine.url.database if engine.dialect.name == "sqlite" else None
        self._asyncpg = engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"
        self._connection: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()
        self._inline: sqlite3.Connection | None = None
        self._inline_thread: int | None = None  # the thread that opened it: the only one that uses it
        self._closed = False
        #: Reads that met a busy database inline and took the hop instead (for tests and metrics).
        self.busy_fallbacks = 0

    async def lookup(self, token_hash: str) -> tuple[AccessToken, User | None] | None:
        if self._asyncpg:
            rows = await self._driver_rows(_PG_TOKEN, {"token_hash": token_hash})
            return _token_from_row(tuple(rows[0])) if rows else None
        if self._sqlite_path is None:
            async with self._reader.connect() as conn:
                found = (await conn.execute(FIND_TOKEN_WITH_USER, {"token_hash": token_hash})).first()
            return token_and_user(found) if found is not None else None
        rows = await self._sqlite_rows(_SQLITE_SQL, (token_hash,))
        return _token_from_row(rows[0]) if rows else None

    async def device(self, device_id: str, timeout: float | None = None) -> Device | None:
        """
        A device by id, with its owner's username: the read every device request starts with. ``timeout``:
        see `_point_read`.
        """
        rows = await self._point_read(_DEVICE, device_id, timeout)
        return _device_from_values_row(rows[0]) if rows else None

    async def device_key(self, device_id: str, timeout: float | None = None) -> DeviceKeyRecord | None:
        """
        What a connecting device's key check needs of its record (`FIND_DEVICE_KEY`); ``timeout``: see
        `_point_read`.
        """
        rows = await self._point_read(_DEVICE_KEY, device_id, timeout)
        return device_key_from_values(rows[0]) if rows else None

    async def _point_read(self, statement: _Prebuilt, device_id: str, timeout: float | None) -> list[Any]:
        """
        The rows of a statement with one ``device_id`` parameter, as tuples of driver values. ``timeout``:
        the most seconds it may wait for the database (then `TimeoutError`); SQLite's inline read never
        waits, so it sets no timer (one costs about 9 µs, 2 % of a handshake's work besides RSA).
        """
        if self._sqlite_path is not None:
            rows = self._inline_rows(statement.sqlite, (device_id,))
            if rows is not None:
                return rows
        async with asyncio.timeout(timeout):
            if self._asyncpg:
                return [tuple(row) for row in await self._driver_rows(statement.pg, {"device_id": device_id})]
            if self._sqlite_path is None:
                async with self._reader.connect() as conn:
                    found = await conn.execute(statement.select, {"device_id": device_id})
                    return [tuple(row) for row in found]
            connection = await self._sqlite_connection()
            return list(await connection.execute_fetchall(statement.sqlite, (device_id,)))

    async def device_for(self, device_id: str, user_id: int) -> tuple[Device, Role | None] | None:
        """
        A device by id and ``user_id``'s role in its product (None: in no product, or not in its team).
        """
        values = {"device_id": device_id, "user_id": user_id}
        if self._asyncpg:
            listed = await self._driver_rows(_PG_DEVICE_FOR_USER, values)
            if not listed:
                return None
            *device_columns, member_role = tuple(listed[0])
            role = Role(member_role) if member_role is not None else None
            return _device_from_values_row(device_columns), role
        if self._sqlite_path is None:
            async with self._reader.connect() as conn:
                params = {"device_id": device_id, "user_id": user_id}
                found = (await conn.execute(FIND_DEVICE_FOR_USER, params)).first()
            if found is None:
                return None
            return device_from_row(found), Role(found.member_role) if found.member_role is not None else None
        rows = await self._sqlite_rows(
            _SQLITE_DEVICE_FOR_USER_SQL, tuple(values[n] for n in _DEVICE_FOR_USER_PARAMS)
        )
        if not rows:
            return None
        *columns, role = rows[0]
        return _device_from_values_row(columns), Role(role) if role is not None else None

    async def membership(self, device_id: str) -> tuple[int, int | None, int | None] | None:
        """
        The device's (product id, product firmware version, customer id), or None.
        """
        if self._asyncpg:
            listed = await self._driver_rows(_PG_MEMBERSHIP, {"device_id": device_id})
            return (listed[0][0], listed[0][1], listed[0][2]) if listed else None
        if self._sqlite_path is None:
            async with self._reader.connect() as conn:
                found = (await conn.execute(FIND_MEMBERSHIP, {"device_id": device_id})).first()
            return (found[0], found[1], found[2]) if found is not None else None
        rows = await self._sqlite_rows(_SQLITE_MEMBERSHIP_SQL, (device_id,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def _driver_rows(self, statement: tuple[str, tuple[str, ...]], values: dict[str, Any]) -> list[Any]:
        """
        One statement on a pooled connection's asyncpg driver, outside any transaction (each statement
        commits on its own, so it reads the latest committed state). A statement cut off half way — a
        cancelled request, a lost link — leaves the connection in no state to reuse: it is discarded.
        """
        from asyncpg import PostgresError  # the postgres extra: imported only where PostgreSQL is used

        sql, names = statement
        raw = await self._engine.raw_connection()
        driver: Any = raw.driver_connection
        try:
            rows: list[Any] = await driver.fetch(sql, *(values[n] for n in names))
        except PostgresError:
            await greenlet_spawn(raw.close)  # the server answered with an error: the connection is fine
            raise
        except BaseException:
            await asyncio.shield(greenlet_spawn(_discard, raw))
            raise
        # Given back the way `AsyncConnection` does: the pool may close it (past its size), which awaits.
        await greenlet_spawn(raw.close)
        return rows

    async def _sqlite_rows(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        rows = self._inline_rows(sql, parameters)
        if rows is not None:
            return rows
        connection = await self._sqlite_connection()
        return list(await connection.execute_fetchall(sql, parameters))

    def _inline_rows(self, sql: str, parameters: tuple[Any, ...]) -> list[Any] | None:
        """
        The rows, read on this thread without waiting; ``None`` when the read must take the hop instead.
        """
        connection = self._inline
        if connection is None:
            if self._closed:  # the store is closing: do not open a connection nobody closes
                return None
            # timeout=0: never wait for a lock on the loop's thread (the hop waits instead).
            connection = sqlite3.connect(
                self._sqlite_path or ":memory:", isolation_level=None, timeout=0, check_same_thread=False
            )
            connection.execute("PRAGMA query_only=ON")
            self._inline, self._inline_thread = connection, threading.get_ident()
        elif self._inline_thread != threading.get_ident():
            return None  # a store shared across threads: each read from elsewhere takes the hop
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            if (exc.sqlite_errorcode or 0) & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            self.busy_fallbacks += 1
            return None

    async def _sqlite_connection(self) -> aiosqlite.Connection:
        if self._connection is not None:
            return self._connection
        async with self._opening:  # the first requests may arrive together: open one connection, not several
            connection = self._connection
            if connection is None:
                connection = await aiosqlite.connect(self._sqlite_path or ":memory:", isolation_level=None)
                await connection.execute("PRAGMA query_only=ON")
                await connection.execute("PRAGMA busy_timeout=30000")
                self._connection = connection
        return connection

    async def close(self) -> None:
        self._closed = True
        inline, self._inline = self._inline, None
        if inline is not None:
            inline.close()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
