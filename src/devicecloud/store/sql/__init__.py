"""
SQL backend on SQLAlchemy Core (async), for SQLite and PostgreSQL.

Theory of operation: `SqlStore` owns the engine. `transaction()` opens one connection in one transaction and
hands out repositories bound to it; every repository method is a single statement, so there is no ORM
identity map to keep in sync. Dialect differences stay in this package: SQLite gets WAL, foreign keys and a
busy timeout on every connection and an explicit BEGIN; unique violations of either dialect become
`errors.Conflict`. One module per domain holds its repositories.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from devicecloud.domain.access import Role
from devicecloud.domain.accounts import AccessToken, User
from devicecloud.domain.devices import Device, DeviceKeyRecord
from devicecloud.store.sql.accounts import SqlClients, SqlSecrets, SqlTokens, SqlUsers
from devicecloud.store.sql.customers import SqlCustomers
from devicecloud.store.sql.devices import SqlClaimCodes, SqlDevices, SqlPendingKeys
from devicecloud.store.sql.diagnostics import SqlVitals
from devicecloud.store.sql.dtls_sessions import SqlDtlsSessions
from devicecloud.store.sql.libraries import SqlLibraries
from devicecloud.store.sql.nodes import SqlNodes
from devicecloud.store.sql.product_devices import SqlProductDevices
from devicecloud.store.sql.product_firmware import SqlProductFirmware
from devicecloud.store.sql.products import SqlGroups, SqlProducts
from devicecloud.store.sql.sims import SqlSims
from devicecloud.store.sql.token_lookup import TokenLookup
from devicecloud.store.sql.usage import SqlUsage
from devicecloud.store.sql.webhooks import SqlDeliveries, SqlWebhooks

READONLY_OPTION = "devicecloud_readonly"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """
    The connection pool, for both dialects: ``size`` kept open, ``overflow`` more at peaks, ``timeout``
    seconds a caller waits for one (then SQLAlchemy's TimeoutError).
    """

    size: int = 20
    overflow: int = 10
    timeout: float = 30.0


class SqliteConnection(sqlite3.Connection):
    """
    The pool's SQLite connections: closing one rolls its transaction back first.

    SQLite keeps a connection closed while one of its statements is still running (a cursor not read to the
    end) open as a "zombie" until that statement is finalized, and a zombie keeps its transaction: the
    database's one write lock stays held while anything references the cursor. That happens when a unit of
    work is cancelled half way through a query (its task stopped, a timeout): SQLAlchemy then closes the
    connection, but the cancelled frames hold the cursor, and every writer of every process waited out its
    busy timeout again and again (seen in a node's shutdown, minutes long).
    """

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


def create_engine(url: str, pool: PoolLimits | None = None) -> AsyncEngine:
    """
    Build the async engine with the per-dialect connection settings this project relies on.
    """
    pool = pool or PoolLimits()
    sizing: dict[str, Any] = {
        "pool_size": pool.size,
        "max_overflow": pool.overflow,
        "pool_timeout": pool.timeout,
    }
    if url.startswith("sqlite"):
        if make_url(url).database in (None, "", ":memory:"):
            sizing = {}  # one in-memory database per connection: SQLAlchemy uses a static pool there
        # The busy timeout matches the pool's: a writer waits for SQLite's one write lock as long as for a
        # connection. Device links never do (their writes go through the presence book's one flush).
        engine = create_async_engine(
            url, connect_args={"timeout": pool.timeout, "factory": SqliteConnection}, **sizing
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The sqlite3 module's own transaction handling breaks SAVEPOINTs; SQLAlchemy's documented
            # recipe is to turn it off and emit BEGIN ourselves (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(pool.timeout * 1000)}")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the lock up front (IMMEDIATE) so a read-then-write transaction never fails with
            # SQLITE_BUSY half way; read-only transactions stay DEFERRED and run beside writers under WAL.
            readonly = conn.get_execution_options().get(READONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    engine = create_async_engine(url, **sizing)

    @event.listens_for(engine.sync_engine, "checkout")
    def _closed_is_gone(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # What SQLAlchemy's pre-ping is for, without its cost (decision 0030): on asyncpg a pre-ping is three
        # round trips (BEGIN, an empty query, ROLLBACK) before every checkout. A connection the server
        # closed (a restart, a terminated backend) is known closed to asyncpg as soon as the loop has read
        # the end of its socket; the pool then opens a fresh one instead. A connection that dies while idle
        # without the socket saying so fails its next statement, and SQLAlchemy drops the pool's
        # connections on that disconnect, as it does for a connection lost between a ping and a statement.
        driver = record.driver_connection
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the database closed this connection")

    return engine


class SqlUnitOfWork:
    def __init__(self, conn: AsyncConnection) -> None:
        self.users = SqlUsers(conn)
        self.tokens = SqlTokens(conn)
        self.clients = SqlClients(conn)
        self.secrets = SqlSecrets(conn)
        self.devices = SqlDevices(conn)
        self.pending_keys = SqlPendingKeys(conn)
        self.nodes = SqlNodes(conn)
        self.claim_codes = SqlClaimCodes(conn)
        self.customers = SqlCustomers(conn)
        self.webhooks = SqlWebhooks(conn)
        self.deliveries = SqlDeliveries(conn)
        self.products = SqlProducts(conn)
        self.groups = SqlGroups(conn)
        self.product_devices = SqlProductDevices(conn)
        self.product_firmware = SqlProductFirmware(conn)
        self.libraries = SqlLibraries(conn)
        self.sims = SqlSims(conn)
        self.vitals = SqlVitals(conn)
        self.dtls_sessions = SqlDtlsSessions(conn)
        self.usage = SqlUsage(conn)


class SqlStore:
    """
    The SQL backend of `store.interfaces.Store`.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._token_lookup = TokenLookup(engine)
        # A read-only unit of work on PostgreSQL runs its statements in autocommit mode: under READ
        # COMMITTED each statement of a transaction reads its own snapshot anyway, so a BEGIN and a COMMIT
        # would add two round trips and no consistency (decision 0030). SQLite's BEGIN does hold one
        # snapshot for the whole read (and costs no round trip): kept.
        self._read_options: dict[str, Any] = (
            {"isolation_level": "AUTOCOMMIT"} if engine.dialect.name == "postgresql" else {}
        )

    async def lookup_token(self, token_hash: str) -> tuple[AccessToken, User | None] | None:
        return await self._token_lookup.lookup(token_hash)

    async def lookup_device(self, device_id: str, *, timeout: float | None = None) -> Device | None:
        return await self._token_lookup.device(device_id, timeout)

    async def lookup_device_key(
        self, device_id: str, *, timeout: float | None = None
    ) -> DeviceKeyRecord | None:
        return await self._token_lookup.device_key(device_id, timeout)

    async def lookup_device_for(self, device_id: str, user_id: int) -> tuple[Device, Role | None] | None:
        return await self._token_lookup.device_for(device_id, user_id)

    async def lookup_membership(self, device_id: str) -> tuple[int, int | None, int | None] | None:
        return await self._token_lookup.membership(device_id)

    @classmethod
    def from_url(cls, url: str, pool: PoolLimits | None = None) -> SqlStore:
        return cls(create_engine(url, pool))

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[SqlUnitOfWork]:
        async with self.engine.connect() as conn:
            if readonly:
                await conn.execution_options(**{READONLY_OPTION: True, **self._read_options})
            async with conn.begin():
                yield SqlUnitOfWork(conn)

    async def close(self) -> None:
        await self._token_lookup.close()
        await self.engine.dispose()
