"""
`Store.lookup_membership`: a device's product and product firmware version, read outside any unit of work
(the events service caches it per connection, decision 0021), on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime

from devicecloud.runtime import Runtime

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
