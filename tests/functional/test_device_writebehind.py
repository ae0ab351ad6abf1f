"""
Device links never wait for a database write (issue 16): describes, generated names and first-connect
records are written behind with presence, keep-alives touch no database, and last_heard reaches the store
exact to the second. Runs on SQLite and PostgreSQL through the real gateway and virtual devices.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import event
from tests.support.api import make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, handled, register_and_claim, virtual_device, wait_until

from devicecloud.domain.devices import Device, DeviceDescription, DeviceHelloInfo
from devicecloud.domain.timestamps import iso
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import DeviceIdentity, generate_identity

INTERVAL = 1.0  # SessionPolicy.presence_flush_interval


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Unknown devices are accepted on their first handshake (their record is a first-connect write); no
    # webhook dispatcher polls the database, nor does the node renew its lease, in the background of the
    # statement counts.
    return {"accept_unknown_devices": True, "webhooks_enabled": False, "node_lease": 3600}


@asynccontextmanager
async def writes_locked(runtime: Runtime) -> AsyncIterator[None]:
    """
    Another connection holds the lock every write needs: SQLite's write lock (``BEGIN IMMEDIATE``), on
    PostgreSQL an EXCLUSIVE lock on ``devices`` (reads go on, writes wait).
    """
    url = runtime.store.engine.url
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(url.database or "", isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import asyncpg

    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE devices IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await conn.close()


async def stored(runtime: Runtime, device_id: str) -> Device | None:
    async with runtime.store.transaction(readonly=True) as tx:
        return await tx.devices.get(device_id)


async def written(
    runtime: Runtime, clock: FakeClock, check: Callable[[Device], bool], ids: list[str]
) -> None:
    """Wait (moving the clock past each flush interval) until every record in the store passes ``check``."""

    async def done() -> bool:
        clock.advance(INTERVAL)
        records = [await stored(runtime, device_id) for device_id in ids]
        return all(record is not None and check(record) for record in records)

    await wait_until(done, timeout=30)


async def test_a_hundred_devices_come_online_while_the_database_is_write_locked(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """
    Claimed, operator-registered and unknown devices connect while another connection holds the write lock:
    handshakes, Hellos and Describes finish, their links answer, the API shows them online and described;
    once the lock is gone every record (name, key, describe, presence) is written. No link failed.
    """
    ada = await make_account(client, "ada@example.com")
    identities = [generate_identity() for _ in range(100)]
    claimed, registered, unknown = identities[:40], identities[40:70], identities[70:]
    for identity in claimed:
        await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    for identity in registered:  # unowned and unnamed: the first connection gives a name
        await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
    devices = [virtual_device(runtime, identity) for identity in identities]
    for device in devices:
        device.add_function("open", lambda _argument: 1)
    try:
        async with writes_locked(runtime), asyncio.timeout(60):
            await asyncio.gather(*(device.start() for device in devices))
            await asyncio.gather(*(device.wait_connected(60) for device in devices))
            # Every link answers: none of them waits for a write (two pings each, handled in order).
            await asyncio.gather(*(handled(runtime, identity.device_id) for identity in identities))
            for identity in claimed:
                body = (await client.get(f"/v1/devices/{identity.device_id}", headers=ada.auth)).json()
                assert (True, ["open"]) == (body["online"], body["functions"]), body
            clock.advance(INTERVAL)  # the flush starts and waits for the lock; links do not wait with it
            await asyncio.gather(*(handled(runtime, identity.device_id) for identity in identities))
        ids = [identity.device_id for identity in identities]
        await written(runtime, clock, lambda d: d.online and bool(d.name) and "functions" in d.describe, ids)
        records = {device_id: await stored(runtime, device_id) for device_id in ids}
        for identity in unknown:
            record = records[identity.device_id]
            assert record is not None
            assert der(identity) == record.public_key_der
        counters = runtime.gateway.statistics()
        assert (100, 0, 100) == (counters.handshakes_ok, counters.handshakes_failed, counters.online)
        assert all(device.connected for device in devices)
    finally:
        await asyncio.gather(*(device.stop() for device in devices))


class StatementCounter:
    """Every SQL statement the runtime sends, and every point read outside SQLAlchemy (SQLite inline)."""

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[tuple[str, int]] = []
        self._engine = runtime.store.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)
        for name in ("lookup_device", "lookup_device_key", "lookup_token", "lookup_membership"):
            monkeypatch.setattr(runtime.store, name, self._counting(getattr(runtime.store, name)))

    def _seen(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        many = len(parameters) if isinstance(parameters, list) else 1
        self.statements.append((statement, many))

    def _counting(self, read: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.statements.append((f"point read {read.__name__}", 1))
            return await read(*args, **kwargs)

        return counted

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


async def test_keepalives_touch_no_database_and_last_heard_is_written_exact(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Idle devices ping every 15 s: no ping sends a statement (nor reads outside SQLAlchemy); the next flush
    writes every device's last heard, exact to the second, in one UPDATE; the API shows the same value.
    """
    ada = await make_account(client, "ada@example.com")
    devices: list[VirtualDevice] = [await connect_device(client, ada, runtime) for _ in range(3)]
    try:
        ids = [device.device_id for device in devices]
        await written(runtime, clock, lambda d: d.online and "functions" in d.describe, ids)
        counter = StatementCounter(runtime, monkeypatch)
        try:
            for _ in range(3):
                clock.advance(15)
                for device in devices:
                    await device.ping()
                    await device.ping()
                heard_at = clock.now()
                assert [] == counter.statements  # six pings, not one statement
                await written(runtime, clock, lambda d, at=heard_at: d.last_heard == at, ids)
                updates = [many for sql, many in counter.statements if sql.lstrip().startswith("UPDATE")]
                assert [3] == updates, counter.statements  # one UPDATE, a row per device
                counter.statements.clear()
        finally:
            counter.close()
        for device in devices:
            record = await stored(runtime, device.device_id)
            assert record is not None
            assert heard_at == record.last_heard
            body = (await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)).json()
            assert iso(heard_at) == body["last_heard"]
    finally:
        await asyncio.gather(*(device.stop() for device in devices))


def der(identity: DeviceIdentity) -> bytes:
    return identity.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


async def test_a_device_claims_itself_before_its_first_connect_record_is_written(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    """
    An unknown device (accepted on its first handshake) presents a claim code at once, as the setup app
    makes it do: the claim writes the record first and the device becomes the account's, named.
    """
    ada = await make_account(client, "ada@example.com")
    code = (await client.post("/v1/device_claims", headers=ada.auth)).json()["claim_code"]
    identity = generate_identity()
    async with virtual_device(runtime, identity) as device:
        await device.wait_connected(10)
        assert await stored(runtime, identity.device_id) is None  # only in memory so far
        await device.publish("spark/device/claim/code", code, private=True)
        await handled(runtime, identity.device_id)
        listed = (await client.get("/v1/devices", headers=ada.auth)).json()
        assert [(identity.device_id, True)] == [(d["id"], d["online"]) for d in listed]
        assert listed[0]["name"]


async def test_generated_names_stay_unique_per_owner_and_never_replace_a_given_name(
    runtime: Runtime, clock: FakeClock
) -> None:
    """
    A name generated in memory that another device of the owner took before the flush is replaced by a free
    one in the flush; a record named meanwhile (a claim, a rename) keeps its own name.
    """
    async with runtime.store.transaction() as tx:
        owner = (
            await tx.users.add(
                username="ada@example.com", password_hash="h", account_info={}, now=clock.now()
            )
        ).id
        await tx.devices.add("a" * 24, now=clock.now(), owner_id=owner, public_key=b"k")
        await tx.devices.add("b" * 24, now=clock.now(), public_key=b"k")
    hello = DeviceHelloInfo(platform_id=6, product_id=None, product_firmware_version=None)
    for device_id in ("a" * 24, "b" * 24):
        assert b"k" == await runtime.sessions.check_device_key(device_id, b"k", "10.0.0.1")
        await runtime.sessions.device_connected(device_id, "10.0.0.1", hello)
    pending_a = runtime.sessions.presence.name("a" * 24)
    async with runtime.store.transaction() as tx:  # meanwhile: another of Ada's devices takes a's name,
        await tx.devices.add("c" * 24, now=clock.now(), owner_id=owner, name=pending_a)
        await tx.devices.update("b" * 24, name="given_name")  # and b gets a name of its own
    clock.advance(INTERVAL)
    await wait_until(lambda: _flushed(runtime), timeout=10)
    a, b = await stored(runtime, "a" * 24), await stored(runtime, "b" * 24)
    assert a is not None
    assert b is not None
    assert a.name
    assert a.name != pending_a
    assert "given_name" == b.name
    assert (a.name, "given_name") == (
        runtime.sessions.presence.overlay(a).name,
        runtime.sessions.presence.overlay(b).name,
    )


async def _flushed(runtime: Runtime) -> bool:
    stats = runtime.sessions.presence.statistics()
    return stats.flushes >= 1 and not stats.dirty


async def test_shutdown_writes_every_pending_fact(runtime: Runtime, clock: FakeClock) -> None:
    """close() writes what no flush has taken yet: the first-connect record, its name, presence, Describe."""
    hello = DeviceHelloInfo(platform_id=6, product_id=None, product_firmware_version=None)
    assert b"k" == await runtime.sessions.check_device_key("d" * 24, b"k", "10.0.0.1")
    await runtime.sessions.device_connected("d" * 24, "10.0.0.1", hello)
    await runtime.sessions.device_described("d" * 24, DeviceDescription(functions=("open",), variables={}))
    name = runtime.sessions.presence.name("d" * 24)
    await runtime.sessions.close()
    record = await stored(runtime, "d" * 24)
    assert record is not None
    assert (b"k", name, True, ("open",)) == (
        record.public_key_der,
        record.name,
        record.online,
        record.functions,
    )


async def test_a_connection_reads_the_database_once(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The key check's read is the one read of a connection (ADR 0010): its ``spark/status`` and its events take
    the owner and the product membership that read found.
    """
    ada = await make_account(client, "ada@example.com")
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    counter = StatementCounter(runtime, monkeypatch)
    device = virtual_device(runtime, identity)
    try:
        await device.start()
        await device.wait_connected(10)
        await device.publish("brew/started", "1", with_ack=True)
        await handled(runtime, identity.device_id)
        reads = [sql for sql, _ in counter.statements if sql.startswith("point read")]
        assert reads == ["point read lookup_device_key"]
    finally:
        counter.close()
        await device.stop()


async def test_a_device_that_reconnects_with_the_same_describe_costs_no_describe_write(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The key check reads the stored record anyway: a Describe equal to the stored one (a device reconnecting
    with the same firmware, a whole fleet after a restart) is not written again; a changed one is.
    """
    ada = await make_account(client, "ada@example.com")
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())

    async def link(*functions: str) -> list[str]:
        device = virtual_device(runtime, identity)
        for name in functions:
            device.add_function(name, lambda arg: len(arg))
        counter = StatementCounter(runtime, monkeypatch)
        try:
            await device.start()
            await device.wait_connected(10)
            await handled(runtime, identity.device_id)  # its Describe is in the book
            await written(
                runtime, clock, lambda d: d.online and "functions" in d.describe, [identity.device_id]
            )
            return [
                sql
                for sql, _ in counter.statements
                if sql.lstrip().startswith("UPDATE") and "describe" in sql
            ]
        finally:
            counter.close()
            await device.stop()
            await written(runtime, clock, lambda d: not d.online, [identity.device_id])

    assert len(await link()) == 1  # the first Describe is written
    assert [] == await link(), "the same Describe again: nothing to write"
    assert len(await link("brew")) == 1  # a new function: written
    record = await stored(runtime, identity.device_id)
    assert record is not None
    assert "brew" in record.describe["functions"]
    assert [] == await link("brew")
