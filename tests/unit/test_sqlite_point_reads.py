"""
The SQLite point reads of `store.sql.token_lookup`: inline on the loop's thread, the thread hop when busy.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from devicecloud.store.sql.token_lookup import TokenLookup
from devicecloud.store.tables import metadata

DEVICE_ID = "0123456789abcdef01234567"
ROW = "INSERT INTO devices (id, name, online, describe, created_at, updated_at) VALUES (?, ?, 0, '{}', ?, ?)"
WHEN = "2026-01-01 12:00:00.000000"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A database with the schema in rollback-journal mode, where a writer's lock blocks readers."""
    path = tmp_path / "points.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(ROW, (DEVICE_ID, "first", WHEN, WHEN))
    return path


@pytest.fixture
async def lookup(database: Path) -> AsyncIterator[TokenLookup]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
    reads = TokenLookup(engine)
    yield reads
    await reads.close()
    await engine.dispose()


async def test_an_inline_read_sees_another_connections_commit_at_once(
    database: Path, lookup: TokenLookup
) -> None:
    """No cache and no snapshot held between reads: a rename committed elsewhere shows on the next read."""
    before = await lookup.device(DEVICE_ID)
    with closing(sqlite3.connect(database, isolation_level=None)) as conn:
        conn.execute("UPDATE devices SET name = 'second' WHERE id = ?", (DEVICE_ID,))
    after = await lookup.device(DEVICE_ID)
    assert ("first", "second", 0) == (
        before.name if before else None,
        after.name if after else None,
        lookup.busy_fallbacks,
    )


async def test_a_busy_database_sends_the_read_through_the_thread_that_waits(
    database: Path, lookup: TokenLookup
) -> None:
    """A lock held elsewhere never blocks the loop: the read takes the hop, which waits for the lock."""
    assert await lookup.device(DEVICE_ID) is not None  # opened inline
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("UPDATE devices SET name = 'renamed' WHERE id = ?", (DEVICE_ID,))
    loop = asyncio.get_running_loop()
    # The commit runs on the loop: the read can only see it if it left the loop free while it waited.
    loop.call_later(0.2, lambda: blocker.execute("COMMIT"))
    started = loop.time()
    found = await lookup.device(DEVICE_ID)
    waited = loop.time() - started
    blocker.close()
    again = await lookup.device(DEVICE_ID)
    assert ("renamed", 1, "renamed", 1) == (
        found.name if found else None,
        lookup.busy_fallbacks,
        again.name if again else None,
        lookup.busy_fallbacks,  # the next read went inline again
    )
    assert waited < 4.0  # not sqlite3's default 5 s busy wait on the loop before the hop
