"""
Device commands across nodes (SQLite and PostgreSQL, one NATS bus): a call, read, ping, signal or unclaim
that arrives at node A for a device linked to node B reaches it through B, with the answers, timeouts and
error bodies a call to B itself gets; a device linked nowhere answers offline at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from tests.functional.test_firmware_flash import FAST_RECONNECT, app_binary, flash, next_status
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.cluster import api_of, bus_url, node_b
from tests.support.devices import register_and_claim, virtual_device, wait_until
from tests.support.sse import flag

from devicecloud.domain.events import EventFilter
from devicecloud.gateway.cluster import MARGIN
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.identity import generate_identity

pytestmark = pytest.mark.nats
__all__ = ["bus_url", "node_b"]  # fixtures
REQUEST_TIMEOUT = 3.0


@pytest.fixture
def settings_overrides(bus_url: str) -> dict[str, Any]:
    return {"bus_url": bus_url, "device_request_timeout": REQUEST_TIMEOUT}


async def device_on(
    node: Runtime, client: httpx.AsyncClient, account: Account, entered: asyncio.Event | None = None
) -> VirtualDevice:
    """A device of ``account`` linked to ``node``, with a function, one that never returns, and a variable."""
    identity = generate_identity()
    await register_and_claim(client, account, identity.device_id, identity.public_key_pem())
    device = virtual_device(node, identity)
    device.add_function("echo_len", len)
    never = asyncio.Event()

    async def hang(_argument: str) -> int:
        if entered is not None:
            entered.set()
        await never.wait()
        return 0

    device.add_function("hang", hang)
    device.variables["temp"] = 21.5
    await device.start()
    await device.wait_connected(10)
    await node.sessions.presence.flush()  # the Describe is in the store for node A's checks
    await node.bus.settle()  # node B answers for it at the server
    return device


async def test_commands_through_another_node_answer_as_the_holder_does(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    Function call, unknown function, variable read, unknown variable, ping and signal through node A, for a
    device on node B: the same status and body as through B.
    """
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    device = await device_on(b, client, ada)
    did = device.device_id
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("POST", f"/v1/devices/{did}/echo_len", {"arg": "four"}),
        ("POST", f"/v1/devices/{did}/nope", {"arg": "x"}),
        ("GET", f"/v1/devices/{did}/temp", {}),
        ("GET", f"/v1/devices/{did}/nothing", {}),
        ("PUT", f"/v1/devices/{did}/ping", {}),
        ("PUT", f"/v1/devices/{did}", {"signal": "1"}),
    ]
    try:
        async with api_of(b) as via_b:
            for method, path, form in requests:
                through_a = await client.request(method, path, data=form or None, headers=ada.auth)
                at_b = await via_b.request(method, path, data=form or None, headers=ada.auth)
                assert (at_b.status_code, at_b.json()) == (through_a.status_code, through_a.json()), path
        assert (
            4
            == (
                await client.post(f"/v1/devices/{did}/echo_len", data={"arg": "four"}, headers=ada.auth)
            ).json()["return_value"]
        )
        assert 21.5 == (await client.get(f"/v1/devices/{did}/temp", headers=ada.auth)).json()["result"]
        assert device.signaling
        assert not runtime.gateway.control.is_online(did)  # it really is B's link that answered
    finally:
        await device.stop()


async def test_a_device_linked_nowhere_is_offline_at_once_and_a_silent_one_times_out(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    A claimed device linked to no node: 404 "Device is not connected" without waiting for the request
    timeout; ping online:false. A device on B that never answers: B's own timeout (its clock moved past
    it) comes back through A as the same 408 "Timed out.", before the bus's wait (timeout + margin) ends.
    """
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    nowhere = generate_identity()
    await register_and_claim(client, ada, nowhere.device_id, nowhere.public_key_pem())
    started = time.monotonic()
    call = await client.post(f"/v1/devices/{nowhere.device_id}/echo_len", data={"arg": "x"}, headers=ada.auth)
    assert time.monotonic() - started < REQUEST_TIMEOUT / 2
    assert (404, "Device is not connected") == (call.status_code, call.json()["error_description"])
    ping = await client.put(f"/v1/devices/{nowhere.device_id}/ping", headers=ada.auth)
    assert {"online": False, "ok": True} == ping.json()
    entered = asyncio.Event()
    device = await device_on(b, client, ada, entered)
    try:
        call = asyncio.create_task(
            client.post(f"/v1/devices/{device.device_id}/hang", data={"arg": "x"}, headers=ada.auth)
        )
        await asyncio.wait_for(entered.wait(), 10)  # the call reached the device through B
        started = time.monotonic()
        clock.advance(REQUEST_TIMEOUT + 0.1)  # B's request times out (its clock: the tests' FakeClock)
        hung = await call
        assert time.monotonic() - started < MARGIN  # B's answer, not the bus giving up
        assert (408, "Timed out.", "Timed out.") == (
            hung.status_code,
            hung.json()["error"],
            hung.json()["error_description"],
        )
    finally:
        await device.stop()


async def test_unclaiming_through_one_node_drops_the_link_on_the_other(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """DELETE /v1/devices/:id at node A closes the device's link on node B (its subscriptions go with it)."""
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    device = await device_on(b, client, ada)
    try:
        removed = await client.delete(f"/v1/devices/{device.device_id}", headers=ada.auth)
        assert 200 == removed.status_code, removed.text
        await wait_until(flag(lambda: not b.gateway.control.is_online(device.device_id)))
    finally:
        await device.stop()


async def test_a_key_replaced_through_one_node_ends_the_old_session_on_the_other(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    ``devicecloud keys add`` (the operator's registration, run against node A) gives a device linked to
    node B a new key: B closes the link made with the old one.
    """
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    device = await device_on(b, client, ada)
    try:
        await runtime.device_keys.add(device.device_id, generate_identity().public_key_pem())
        await wait_until(flag(lambda: not b.gateway.control.is_online(device.device_id)))
    finally:
        await device.stop()


async def test_a_flash_through_one_node_updates_the_device_on_the_other(
    client: httpx.AsyncClient, runtime: Runtime, node_b: Callable[[], Awaitable[Runtime]]
) -> None:
    """
    PUT /v1/devices/:id with a binary at node A for a device on node B: B reads the binary from the shared
    store, checks it against its link and updates the device; the status events reach A's streams. A binary
    for another platform gets B's refusal, word for word; a broken one is refused by A without asking.
    """
    ada = await make_account(client, "ada@example.com")
    b = await node_b()
    identity = generate_identity()
    await register_and_claim(client, ada, identity.device_id, identity.public_key_pem())
    device = virtual_device(b, identity, reconnect=True, backoff=FAST_RECONNECT)
    await device.start()
    await device.wait_connected(10)
    await b.sessions.presence.flush()
    await b.bus.settle()
    owner = await runtime.accounts.get_by_username(ada.email)
    # A user's view (the intake of `events.everything` is shared: each event reaches one node's).
    statuses = runtime.bus.subscribe(EventFilter(prefix="spark/flash/status", owner_id=owner.id))
    await runtime.bus.settle()  # A's subscription is at the server before B publishes
    try:
        image = app_binary()
        reply = await flash(client, ada, device.device_id, image)
        assert 200 == reply.status_code, reply.text
        assert {"id": device.device_id, "status": "Update started"} == reply.json()
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert device.firmware == image
        assert not runtime.gateway.control.is_online(device.device_id)  # B's link did it
        await device.wait_connected(10)
        await b.bus.settle()
        wrong = await flash(client, ada, device.device_id, app_binary(platform=12))
        async with api_of(b) as via_b:
            at_b = await flash(via_b, ada, device.device_id, app_binary(platform=12))
        assert (400, wrong.json()) == (wrong.status_code, at_b.json())
        assert "platform 12" in wrong.json()["error_description"]
        broken = await flash(client, ada, device.device_id, b"not a binary")
        assert 400 == broken.status_code
    finally:
        statuses.close()
        await device.stop()
