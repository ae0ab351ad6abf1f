"""What the flash tests share: the next ``spark/flash/status`` of a device, and a flash as the CLI sends."""

from __future__ import annotations

import asyncio

import httpx

from devicecloud.bus.interfaces import Subscription
from devicecloud.domain.events import CloudEvent
from tests.support.api import Account


async def next_status(subscription: Subscription, device_id: str, timeout: float = 30.0) -> CloudEvent:
    """The next ``spark/flash/status`` of ``device_id`` (other events are skipped)."""
    async with asyncio.timeout(timeout):
        async for event in subscription:
            if event.name == "spark/flash/status" and event.device_id == device_id:
                return event
    raise AssertionError("the stream ended")


async def flash(client: httpx.AsyncClient, account: Account, device_id: str, data: bytes) -> httpx.Response:
    """``PUT /v1/devices/:id`` with a binary, as particle-cli sends it."""
    return await client.put(
        f"/v1/devices/{device_id}",
        files={"file": ("app.bin", data, "application/octet-stream")},
        data={"file_type": "binary"},
        headers=account.auth,
    )
