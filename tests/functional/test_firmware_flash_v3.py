"""
OTA protocol v3 end to end: ``PUT /v1/devices/:id`` with a binary, the real gateway's UDP side, and a virtual
Gen3 device over DTLS that announces Hello flag 0x80, takes windowed NON chunks, answers with UpdateAck
bitmaps, checks and writes the image, and comes back running it; resume by SHA-256 after a disconnect; a
device error code; and a UDP device without the flag still taking the legacy protocol.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.devices import wait_until
from tests.support.flashing import flash, next_status

from devicecloud.bus.interfaces import Subscription
from devicecloud.domain.firmware import Dependency, ModuleFunction, build_module
from devicecloud.protocol.ota import OtaTransfer
from devicecloud.protocol.ota3 import Ota3Transfer
from devicecloud.runtime import Runtime
from devicecloud.store.keyfiles import load_or_create_udp_server_key
from devicecloud.virtualdevice import VirtualDevice
from devicecloud.virtualdevice.support import Backoff
from devicecloud.virtualdevice.updates import UpdateBehaviour

FAST_RECONNECT = Backoff(initial=0.01, maximum=0.05, jitter=False)
ARGON = 12


def app_binary(size: int = 100 * 1024, *, seed: int = 1) -> bytes:
    """An Argon user part of about ``size`` bytes needing system part 1 ≥ 207."""
    code = random.Random(seed).randbytes(size - 64)
    deps = [Dependency(ModuleFunction.SYSTEM_PART, 1, 207)]
    return build_module(code, platform_id=ARGON, dependencies=deps)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def statuses(runtime: Runtime) -> AsyncIterator[Subscription]:
    subscription = runtime.events.everything(max_pending=10_000)
    yield subscription
    subscription.close()


async def argon(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, *, ota_v3: bool = True, **options: Any
) -> VirtualDevice:
    """A virtual Argon over UDP/DTLS, registered and claimed by ``ada``, connected and described."""
    key = ec.generate_private_key(ec.SECP256R1())
    device_id = "e00fce68" + key.public_key().public_numbers().x.to_bytes(32, "big")[:8].hex()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sent = await client.post(
        f"/v1/provisioning/{device_id}",
        json={"deviceID": device_id, "publicKey": pem.decode(), "algorithm": "ecc"},
        headers=ada.auth,
    )
    assert 200 == sent.status_code, sent.text
    assert 200 == (await client.post("/v1/devices", json={"id": device_id}, headers=ada.auth)).status_code
    assert runtime.gateway.udp_port is not None
    device = VirtualDevice(
        "127.0.0.1",
        runtime.gateway.udp_port,
        device_id=device_id,
        device_key=key,
        server_public_key=load_or_create_udp_server_key(runtime.settings.data_dir).public_key(),
        platform_id=ARGON,
        protocol="udp",
        ota_v3=ota_v3,
        reconnect=True,
        backoff=FAST_RECONNECT,
        **options,
    )
    await device.start()
    await device.wait_connected(10)

    async def described() -> bool:
        async with runtime.store.transaction(readonly=True) as tx:
            record = await tx.devices.get(device_id)
        if record is None:
            return False
        record = runtime.sessions.presence.overlay(record)
        return record.online and "functions" in record.describe

    await wait_until(described)
    return device


async def run_update(runtime: Runtime, clock: FakeClock, device: VirtualDevice) -> None:
    """
    Let the update run to its end. Retransmissions run on the gateway's (fake) clock: a v3 transfer resends
    a chunk left unacknowledged for a second, a CON over UDP goes again after 3 s. Whenever the transfer
    has nothing to send and nothing moved on either side (datagrams in at the gateway, bytes in at the
    device, the transfer's counters) for a few looks in a row, that clock moves on by a second.
    """
    seen: tuple[int, ...] | None = None
    still = 0

    def transfer() -> Ota3Transfer | OtaTransfer | None:
        job = runtime.gateway.updates.job(device.device_id)
        return None if job is None or job.transfer.done else job.transfer

    async def ended_or_waiting() -> bool:
        nonlocal seen, still
        t = transfer()
        if t is None:
            return True
        stats = runtime.gateway.udp_statistics()
        assert stats is not None
        now = (
            t.chunks_sent,
            t.acks if isinstance(t, Ota3Transfer) else 0,
            t.finish_attempts,
            stats.datagrams,
            device.counters.bytes_received,
        )
        still = still + 1 if now == seen and not t.wants_to_send else 0
        seen = now
        return still >= 3

    while transfer() is not None:
        await wait_until(ended_or_waiting, timeout=20)
        still = 0
        if transfer() is not None:
            clock.advance(1.0)


async def test_a_100kb_binary_with_5_percent_of_datagrams_dropped_arrives_byte_identical_over_v3(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    statuses: Subscription,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    image = app_binary()
    written = tmp_path / "device" / "firmware.bin"
    lossy = UpdateBehaviour(drop_chunks=0.05, drop_seed=7)
    device = await argon(client, ada, runtime, updates=lossy, firmware_path=written)
    try:
        assert runtime.gateway.updates.update_target(device.device_id).hello_flags & 0x80
        reply = await flash(client, ada, device.device_id, image)
        assert 200 == reply.status_code, reply.text
        assert {"id": device.device_id, "status": "Update started"} == reply.json()
        job = runtime.gateway.updates.job(device.device_id)
        assert job is not None
        assert isinstance(job.transfer, Ota3Transfer)  # not the legacy protocol
        transfer = job.transfer
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert written.read_bytes() == image
        assert device.firmware == image
        counters = device.updater.ota_v3_counters
        chunks = -(-len(image) // 512)
        assert (transfer.chunk_count, transfer.offset) == (chunks, 0)
        assert counters.dropped > 0  # datagrams were lost, and made up for by resends
        assert transfer.chunks_resent >= counters.dropped
        assert transfer.chunks_sent == chunks + transfer.chunks_resent
        assert transfer.result is not None
        assert transfer.result.stats is not None
        assert transfer.result.stats["recv_chunks"] == counters.chunks_received
        # It reset and came back with the new application's hash in its Describe.
        await device.wait_connected(10)

        async def describes_new_app() -> bool:
            async with runtime.store.transaction(readonly=True) as tx:
                record = await tx.devices.get(device.device_id)
            if record is None:
                return False
            record = runtime.sessions.presence.overlay(record)
            modules = record.describe.get("modules") or []
            return any(m.get("u") == device.app_hash for m in modules if isinstance(m, dict))

        await wait_until(describes_new_app)
        assert device.updater.applied == 1
        assert runtime.gateway.updates.update_target(device.device_id).hello_flags & 0x01
    finally:
        await device.stop()


async def test_an_interrupted_update_resumes_by_sha256_and_sends_only_the_rest(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    statuses: Subscription,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    image = app_binary()
    chunks = -(-len(image) // 512)
    written = tmp_path / "firmware.bin"
    plug_pulled = UpdateBehaviour(disconnect_after_chunks=80)
    device = await argon(client, ada, runtime, updates=plug_pulled, firmware_path=written)
    try:
        assert 200 == (await flash(client, ada, device.device_id, image)).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "failed " == (await next_status(statuses, device.device_id)).data
        counters = device.updater.ota_v3_counters
        first_pass = counters.chunks_received
        assert 80 == first_pass
        await device.wait_connected(10)
        await wait_until(lambda: _true(runtime.gateway.control.is_online(device.device_id)))

        device.updater.behaviour = UpdateBehaviour()
        assert 200 == (await flash(client, ada, device.device_id, image)).status_code
        job = runtime.gateway.updates.job(device.device_id)
        assert job is not None
        transfer = job.transfer
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert isinstance(transfer, Ota3Transfer)
        # The device held the first 80 chunks of this very file (same SHA-256): only the rest was sent.
        assert 80 * 512 == transfer.offset == counters.resumed_from
        assert chunks - 80 == transfer.chunk_count == transfer.chunks_sent
        assert chunks - 80 == counters.chunks_received - first_pass
        assert written.read_bytes() == image
    finally:
        await device.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_different_file_does_not_resume(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription, clock: FakeClock
) -> None:
    device = await argon(client, ada, runtime, updates=UpdateBehaviour(disconnect_after_chunks=30))
    try:
        assert 200 == (await flash(client, ada, device.device_id, app_binary(seed=1))).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        assert "failed " == (await next_status(statuses, device.device_id)).data
        await device.wait_connected(10)
        await wait_until(lambda: _true(runtime.gateway.control.is_online(device.device_id)))
        device.updater.behaviour = UpdateBehaviour()
        assert 200 == (await flash(client, ada, device.device_id, app_binary(seed=2))).status_code
        job = runtime.gateway.updates.job(device.device_id)
        assert job is not None
        assert isinstance(job.transfer, Ota3Transfer)
        transfer = job.transfer
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert (0, 0) == (transfer.offset, device.updater.ota_v3_counters.resumed_from)
    finally:
        await device.stop()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        pytest.param(
            UpdateBehaviour(enabled=False),
            "the device refused the update: updates are disabled on the device (error -1380, 5.03)",
            id="updates-disabled",
        ),
        pytest.param(
            UpdateBehaviour(corrupt_at=7000),  # its flash garbles a byte: its own CRC/SHA check fails
            "the device rejected the image: integrity check failed (error -1330, 5.03)",
            id="integrity",
        ),
    ],
)
async def test_a_device_error_code_fails_the_update_with_its_reason(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    statuses: Subscription,
    clock: FakeClock,
    behaviour: UpdateBehaviour,
    reason: str,
) -> None:
    device = await argon(client, ada, runtime, updates=behaviour)
    try:
        assert 200 == (await flash(client, ada, device.device_id, app_binary())).status_code
        job = runtime.gateway.updates.job(device.device_id)
        assert job is not None
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "failed " == (await next_status(statuses, device.device_id)).data
        # The reason the gateway logs with "update failed" (a log capture misses loggers cached earlier in
        # the same process, so the outcome is read where the log line takes it from).
        assert (False, reason) == ((outcome := await job.finished()).ok, outcome.reason)
        assert device.updater.applied == 0
        assert device.connected  # a v3 device never resets on a failed update
    finally:
        await device.stop()


async def test_a_udp_device_without_the_v3_flag_keeps_the_legacy_protocol(
    client: httpx.AsyncClient,
    ada: Account,
    runtime: Runtime,
    statuses: Subscription,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    image = app_binary()
    written = tmp_path / "firmware.bin"
    device = await argon(client, ada, runtime, ota_v3=False, firmware_path=written)
    try:
        assert not runtime.gateway.updates.update_target(device.device_id).hello_flags & 0x80
        assert 200 == (await flash(client, ada, device.device_id, image)).status_code
        job = runtime.gateway.updates.job(device.device_id)
        assert job is not None
        assert isinstance(job.transfer, OtaTransfer)
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "success " == (await next_status(statuses, device.device_id)).data
        assert written.read_bytes() == image
        assert 0 == device.updater.ota_v3_counters.starts
    finally:
        await device.stop()


async def test_a_silent_v3_device_fails_the_update_on_the_gateways_clock_and_a_second_flash_waits(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription, clock: FakeClock
) -> None:
    device = await argon(client, ada, runtime)
    try:
        device.go_silent()  # reads nothing more: UpdateStart is never answered
        assert 200 == (await flash(client, ada, device.device_id, app_binary())).status_code
        assert 409 == (await flash(client, ada, device.device_id, app_binary(seed=3))).status_code
        assert "started " == (await next_status(statuses, device.device_id)).data
        clock.advance(29)
        assert runtime.gateway.updates.updating(device.device_id)
        clock.advance(2)  # past the 30 s the device has to answer, short of the link's idle deadline
        assert "failed " == (await next_status(statuses, device.device_id)).data
        assert not runtime.gateway.updates.updating(device.device_id)
        assert runtime.gateway.control.is_online(device.device_id)
    finally:
        await device.stop()


async def test_a_product_release_reaches_a_v3_device_the_usual_way(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime, statuses: Subscription, clock: FakeClock
) -> None:
    body = {"name": "Argons", "platform_id": ARGON, "settings": {"quarantine": False}}
    created = await client.post("/v1/products", json=body, headers=ada.auth)
    assert 201 == created.status_code, created.text
    product_id = created.json()["product"]["id"]
    code = b"application of the Argon fleet, version 2" * 40
    image = build_module(code, platform_id=ARGON, product=(product_id, 2))
    uploaded = await client.post(
        f"/v1/products/{product_id}/firmware",
        data={"version": "2", "title": "Version 2"},
        files={"binary": ("firmware.bin", image, "application/octet-stream")},
        headers=ada.auth,
    )
    assert 201 == uploaded.status_code, uploaded.text
    # A version is released only once a device of the product runs it (decision 0025's release rule).
    veteran = await argon(client, ada, runtime, product_id=product_id, product_firmware_version=2)
    await runtime.sessions.presence.flush()
    released = await client.put(
        f"/v1/products/{product_id}/firmware/release",
        json={"version": 2, "product_default": True},
        headers=ada.auth,
    )
    assert 200 == released.status_code, released.text
    await veteran.stop()
    device = await argon(client, ada, runtime, product_id=product_id, product_firmware_version=1)
    try:
        await runtime.sessions.presence.flush()
        clock.advance(runtime.settings.release_delay)  # "a few seconds after the handshake"
        assert "started " == (await next_status(statuses, device.device_id)).data
        await run_update(runtime, clock, device)
        assert "success " == (await next_status(statuses, device.device_id)).data
        await wait_until(lambda: _true(device.hello.product_firmware_version == 2 and device.connected))
        assert device.firmware == image
        assert 1 == device.updater.ota_v3_counters.starts  # over v3, not the legacy protocol
    finally:
        await device.stop()
