"""
Virtual devices connected to a test runtime through the real gateway, registered and claimed over the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from devicecloud.protocol import ResponseStyle
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import DeviceIdentity, generate_identity
from tests.support.api import Account


async def register_and_claim(
    client: httpx.AsyncClient, account: Account, device_id: str, public_pem: str
) -> None:
    """
    What a user does with particle-cli: ``keys send`` then claim.
    """
    sent = await client.post(
        f"/v1/provisioning/{device_id}",
        json={"deviceID": device_id, "publicKey": public_pem, "algorithm": "rsa"},
        headers=account.auth,
    )
    assert 200 == sent.status_code, sent.text
    claimed = await client.post("/v1/devices", json={"id": device_id}, headers=account.auth)
    assert 200 == claimed.status_code, claimed.text


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """
    Poll an async predicate (real time: for things the other side does on its own schedule).
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def handled(runtime: Runtime, device_id: str) -> None:
    """
    Wait until the gateway has handled everything the device sent before this call (a barrier, not a sleep).

    A link awaits the services for what one read brought before it reads again, so the answer to a second
    ping is read only after the hooks of anything that arrived before, or together with, the first answer.
    """
    for _ in range(2):
        assert await runtime.gateway.control.ping(device_id, timeout=10.0), "the device is not linked"


def virtual_device(runtime: Runtime, identity: DeviceIdentity, **options: Any) -> VirtualDevice:
    """
    A virtual device with ``identity`` aimed at the test runtime's gateway (not started, no reconnects).
    """
    return VirtualDevice(
        "127.0.0.1",
        runtime.gateway_port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=runtime.server_key.public_key(),
        **{"reconnect": False, **options},
    )


async def connect_device(
    client: httpx.AsyncClient,
    account: Account | None,
    runtime: Runtime,
    *,
    style: ResponseStyle = ResponseStyle.SEPARATE,
    demo: bool = False,
    setup: Callable[[VirtualDevice], None] | None = None,
    **options: Any,
) -> VirtualDevice:
    """
    A new virtual device, registered and claimed by ``account`` (unowned without one), connected, described.
    """
    identity = generate_identity()
    if account is not None:
        await register_and_claim(client, account, identity.device_id, identity.public_key_pem())
    else:  # an operator registers the key (devicecloud keys add); nobody owns the device yet
        await runtime.device_keys.add(identity.device_id, identity.public_key_pem())
    device = virtual_device(runtime, identity, response_style=style, demo=demo, **options)
    if setup is not None:
        setup(device)
    await device.start()
    await device.wait_connected(10)

    async def described() -> bool:
        async with runtime.store.transaction(readonly=True) as tx:
            record = await tx.devices.get(identity.device_id)
        if record is None:
            return False
        record = runtime.sessions.presence.overlay(record)  # written behind: the store may lag; reads do not
        return record.online and "functions" in record.describe

    await wait_until(described)
    return device
