"""
The pool's SQLite connections (`store.sql.SqliteConnection`): one closed in the middle of a query inside a
write transaction — what SQLAlchemy does with the connection of a cancelled unit of work — gives the write
lock back at once, although the query's cursor is still referenced (a cancelled task's frames hold it).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from devicecloud.store.sql import PoolLimits, SqlStore


def write_lock_is_free(path: Path) -> bool:
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as other:
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        other.execute("ROLLBACK")
        return True


async def test_a_connection_closed_mid_query_gives_the_write_lock_back(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqlStore.from_url(f"sqlite+aiosqlite:///{path}", PoolLimits(size=2, overflow=0, timeout=5))
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE hooks (id INTEGER PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO hooks (id) VALUES (1), (2), (3)"))
        pooled = await store.engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None
        await driver.execute("BEGIN IMMEDIATE")
        cursor = await driver.execute("SELECT id FROM hooks")
        assert await cursor.fetchone() == (1,)  # the query is still running
        assert not write_lock_is_free(path)
        await driver.close()
        assert write_lock_is_free(path)
        assert cursor is not None  # still referenced: without the rollback its statement would keep the lock
        await greenlet_spawn(pooled.invalidate)  # the pool forgets it, as it does a cancelled one
    finally:
        await store.close()
