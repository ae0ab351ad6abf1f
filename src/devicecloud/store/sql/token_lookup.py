"""
The reads every request makes: a token (by hash) joined to its user, and for device requests the device.

Through a SQLAlchemy unit of work that read costs about 0.5 ms on SQLite (pool checkout, an explicit BEGIN,
nine hops to aiosqlite's thread, COMMIT), which alone would cap the API at under 2,000 requests/s. Here it is
one statement on a dedicated aiosqlite connection in autocommit mode: one hop to its thread, no transaction.
Under WAL every statement reads the latest committed state, so a revocation committed by any connection is
seen by the next lookup. Other dialects use the prebuilt statement on the engine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiosqlite
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from devicecloud.domain.accounts import AccessToken, User
from devicecloud.domain.devices import Device
from devicecloud.store.sql.accounts import FIND_TOKEN_WITH_USER, token_and_user
from devicecloud.store.sql.devices import (
    DEVICE_COLUMN_NAMES,
    FIND_DEVICE,
    device_from_row,
    device_from_values,
)
from devicecloud.store.tables import UtcDateTime, access_tokens, users

_SQLITE_SQL = str(FIND_TOKEN_WITH_USER.compile(dialect=sqlite.dialect()))
_SQLITE_DEVICE_SQL = str(FIND_DEVICE.compile(dialect=sqlite.dialect()))
_TOKEN_COLUMNS = len(access_tokens.c)
_UTC = UtcDateTime()
_DIALECT = sqlite.dialect()


def _when(value: Any) -> Any:
    return _UTC.process_result_value(value, _DIALECT)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _from_sqlite_row(row: Any) -> tuple[AccessToken, User]:
    t = dict(zip((c.name for c in access_tokens.c), row[:_TOKEN_COLUMNS], strict=True))
    u = dict(zip((c.name for c in users.c), row[_TOKEN_COLUMNS:], strict=True))
    token = AccessToken(
        id=t["id"],
        token_hash=t["token_hash"],
        hint=t["hint"],
        user_id=t["user_id"],
        client_id=t["client_id"],
        scopes=tuple(_json(t["scopes"]) or ()),
        created_at=_when(t["created_at"]),
        expires_at=_when(t["expires_at"]),
        refresh_token_hash=t["refresh_token_hash"],
        refresh_expires_at=_when(t["refresh_expires_at"]),
    )
    user = User(
        id=u["id"],
        username=u["username"],
        password_hash=u["password_hash"],
        account_info=dict(_json(u["account_info"]) or {}),
        mfa_enabled=bool(u["mfa_enabled"]),
        mfa_secret=u["mfa_secret"],
        created_at=_when(u["created_at"]),
    )
    return token, user


class TokenLookup:
    """
    ``lookup(token_hash)`` for the request hot path; ``close()`` releases its connection.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite_path = engine.url.database if engine.dialect.name == "sqlite" else None
        self._connection: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()

    async def lookup(self, token_hash: str) -> tuple[AccessToken, User] | None:
        if self._sqlite_path is None:
            async with self._engine.connect() as conn:
                found = (await conn.execute(FIND_TOKEN_WITH_USER, {"token_hash": token_hash})).first()
            return token_and_user(found) if found is not None else None
        connection = await self._sqlite_connection()
        rows = list(await connection.execute_fetchall(_SQLITE_SQL, (token_hash,)))
        return _from_sqlite_row(rows[0]) if rows else None

    async def device(self, device_id: str) -> Device | None:
        """
        A device by id, with its owner's username: the read every device request starts with.
        """
        if self._sqlite_path is None:
            async with self._engine.connect() as conn:
                found = (await conn.execute(FIND_DEVICE, {"device_id": device_id})).first()
            return device_from_row(found) if found is not None else None
        connection = await self._sqlite_connection()
        rows = list(await connection.execute_fetchall(_SQLITE_DEVICE_SQL, (device_id,)))
        if not rows:
            return None
        values = dict(zip(DEVICE_COLUMN_NAMES, rows[0], strict=True))
        values["describe"] = _json(values["describe"]) or {}
        for column in ("last_heard", "last_handshake_at", "created_at", "updated_at"):
            values[column] = _when(values[column])
        return device_from_values(values)

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
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
