"""
Device OS 0.x runs the application's setup() (where functions and variables are registered) only once the
cloud connection is up, so the Describe the gateway asks for right after the Hello can come back empty. The
gateway asks again on the clock, and an API call naming something the stored Describe lacks asks once more
before answering 404. The virtual device's ``late_setup`` mode starts its application right after the first
Describe it answers, as such firmware does.

Sync point: two pings (`settle`) prove the gateway handled everything the device sent before them, the
answer to a Describe included; a Describe the gateway asks for is written before the pings' answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.functional.test_gateway_events import settle
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until

from devicecloud.gateway.link import DESCRIBE_RETRY_DELAYS
from devicecloud.protocol import ResponseStyle
from devicecloud.runtime import Runtime
from devicecloud.services.devices import REDESCRIBE_INTERVAL
from devicecloud.virtualdevice import VirtualDevice

TINKER = ["digitalread", "digitalwrite", "analogread", "analogwrite"]


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """Device behaviour does not depend on the database; the storage tests cover both."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def devices() -> AsyncIterator[list[VirtualDevice]]:
    started: list[VirtualDevice] = []
    yield started
    for device in started:
        await device.stop()


async def connect(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, devices: list[VirtualDevice], **options: Any
) -> VirtualDevice:
    device = await connect_device(client, ada, runtime, **options)
    devices.append(device)
    await settle(device)  # the gateway has handled the first Describe (and planned what follows)
    return device


async def described(client: httpx.AsyncClient, ada: Account, device: VirtualDevice) -> dict[str, Any]:
    response = await client.get(f"/v1/devices/{device.device_id}", headers=ada.auth)
    assert 200 == response.status_code, response.text
    body: dict[str, Any] = response.json()
    return body


async def describes_after(clock: FakeClock, device: VirtualDevice, seconds: float) -> int:
    """How many Describes the device has answered once ``seconds`` have passed on the gateway's clock."""
    clock.advance(seconds)
    await settle(device)
    return device.statistics().describes


async def test_a_late_registering_0x_device_is_described_again(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, devices: list[VirtualDevice]
) -> None:
    """The first Describe came before setup(): empty. After the retry delay the functions are listed."""
    device = await connect(
        client, runtime, ada, devices, style=ResponseStyle.PIGGYBACK, demo=True, late_setup=3600.0
    )
    assert ([], {}) == ((body := await described(client, ada, device))["functions"], body["variables"])

    async def started() -> bool:
        return device.application_started

    await wait_until(started)
    assert 2 == await describes_after(clock, device, DESCRIBE_RETRY_DELAYS[0])
    body = await described(client, ada, device)
    assert TINKER == body["functions"]
    assert {"temperature", "uptime", "greeting", "led"} <= set(body["variables"])


async def test_a_call_the_stored_describe_does_not_list_asks_the_device_again(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, devices: list[VirtualDevice]
) -> None:
    """No clock moves: the call itself re-describes once, then calls; a name still missing is a 404."""
    device = await connect(
        client, runtime, ada, devices, style=ResponseStyle.PIGGYBACK, demo=True, late_setup=3600.0
    )
    assert [] == (await described(client, ada, device))["functions"]

    called = await client.post(
        f"/v1/devices/{device.device_id}/digitalwrite", json={"arg": "D7,HIGH"}, headers=ada.auth
    )
    assert (200, 1) == (called.status_code, called.json()["return_value"]), called.text
    assert TINKER == (await described(client, ada, device))["functions"]

    missing = await client.post(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
    assert (404, "Function not found") == (missing.status_code, missing.json()["error"])


async def test_a_read_of_a_variable_the_stored_describe_lacks_asks_again(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, devices: list[VirtualDevice]
) -> None:
    """Variables too: the value comes back with the type of the fresh Describe."""
    device = await connect(
        client, runtime, ada, devices, style=ResponseStyle.PIGGYBACK, demo=True, late_setup=3600.0
    )
    read = await client.get(f"/v1/devices/{device.device_id}/temperature", headers=ada.auth)
    assert 200 == read.status_code, read.text
    assert isinstance(read.json()["result"], float)  # read as a double: the type came with the Describe
    missing = await client.get(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
    assert (404, "Variable not found") == (missing.status_code, missing.json()["error"])


async def test_calls_naming_unknown_functions_ask_the_device_at_most_once_per_interval(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, devices: list[VirtualDevice]
) -> None:
    """Five 404s in a row cost one Describe, not five; once the interval has passed, one more."""
    device = await connect(client, runtime, ada, devices, style=ResponseStyle.SEPARATE, demo=True)
    before = device.statistics().describes
    for _ in range(5):
        missing = await client.post(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
        assert 404 == missing.status_code
    assert before + 1 == device.statistics().describes
    clock.advance(REDESCRIBE_INTERVAL)
    await client.post(f"/v1/devices/{device.device_id}/nope", headers=ada.auth)
    assert before + 2 == device.statistics().describes


async def test_a_0x_device_is_described_once_more_and_an_empty_one_at_most_three_times(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, devices: list[VirtualDevice]
) -> None:
    """Device OS < 1.5 with functions: asked once more. Nothing registered at all: three more, then never."""
    tinker = await connect(client, runtime, ada, devices, style=ResponseStyle.PIGGYBACK, demo=True)
    empty = await connect(client, runtime, ada, devices, style=ResponseStyle.PIGGYBACK)
    counts = []
    for delay in (*DESCRIBE_RETRY_DELAYS, max(DESCRIBE_RETRY_DELAYS)):
        clock.advance(delay)
        await settle(tinker)
        await settle(empty)
        counts.append((tinker.statistics().describes, empty.statistics().describes))
    assert [(2, 2), (2, 3), (2, 4), (2, 4)] == counts
    assert tinker.connected
    assert empty.connected


async def test_a_2x_device_describes_itself_and_is_never_asked(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, ada: Account, devices: list[VirtualDevice]
) -> None:
    """A late 2.x device volunteers its Describe when its application starts: the gateway never asks."""
    device = await connect(
        client, runtime, ada, devices, style=ResponseStyle.SEPARATE, demo=True, late_setup=0.0
    )

    async def listed() -> bool:
        return TINKER == (await described(client, ada, device))["functions"]

    await wait_until(listed)
    assert [2, 2, 2] == [await describes_after(clock, device, delay) for delay in DESCRIBE_RETRY_DELAYS]
