"""
The store contract, run against every backend (SQLite and PostgreSQL via the ``runtime`` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.support.devices import wait_until

from devicecloud.domain.accounts import OAuthClient
from devicecloud.domain.devices import DevicePresence, HeardRow
from devicecloud.errors import Conflict
from devicecloud.runtime import Runtime
from devicecloud.store.interfaces import DtlsSessionRow, UnitOfWork

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def add_user(runtime: Runtime, username: str = "ada@example.com") -> int:
    async with runtime.store.transaction() as tx:
        user = await tx.users.add(
            username=username, password_hash="h", account_info={"first_name": "Ada"}, now=NOW
        )
    return user.id


async def add_person_token(tx: UnitOfWork, user_id: int) -> None:
    """A person's token, hash ``"p" * 64``: no expiry, no scopes."""
    await tx.tokens.add(
        token_hash="p" * 64,
        hint="pppppppp",
        user_id=user_id,
        client_id="particle",
        scopes=(),
        now=NOW,
        expires_at=None,
        refresh_token_hash=None,
        refresh_expires_at=None,
    )


async def test_user_round_trip(runtime: Runtime) -> None:
    """A user comes back with its JSON account info and an aware UTC timestamp."""
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        user = await tx.users.get(user_id)
    assert user is not None
    assert ("ada@example.com", {"first_name": "Ada"}, NOW) == (
        user.username,
        user.account_info,
        user.created_at,
    )
    assert user.created_at.tzinfo is not None


async def test_duplicate_username_is_a_conflict_and_keeps_the_transaction_usable(runtime: Runtime) -> None:
    """A unique violation raises Conflict and the rest of the transaction still commits."""
    await add_user(runtime)
    async with runtime.store.transaction() as tx:
        with pytest.raises(Conflict):
            await tx.users.add(username="ada@example.com", password_hash="h", account_info={}, now=NOW)
        await tx.users.add(username="bob@example.com", password_hash="h", account_info={}, now=NOW)
    async with runtime.store.transaction() as tx:
        assert 2 == await tx.users.count()


async def test_rollback_on_error(runtime: Runtime) -> None:
    """An exception inside a transaction undoes its writes."""

    async def failing_transaction() -> None:
        async with runtime.store.transaction() as tx:
            await tx.users.add(username="ghost@example.com", password_hash="h", account_info={}, now=NOW)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing_transaction()
    async with runtime.store.transaction() as tx:
        assert await tx.users.get_by_username("ghost@example.com") is None


async def test_token_lookup_joins_its_user(runtime: Runtime) -> None:
    """find_with_user returns the token and its owner in one call; unknown hashes return None."""
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await tx.tokens.add(
            token_hash="f" * 64,
            hint="ffffffff",
            user_id=user_id,
            client_id="particle",
            scopes=["a:b"],
            now=NOW,
            expires_at=NOW + timedelta(days=1),
            refresh_token_hash="e" * 64,
            refresh_expires_at=None,
        )
    async with runtime.store.transaction() as tx:
        found = await tx.tokens.find_with_user("f" * 64)
        missing = await tx.tokens.find_with_user("0" * 64)
        by_refresh = await tx.tokens.get_by_refresh_hash("e" * 64)
    assert found is not None
    token, user = found
    assert (user_id, ("a:b",), NOW + timedelta(days=1)) == (user.id, token.scopes, token.expires_at)
    assert missing is None
    assert by_refresh is not None
    assert token.id == by_refresh.id


async def test_deleting_a_user_cascades(runtime: Runtime) -> None:
    """Tokens, clients and one-time secrets go with their user."""
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await tx.tokens.add(
            token_hash="a" * 64,
            hint="aaaaaaaa",
            user_id=user_id,
            client_id="particle",
            scopes=[],
            now=NOW,
            expires_at=None,
            refresh_token_hash=None,
            refresh_expires_at=None,
        )
        await tx.clients.add(
            OAuthClient(
                id="app-1000",
                name="App",
                type="installed",
                secret_hash="s",
                owner_id=user_id,
                product_id=None,
                redirect_uri=None,
                scopes=(),
            ),
            now=NOW,
        )
        await tx.secrets.add(
            kind="k", secret_hash="b" * 64, user_id=user_id, expires_at=NOW, payload={"x": 1}
        )
        await tx.users.delete(user_id)
    async with runtime.store.transaction() as tx:
        assert await tx.tokens.find_with_user("a" * 64) is None
        assert await tx.clients.get("app-1000") is None
        assert await tx.secrets.get("k", "b" * 64) is None


async def test_one_time_secret_is_taken_once(runtime: Runtime) -> None:
    """delete() reports whether it removed the secret, so two uses cannot both win."""
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await tx.secrets.add(kind="reset", secret_hash="c" * 64, user_id=user_id, expires_at=NOW, payload={})
    async with runtime.store.transaction() as tx:
        assert (user_id, NOW, {}) == await tx.secrets.get("reset", "c" * 64)
        assert (True, False) == (
            await tx.secrets.delete("reset", "c" * 64),
            await tx.secrets.delete("reset", "c" * 64),
        )


async def test_clients_are_listed_per_owner_and_product(runtime: Runtime) -> None:
    """list_for_owner separates user clients from product clients."""
    user_id = await add_user(runtime)
    base = {"type": "installed", "secret_hash": "s", "owner_id": user_id, "redirect_uri": None, "scopes": ()}
    async with runtime.store.transaction() as tx:
        await tx.clients.add(OAuthClient(id="mine-1000", name="Mine", product_id=None, **base), now=NOW)
        await tx.clients.add(OAuthClient(id="prod-1000", name="Prod", product_id=42, **base), now=NOW)
        with pytest.raises(Conflict):
            await tx.clients.add(OAuthClient(id="mine-1000", name="Dup", product_id=None, **base), now=NOW)
    async with runtime.store.transaction() as tx:
        assert ["mine-1000"] == [c.id for c in await tx.clients.list_for_owner(user_id)]
        assert ["prod-1000"] == [c.id for c in await tx.clients.list_for_owner(user_id, 42)]


async def test_migrations_are_idempotent(runtime: Runtime) -> None:
    """Starting twice on the same database applies nothing new and keeps the data."""
    await add_user(runtime)
    runtime.started = False
    await runtime.start()
    async with runtime.store.transaction() as tx:
        assert 1 == await tx.users.count()


async def test_write_presence_updates_many_devices_in_one_call(runtime: Runtime) -> None:
    """write_presence sets each device's presence columns, keeps platform/product if None, skips unknowns."""
    later = NOW + timedelta(minutes=5)
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW, platform_id=6, product_id=7)
        await tx.devices.add("b" * 24, now=NOW)
        await tx.devices.write_presence(
            [
                DevicePresence("a" * 24, True, "10.0.0.1", later, later, None, None, later),
                DevicePresence("b" * 24, False, None, None, later, 12, 4000, later),
                DevicePresence("c" * 24, True, "10.0.0.3", later, later, 6, None, later),
            ]
        )
    async with runtime.store.transaction(readonly=True) as tx:
        a, b, c = [await tx.devices.get(x * 24) for x in "abc"]
    assert a is not None
    assert b is not None
    assert (True, "10.0.0.1", later, later, 6, 7, later) == (
        a.online,
        a.last_ip_address,
        a.last_handshake_at,
        a.last_heard,
        a.platform_id,
        a.product_id,
        a.updated_at,
    )
    assert (False, None, None, later, 12, 4000) == (
        b.online,
        b.last_ip_address,
        b.last_handshake_at,
        b.last_heard,
        b.platform_id,
        b.product_id,
    )
    assert c is None


async def test_write_heard_sets_last_heard_alone_as_write_presence_stores_it(runtime: Runtime) -> None:
    """write_heard changes only last_heard, stored exactly as write_presence stores it; unknowns skipped."""
    heard = NOW + timedelta(minutes=5, microseconds=123456)
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW, platform_id=6)
        await tx.devices.add("b" * 24, now=NOW, platform_id=6)
        b_presence = DevicePresence("b" * 24, True, "10.0.0.2", NOW, heard, None, None, NOW)
        await tx.devices.write_presence([b_presence])
        await tx.devices.write_heard([HeardRow("a" * 24, heard, 0, None), HeardRow("c" * 24, heard, 0, None)])
    async with runtime.store.transaction(readonly=True) as tx:
        a, b, c = [await tx.devices.get(x * 24) for x in "abc"]
    assert a is not None
    assert b is not None
    assert (heard, False, None, NOW, 6) == (
        a.last_heard,
        a.online,
        a.last_ip_address,
        a.updated_at,
        a.platform_id,
    )
    assert c is None
    async with runtime.store.engine.connect() as conn:  # the same stored form: SQL comparisons agree
        raw = (await conn.exec_driver_sql("SELECT id, last_heard FROM devices ORDER BY id")).all()
    assert raw[0][1] == raw[1][1]


async def test_write_heard_is_fenced_on_the_link_like_write_presence(runtime: Runtime) -> None:
    """A keep-alive of a link older than the record's latest (the device moved) writes nothing."""
    later = NOW + timedelta(minutes=5)
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW)
        await tx.devices.write_presence(
            [
                DevicePresence(
                    "a" * 24, True, "10.0.0.1", NOW, NOW, None, None, NOW, node_id="b", session_epoch=7
                )
            ]
        )
        await tx.devices.write_heard([HeardRow("a" * 24, later, 6, "a"), HeardRow("a" * 24, later, 7, "a")])
    async with runtime.store.transaction(readonly=True) as tx:
        assert NOW == (await tx.devices.get("a" * 24)).last_heard  # type: ignore[union-attr]
    async with runtime.store.transaction() as tx:
        await tx.devices.write_heard([HeardRow("a" * 24, later, 7, "b")])
    async with runtime.store.transaction(readonly=True) as tx:
        assert later == (await tx.devices.get("a" * 24)).last_heard  # type: ignore[union-attr]


async def test_describes_are_read_and_written_many_at_a_time(runtime: Runtime) -> None:
    """describes() reads stored ones; write_describes() writes many, keeps firmware on None, skips unknown."""
    later = NOW + timedelta(minutes=5)
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW, system_firmware_version="1.5.2")
        await tx.devices.update("a" * 24, describe={"functions": ["f"]})
        await tx.devices.add("b" * 24, now=NOW)
        assert {"a" * 24: {"functions": ["f"]}, "b" * 24: {}} == await tx.devices.describes(
            ["a" * 24, "b" * 24, "c" * 24]
        )
        await tx.devices.write_describes(
            [
                ("a" * 24, {"functions": ["g"], "variables": {"t": "double"}}, None, later),
                ("b" * 24, {"functions": []}, "2.3.1", later),
                ("c" * 24, {"functions": []}, "2.3.1", later),
            ]
        )
    async with runtime.store.transaction(readonly=True) as tx:
        a, b, c = [await tx.devices.get(x * 24) for x in "abc"]
    assert a is not None
    assert b is not None
    assert (("g",), {"t": "double"}, "1.5.2", later) == (
        a.functions,
        a.variables,
        a.system_firmware_version,
        a.updated_at,
    )
    assert ({"functions": []}, "2.3.1") == (b.describe, b.system_firmware_version)
    assert c is None


async def test_name_if_unnamed_never_replaces_a_name_and_clashes_are_conflicts(runtime: Runtime) -> None:
    """A generated name goes only to a record without one; a name the owner uses is a Conflict."""
    owner = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW, owner_id=owner, name="brave_yak")
        await tx.devices.add("b" * 24, now=NOW, owner_id=owner)
        assert not await tx.devices.name_if_unnamed("a" * 24, "calm_ibis", now=NOW)
        assert not await tx.devices.name_if_unnamed("c" * 24, "calm_ibis", now=NOW)
        with pytest.raises(Conflict):
            await tx.devices.name_if_unnamed("b" * 24, "brave_yak", now=NOW)
        assert await tx.devices.name_if_unnamed("b" * 24, "calm_ibis", now=NOW)
    async with runtime.store.transaction(readonly=True) as tx:
        a, b = [await tx.devices.get(x * 24) for x in "ab"]
    assert a is not None
    assert b is not None
    assert ("brave_yak", "calm_ibis") == (a.name, b.name)


async def test_lookup_token_reads_a_persons_and_a_products_token(runtime: Runtime) -> None:
    """The hot-path read (decision 0016): a person's token comes with its user, a product's with none."""
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await add_person_token(tx, user_id)
        product = await tx.products.add(
            slug="brew", name="Brew", description=None, platform_id=6, owner_id=user_id, settings={}, now=NOW
        )
        bot = await tx.products.add_api_user(
            product_id=product.id,
            username="brew+x@api.particle.io",
            friendly_name="b",
            scopes=["groups:list"],
            now=NOW,
        )
        await tx.tokens.add(
            token_hash="a" * 64,
            hint="aaaaaaaa",
            user_id=None,
            client_id="particle-api-user",
            scopes=("groups:list",),
            now=NOW,
            expires_at=None,
            refresh_token_hash=None,
            refresh_expires_at=None,
            product_id=product.id,
            api_user_id=bot.id,
        )
    person = await runtime.store.lookup_token("p" * 64)
    assert person is not None
    assert person[1] is not None
    assert (person[0].user_id, person[0].product_id, person[1].username) == (user_id, None, "ada@example.com")
    machine = await runtime.store.lookup_token("a" * 64)
    assert machine is not None
    assert (machine[1], machine[0].product_id, machine[0].api_user_id, machine[0].scopes) == (
        None,
        product.id,
        bot.id,
        ("groups:list",),
    )
    async with runtime.store.transaction() as tx:
        await tx.products.delete_api_user(bot.id)
    assert await runtime.store.lookup_token("a" * 64) is None  # its tokens go with it


@asynccontextmanager
async def table_locked(runtime: Runtime, table: str) -> AsyncIterator[Any]:
    """Another PostgreSQL connection holding ``table`` locked (ACCESS EXCLUSIVE) until the block ends."""
    import asyncpg

    url = runtime.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(url)
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield holder
    finally:
        await holder.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_token_read_cut_off_half_way_gives_its_connection_up(runtime: Runtime) -> None:
    """
    On PostgreSQL the hot-path reads run on a pooled connection's driver (decision 0036): a read cancelled
    while the server holds it up (another connection's lock) discards that connection, the pool has none
    left out, and the next read answers.
    """
    user_id = await add_user(runtime)
    async with runtime.store.transaction() as tx:
        await add_person_token(tx, user_id)
    pool = runtime.store.engine.sync_engine.pool
    async with table_locked(runtime, "access_tokens") as holder:
        read = asyncio.create_task(runtime.store.lookup_token("p" * 64))

        async def held_up() -> bool:
            return bool(await holder.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        await wait_until(held_up, timeout=10)
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    found = await runtime.store.lookup_token("p" * 64)
    assert found is not None
    assert found[1] is not None
    assert found[1].username == "ada@example.com"


async def test_a_device_read_waits_no_longer_than_its_timeout(runtime: Runtime) -> None:
    """
    The gateway's key check bounds its device read (``timeout``): a read the database holds up ends with
    `TimeoutError` and gives its connection up; a read that needs no wait (SQLite's inline read) is never
    cut, whatever the timeout.
    """
    async with runtime.store.transaction() as tx:
        await tx.devices.add("a" * 24, now=NOW, platform_id=6)
    if runtime.store.engine.dialect.name == "sqlite":
        for read in (runtime.store.lookup_device, runtime.store.lookup_device_key):
            assert await read("a" * 24, timeout=0) is not None
        return
    pool = runtime.store.engine.sync_engine.pool
    async with table_locked(runtime, "devices") as holder:
        for read in (runtime.store.lookup_device, runtime.store.lookup_device_key):
            with pytest.raises(TimeoutError):
                await read("a" * 24, timeout=0.2)
        assert not await holder.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    found = await runtime.store.lookup_device("a" * 24, timeout=5)
    assert found is not None
    assert found.platform_id == 6
    assert await runtime.store.lookup_device_key("a" * 24, timeout=5) is not None


async def test_kept_dtls_sessions_are_replaced_per_device(runtime: Runtime) -> None:
    """The UDP gateway's kept sessions: one row per device, replaced whole, large counters intact."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = DtlsSessionRow("0123456789abcdef01234567", b"\x01" * 8, '{"a": 1}', b"\x00\x0c", 10_000)
    other = DtlsSessionRow("0123456789abcdef01234568", None, '{"b": 2}', b"hello", 2**47)
    async with runtime.store.transaction() as tx:
        await tx.dtls_sessions.put_many([first, other], at)
    again = DtlsSessionRow(first.device_id, b"\x02" * 8, '{"a": 2}', b"\x00\x0d", 20_000)
    async with runtime.store.transaction() as tx:
        await tx.dtls_sessions.put_many([again], at)
    async with runtime.store.transaction(readonly=True) as tx:
        rows = sorted(await tx.dtls_sessions.all(), key=lambda row: row.device_id)
    assert [again, other] == rows
    async with runtime.store.transaction() as tx:
        await tx.dtls_sessions.remove([other.device_id])
    async with runtime.store.transaction(readonly=True) as tx:
        assert [again] == list(await tx.dtls_sessions.all())
