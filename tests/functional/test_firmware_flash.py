"""
Flashing over the air end to end: ``PUT /v1/devices/:id`` with a binary, the real gateway, a virtual device
over TCP that checks and writes the image, ``spark/flash/status`` events, and the faults of issue 12.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import connect_device, wait_until
from tests.support.flashing import flash, next_status

from devicecloud.bus.interfaces import Subscription
from devicecloud.domain.firmware import Dependency, ModuleFunction, build_module
from devicecloud.domain.images import FileImage, Image, image_bytes
from devicecloud.protocol import ResponseStyle
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice
from devicecloud.virtualdevice.support import Backoff
from devicecloud.virtualdevice.updates import UpdateBehaviour

STYLES = [pytest.param(ResponseStyle.PIGGYBACK, id="0.x"), pytest.param(ResponseStyle.SEPARATE, id="2.x")]
FAST_RECONNECT = Backoff(initial=0.01, maximum=0.05, jitter=False)


def app_binary(size: int = 100 * 1024, *, platform: int = 6, seed: int = 1, **options: Any) -> bytes:
    """A user part of about ``size`` bytes needing system part 1 ≥ 207 (Device OS 0.7.0)."""
    code = random.Random(seed).randbytes(size - 64)
    deps = options.pop("dependencies", [Dependency(ModuleFunction.SYSTEM_PART, 1, 207)])
    return build_module(code, platform_id=platform, dependencies=deps, **options)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Flashing does not touch storage beyond the device record; the storage tests cover both backends."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def statuses(runtime: Runtime) -> AsyncIterator[Subscription]:
    subscription = runtime.events.everything(max_pending=10_000)
    yield subscription
    subscription.close()


async def updatable(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    style: ResponseStyle = ResponseStyle.SEPARATE,
    **options: Any,
) -> VirtualDevice:
    return await connect_device(
        client, ada, runtime, style=style, reconnect=True, backoff=FAST_RECONNECT, **options
    )


@pytest.mark.parametrize("style", STYLES)
async def test_a_100kb_binary_with_5_percent_of_chunks_dropped_arrives_byte_identical(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    statuses: Subscription,
    tmp_path: Path,
    style: ResponseStyle,
) -> None:
    image = app_binary()
    written = tmp_path / "device" / "firmware.bin"
    lossy = UpdateBehaviour(drop_chunks=0.05, drop_seed=7)
    device = await updatable(client, ada, runtime, style, updates=lossy, firmware_path=written)
    try:
        reply = await flash(client, ada, device.device_id, image)
        assert 200 == reply.status_code, reply.text
        assert {"id": device.device_id, "status": "Update started"} == reply.json()
        started = await next_status(statuses, device.device_id)
        assert ("started ", "particle-internal", False) == (started.data, started.coreid, started.public)
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert written.read_bytes() == image
        assert device.firmware == image
        # It reset and came back running the new application, and says so in its Describe.
        await device.wait_connected(10)

        async def describes_new_app() -> bool:
            async with runtime.store.transaction(readonly=True) as tx:
                record = await tx.devices.get(device.device_id)
            if record is None:
                return False
            record = runtime.sessions.presence.overlay(record)  # the describe is written behind
            modules = record.describe.get("modules") or []
            return any(m.get("u") == device.app_hash for m in modules if isinstance(m, dict))

        await wait_until(describes_new_app)
        assert device.updater.applied == 1
        # The reconnect's Hello said the update succeeded (Device OS clears the flag on the server Hello).
        assert runtime.gateway.updates.update_target(device.device_id).hello_flags & 0x01
        assert not device.hello.flags & 0x01
    finally:
        await device.stop()


async def test_the_limits_a_device_announces_bound_the_update(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription
) -> None:
    """spark/hardware/max_binary refuses a larger binary; spark/hardware/ota_chunk_size sets the chunks."""
    device = await updatable(client, ada, runtime, hardware_limits=(60_000, 256))
    try:
        too_big = await flash(client, ada, device.device_id, app_binary(100 * 1024))
        assert 400 == too_big.status_code
        assert (
            "The binary is 102400 bytes; the device takes at most 60000"
            == too_big.json()["error_description"]
        )
        image = app_binary(50_000)
        assert 200 == (await flash(client, ada, device.device_id, image)).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert (device.firmware, device.updater.chunk_size) == (image, 256)
    finally:
        await device.stop()


async def test_a_device_that_drops_mid_update_fails_it_and_comes_back_clean(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription
) -> None:
    device = await updatable(client, ada, runtime, updates=UpdateBehaviour(disconnect_after_chunks=50))
    try:
        assert 200 == (await flash(client, ada, device.device_id, app_binary())).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "failed " == (await next_status(statuses, device.device_id)).data
        await device.wait_connected(10)
        await wait_until(lambda: _true(runtime.gateway.control.is_online(device.device_id)))
        # The server is fine and the next update of the same device goes through.
        device.updater.behaviour = UpdateBehaviour()
        assert 200 == (await flash(client, ada, device.device_id, app_binary(seed=2))).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "success " == (await next_status(statuses, device.device_id)).data
    finally:
        await device.stop()


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("style", STYLES)
async def test_calls_and_variable_reads_are_answered_during_an_update(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription, style: ResponseStyle
) -> None:
    def setup(device: VirtualDevice) -> None:
        device.add_function("echo_len", lambda arg: len(arg))
        device.set_variable("temp", 21.5)

    plain = UpdateBehaviour(fast=False)  # one chunk per round trip: the update lasts
    device = await updatable(client, ada, runtime, style, setup=setup, updates=plain)
    try:
        assert 200 == (await flash(client, ada, device.device_id, app_binary(200 * 1024))).status_code
        assert runtime.gateway.updates.updating(device.device_id)
        call, read = await asyncio.gather(
            client.post(f"/v1/devices/{device.device_id}/echo_len", json={"arg": "abcd"}, headers=ada.auth),
            client.get(f"/v1/devices/{device.device_id}/temp", headers=ada.auth),
        )
        assert (200, 4) == (call.status_code, call.json()["return_value"])
        assert (200, 21.5) == (read.status_code, read.json()["result"])
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "success " == (await next_status(statuses, device.device_id)).data
    finally:
        await device.stop()


async def test_a_second_flash_during_an_update_is_refused_and_a_silent_device_times_out(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription, clock: FakeClock
) -> None:
    device = await updatable(client, ada, runtime)
    try:
        device.go_silent()  # reads nothing more: the update cannot progress
        assert 200 == (await flash(client, ada, device.device_id, app_binary())).status_code
        second = await flash(client, ada, device.device_id, app_binary(seed=3))
        assert 409 == second.status_code
        assert {
            "ok": False,
            "error": "Update in progress",
            "error_description": "An update of this device is already in progress",
        } == second.json()
        assert "started " == (await next_status(statuses, device.device_id)).data
        clock.advance(21)  # past the transfer's progress deadline (20 s), short of the link's idle one
        assert "failed " == (await next_status(statuses, device.device_id)).data
        assert not runtime.gateway.updates.updating(device.device_id)
    finally:
        await device.stop()


async def test_updates_of_the_same_binary_share_one_copy_of_it(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Each PUT uploads its own copy; the updates under way read one copy per distinct binary (by content), and
    it is let go when the last of them ends.
    """
    sent: dict[str, Image] = {}
    start = runtime.gateway.updates.start_update

    def spy(device_id: str, image: Image) -> Any:
        sent[device_id] = image
        return start(device_id, image)

    monkeypatch.setattr(runtime.gateway.updates, "start_update", spy)
    silent, same, other = [await updatable(client, ada, runtime) for _ in range(3)]
    image = app_binary()
    try:
        silent.go_silent()  # its update stays under way until the progress deadline
        for device, data in ((silent, image), (same, image), (other, app_binary(seed=9))):
            assert 200 == (await flash(client, ada, device.device_id, data)).status_code
        assert sent[silent.device_id] is sent[same.device_id]
        assert sent[other.device_id] is not sent[silent.device_id]
        assert image_bytes(sent[other.device_id]) == app_binary(seed=9)
        # Uploads past the spool size are sent from their file, not read into memory.
        assert all(isinstance(i, FileImage) and not i.closed for i in sent.values())
        await wait_until(lambda: _true(same.firmware == image and other.firmware == app_binary(seed=9)))
        await wait_until(lambda: _true(runtime.firmware.images.updates == 1))
        assert (runtime.firmware.images.distinct, runtime.firmware.images.nbytes) == (1, len(image))
        clock.advance(21)  # the silent device's update fails: nothing is held any more
        await wait_until(lambda: _true(runtime.firmware.images.distinct == 0))
        assert all(isinstance(i, FileImage) and i.closed for i in sent.values())  # descriptors back
    finally:
        for device in (silent, same, other):
            await device.stop()


async def test_a_device_with_updates_disabled_reports_a_failed_flash(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription
) -> None:
    device = await updatable(client, ada, runtime, updates=UpdateBehaviour(enabled=False))
    try:
        assert 200 == (await flash(client, ada, device.device_id, app_binary())).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "failed " == (await next_status(statuses, device.device_id)).data
        assert device.updater.applied == 0
    finally:
        await device.stop()


BINARY = app_binary()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(
            BINARY[:-2000], "The binary is truncated: shorter than its module prefix says", id="truncated"
        ),
        pytest.param(
            BINARY[:5000] + bytes([BINARY[5000] ^ 0xFF]) + BINARY[5001:],
            "The binary is corrupt: its CRC-32",
            id="corrupt",
        ),
        pytest.param(
            random.Random(4).randbytes(3000),
            "The binary is not a Particle firmware module",
            id="not-a-module",
        ),
        pytest.param(b"", "The binary is empty", id="empty"),
        pytest.param(
            app_binary(platform=12),
            "The binary is for platform 12, but the device is platform 6",
            id="platform",
        ),
        pytest.param(
            app_binary(dependencies=[Dependency(ModuleFunction.SYSTEM_PART, 1, 3005)]),
            "The binary needs Device OS system part 1 version 3005 or later; the device has version 2301",
            id="dependency",
        ),
        pytest.param(
            app_binary(function=ModuleFunction.SETTINGS),
            "The binary is a settings module, which cannot be flashed",
            id="function",
        ),
    ],
)
async def test_a_binary_that_does_not_fit_is_refused_before_anything_is_sent(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, data: bytes, reason: str
) -> None:
    device = await updatable(client, ada, runtime)
    try:
        reply = await flash(client, ada, device.device_id, data)
        assert 400 == reply.status_code, reply.text
        body = reply.json()
        assert (False, "invalid_binary") == (body["ok"], body["error"])
        assert body["error_description"].startswith(reason)
        assert not runtime.gateway.updates.updating(device.device_id)
        assert device.statistics().connects == 1  # nothing reached the device, it never reset
        assert device.updater.applied == device.updater.rejected == 0
    finally:
        await device.stop()


async def test_flash_needs_the_owner_and_a_connected_device(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    bob = await make_account(client, "bob@example.com")
    device = await updatable(client, ada, runtime)
    try:
        foreign = await flash(client, bob, device.device_id, BINARY)
        assert (403, "Permission Denied") == (foreign.status_code, foreign.json()["error"])
    finally:
        await device.stop()
    await wait_until(lambda: _true(not runtime.gateway.control.is_online(device.device_id)))
    offline = await flash(client, ada, device.device_id, BINARY)
    assert 404 == offline.status_code
    assert "Device is not connected" == offline.json()["error_description"]


async def test_sources_need_a_compile_backend(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    device = await updatable(client, ada, runtime)
    try:
        reply = await client.put(
            f"/v1/devices/{device.device_id}",
            files={"file": ("app.ino", b"void setup() {}\nvoid loop() {}\n", "text/plain")},
            data={"latest": "true"},
            headers=ada.auth,
        )
        assert 400 == reply.status_code
        body = reply.json()
        assert (False, "Compiler timed out or encountered an error") == (body["ok"], body["output"])
        assert "Cloud compile is not configured on this server" in body["errors"][0]
        assert device.statistics().connects == 1
    finally:
        await device.stop()
