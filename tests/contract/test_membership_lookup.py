"""
`Store.lookup_membership`: a device's product and product firmware version, read outside any unit of work
(the events service caches it per connection, decision 0021), on every backend; and `Store.lookup_device_key`,
the connection's one read, which carries the membership too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from devicecloud.runtime import Runtime
from devicecloud.store.tables import devices

NOW = datetime(2026, 12, 4, tzinfo=UTC)


async def test_membership_of_product_devices_and_others(runtime: Runtime) -> None:
    async with runtime.store.transaction() as tx:
        user = await tx.users.add(username="ada@example.com", password_hash="h", account_info={}, now=NOW)
        product = await tx.products.add(
            slug="brew", name="Brew", description=None, platform_id=6, owner_id=user.id, settings={}, now=NOW
        )
        for device_id in ("a" * 24, "b" * 24, "c" * 24):
            await tx.devices.add(device_id, now=NOW)
        await tx.products.add_device(product.id, "a" * 24, firmware_version=7, now=NOW)
        await tx.products.add_device(product.id, "b" * 24, firmware_version=None, now=NOW)
    assert await runtime.store.lookup_membership("a" * 24) == (product.id, 7, None)
    assert await runtime.store.lookup_membership("b" * 24) == (product.id, None, None)
    assert await runtime.store.lookup_membership("c" * 24) is None
    assert await runtime.store.lookup_membership("d" * 24) is None


async def test_a_connections_key_record_is_what_the_whole_record_says(runtime: Runtime) -> None:
    """`Store.lookup_device_key`, the key check's narrow read, agrees with the whole record on every field."""
    describe = {"functions": ["brew"], "variables": {"temp": "double"}}
    async with runtime.store.transaction() as tx:
        user = await tx.users.add(username="ada@example.com", password_hash="h", account_info={}, now=NOW)
        product = await tx.products.add(
            slug="brew", name="Brew", description=None, platform_id=6, owner_id=user.id, settings={}, now=NOW
        )
        await tx.devices.add(
            "a" * 24,
            now=NOW,
            owner_id=user.id,
            name="brave_yak",
            public_key=b"\x30\x81\x9f-a-key",
            system_firmware_version="1.5.2",
            session_epoch=41,
        )
        await tx.devices.add("b" * 24, now=NOW)
        await tx.products.add_device(product.id, "a" * 24, firmware_version=7, now=NOW)
    async with runtime.store.engine.begin() as conn:  # what the presence book writes behind
        await conn.execute(update(devices).where(devices.c.id == "a" * 24).values(describe=describe))
    for device_id in ("a" * 24, "b" * 24):
        whole = await runtime.store.lookup_device(device_id)
        narrow = await runtime.store.lookup_device_key(device_id)
        assert whole is not None
        assert narrow is not None
        assert (
            narrow.owner_id,
            narrow.named,
            narrow.public_key_der,
            narrow.describe,
            narrow.system_firmware_version,
            narrow.session_epoch,
            narrow.membership,
        ) == (
            whole.owner_id,
            whole.name is not None,
            whole.public_key_der,
            whole.describe,
            whole.system_firmware_version,
            whole.session_epoch,
            whole.membership,
        )
    narrow = await runtime.store.lookup_device_key("a" * 24)
    assert narrow is not None
    assert (narrow.named, narrow.describe, narrow.session_epoch) == (True, describe, 41)
    assert narrow.membership is not None
    assert (narrow.membership.product_id, narrow.membership.firmware_version) == (product.id, 7)
    assert await runtime.store.lookup_device_key("c" * 24) is None
