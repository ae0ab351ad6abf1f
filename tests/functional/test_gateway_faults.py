"""
The device gateway under misbehaving peers: each bad link closes alone, and a witness device on the same
gateway keeps working; many links opened and dropped leave no task or file descriptor behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
import structlog
from tests.support.clock import FakeClock
from tests.support.gateway_fakes import (
    GUARD,
    NO_TIMERS,
    DeviceApp,
    FakeSessions,
    TestDevice,
    connected_device,
    device_id,
    device_key,
    running_gateway,
    server_key,
    until,
)

from devicecloud.gateway import DeviceGateway
from devicecloud.protocol import Connection, PublishEvent, Role, public_key_der

TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
WITNESS = 99


@pytest.fixture
def sessions() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
async def gateway(sessions: FakeSessions, clock: FakeClock) -> AsyncIterator[DeviceGateway]:
    async with running_gateway(
        sessions, clock, max_links=400, handshake_timeout=HANDSHAKE_TIMEOUT, idle_timeout=35.0
    ) as gw:
        yield gw


@pytest.fixture
async def witness(gateway: DeviceGateway, sessions: FakeSessions) -> AsyncIterator[TestDevice]:
    dev = await connected_device(gateway, sessions, TestDevice(WITNESS, DeviceApp(functions={"len": len})))
    yield dev
    await dev.close()


async def assert_witness_works(gateway: DeviceGateway, witness: TestDevice) -> None:
    assert 3 == await gateway.control.call_function(witness.id, "len", "abc", timeout=TIMEOUT)


async def open_raw(gateway: DeviceGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A bare socket to the gateway, with the 40-byte nonce read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    async with asyncio.timeout(GUARD):
        nonce = await reader.readexactly(40)
    return reader, writer, nonce


async def assert_closed_by_gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The gateway closes the socket: our reads reach EOF."""
    try:
        async with asyncio.timeout(GUARD):
            while await reader.read(65536):
                pass
    except ConnectionResetError:
        pass  # closed all the same
    finally:
        writer.close()
        await writer.wait_closed()


def warnings_in(logs: Sequence[Mapping[str, object]]) -> list[str]:
    return [str(entry["event"]) for entry in logs if entry["log_level"] == "warning"]


async def test_garbage_before_the_handshake(gateway: DeviceGateway, witness: TestDevice) -> None:
    """256 random bytes instead of the device block: that link closes with one WARNING line."""
    with structlog.testing.capture_logs() as logs:
        reader, writer, _ = await open_raw(gateway)
        writer.write(random.randbytes(256))
        await assert_closed_by_gateway(reader, writer)
        await until(lambda: 1 == gateway.statistics().links)
    assert ["device broke the protocol; link closed"] == warnings_in(logs)
    assert 1 == gateway.statistics().protocol_errors
    await assert_witness_works(gateway, witness)


async def test_garbage_after_the_handshake(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """A frame that does not decrypt ends an established link, which is reported offline once."""
    dev = await connected_device(gateway, sessions, TestDevice(1))
    dev.write(b"\x00\x20" + random.randbytes(32))
    await dev.wait_closed()
    await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", dev.id))
    assert 1 == gateway.statistics().protocol_errors
    await assert_witness_works(gateway, witness)


async def test_truncated_frame_then_eof(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """A frame cut short by the peer closing: the link ends cleanly and the device goes offline."""
    dev = await connected_device(gateway, sessions, TestDevice(2))
    dev.write(b"\x00\x20" + b"\x01" * 10)
    await dev.close()
    await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", dev.id))
    await assert_witness_works(gateway, witness)


async def test_truncated_frame_then_silence(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions, clock: FakeClock
) -> None:
    """A frame cut short by a peer that then stays silent: dropped at the idle deadline."""
    dev = await connected_device(gateway, sessions, TestDevice(3))
    dev.silent = True
    dev.write(b"\x00\x20" + b"\x01" * 10)
    await gateway.control.ping(witness.id, timeout=TIMEOUT)  # the gateway has read the partial frame by now
    clock.advance(35.0)
    await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", dev.id))
    await dev.close()


async def test_truncated_handshake_block(gateway: DeviceGateway, witness: TestDevice) -> None:
    """Half a device block and EOF: a failed handshake, nothing else touched."""
    reader, writer, _ = await open_raw(gateway)
    writer.write(random.randbytes(100))
    writer.write_eof()
    await assert_closed_by_gateway(reader, writer)
    await until(lambda: 1 == gateway.statistics().handshakes_failed)
    await assert_witness_works(gateway, witness)


async def test_handshake_deadline(gateway: DeviceGateway, witness: TestDevice, clock: FakeClock) -> None:
    """A peer that takes the nonce and says nothing is dropped at the handshake deadline."""
    reader, writer, _ = await open_raw(gateway)
    clock.advance(HANDSHAKE_TIMEOUT)
    await assert_closed_by_gateway(reader, writer)
    await assert_witness_works(gateway, witness)


async def test_wrong_device_key(gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions) -> None:
    """A device holding another key cannot finish the handshake; it is never reported connected."""
    impostor = TestDevice(4, key=device_key(5))
    sessions.keys[impostor.id] = public_key_der(device_key(4).public_key())
    await impostor.connect(gateway.port)
    await impostor.wait_closed()
    assert impostor.error is not None
    await until(lambda: 1 == gateway.statistics().handshakes_failed)
    assert 0 == sessions.count("device_connected", impostor.id)
    await assert_witness_works(gateway, witness)


async def test_unknown_device_is_refused(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """When services know no key for the device, the gateway refuses it and closes the link."""
    stranger = TestDevice(6)
    await stranger.connect(gateway.port)
    await stranger.wait_closed()
    assert 1 == sessions.count("check_device_key", stranger.id)
    assert 0 == sessions.count("device_connected", stranger.id)
    await assert_witness_works(gateway, witness)


async def test_replayed_handshake(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """A device block recorded on one connection is refused on another (it embeds the first nonce)."""
    sessions.register(device_id(7), device_key(7))
    recorder = Connection(
        Role.DEVICE,
        now=0.0,
        server_public_key=server_key().public_key(),
        device_private_key=device_key(7),
        device_id=device_id(7),
        timing=NO_TIMERS,
    )
    _, first_writer, nonce = await open_raw(gateway)
    recorder.receive_data(nonce, 0.0)
    block = recorder.data_to_send()
    first_writer.write(block)
    replay_reader, replay_writer, _ = await open_raw(gateway)
    replay_writer.write(block)
    await assert_closed_by_gateway(replay_reader, replay_writer)
    first_writer.close()
    await first_writer.wait_closed()
    await until(lambda: 1 == gateway.statistics().links)
    assert 1 == gateway.statistics().protocol_errors
    assert 1 == sessions.count("check_device_key", device_id(7))
    await assert_witness_works(gateway, witness)


async def test_bad_message_counter(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """A device message whose id skips one breaks the +1 rule: that link closes."""
    dev = await connected_device(gateway, sessions, TestDevice(8))
    dev.conn._ids.next()  # white-box: the device loses one id (no public way to misbehave)
    dev.send(PublishEvent("oops"))
    await dev.wait_closed()
    await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", dev.id))
    assert 1 == gateway.statistics().protocol_errors
    await assert_witness_works(gateway, witness)


async def test_failing_service_closes_only_that_link(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """An exception from DeviceSessions ends that device's link with one ERROR line, and nothing else."""
    sessions.fail_on = ("device_connected", device_id(12))
    dev = TestDevice(12)
    sessions.register(dev.id, device_key(12))
    with structlog.testing.capture_logs() as logs:
        await dev.connect(gateway.port)
        await dev.wait_closed()
        await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", dev.id))
    assert ["device link failed"] == [e["event"] for e in logs if e["log_level"] == "error"]
    await assert_witness_works(gateway, witness)


async def test_second_connection_replaces_the_first(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions
) -> None:
    """The same device connecting again closes its old link without being reported offline."""
    first = await connected_device(
        gateway, sessions, TestDevice(9, DeviceApp(functions={"which": lambda _: 1}))
    )
    second = TestDevice(9, DeviceApp(functions={"which": lambda _: 2}))
    await second.connect(gateway.port)
    await second.online()
    await first.wait_closed()
    await until(lambda: 2 == gateway.statistics().links)
    assert 2 == await gateway.control.call_function(second.id, "which", "", timeout=TIMEOUT)
    assert (2, 0) == (
        sessions.count("device_connected", second.id),
        sessions.count("device_disconnected", second.id),
    )
    assert 1 == gateway.statistics().replaced
    await second.close()
    await sessions.wait_for(lambda: 1 == sessions.count("device_disconnected", second.id))
    assert second.id not in sessions.online


async def test_link_cap(sessions: FakeSessions, clock: FakeClock) -> None:
    """Beyond max_links a new socket is closed at once, without a nonce; a freed slot is reused."""
    async with running_gateway(sessions, clock, max_links=2) as gateway:
        held = [await open_raw(gateway) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        assert b"" == await reader.read(40)
        writer.close()
        await writer.wait_closed()
        assert 1 == gateway.statistics().refused
        _, held_writer, _ = held.pop()
        held_writer.close()
        await held_writer.wait_closed()
        await until(lambda: 1 == gateway.statistics().links)
        held.append(await open_raw(gateway))
        for _, w, _ in held:
            w.close()
            await w.wait_closed()
        assert 1 == gateway.statistics().refused


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def churn_one(gateway: DeviceGateway, sessions: FakeSessions, rng: random.Random) -> None:
    """Open one link and drop it in one of several ways."""
    action = rng.choice(["drop", "garbage", "half", "reset", "device", "device-garbage"])
    if action.startswith("device"):
        dev = TestDevice(rng.randrange(100, 104))
        await dev.connect(gateway.port)
        await dev.online()
        if action == "device-garbage":
            dev.write(random.randbytes(40))
        await dev.close()
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    if action != "drop":
        await reader.readexactly(40)
        writer.write(random.randbytes(256 if action == "garbage" else 77))
    if action == "reset":
        writer.transport.abort()
    else:
        writer.close()
    with contextlib.suppress(OSError):  # a reset socket
        await writer.wait_closed()


@pytest.mark.slow
async def test_links_opened_and_dropped_at_random_leave_nothing_behind(
    gateway: DeviceGateway, witness: TestDevice, sessions: FakeSessions, clock: FakeClock
) -> None:
    """1,000 links opened and dropped at random: tasks, fds and timers return to baseline; witness works."""
    for n in range(100, 104):
        sessions.register(device_id(n), device_key(n))
    await assert_witness_works(gateway, witness)
    tasks, fds = len(asyncio.all_tasks()), open_fds()
    rng = random.Random(1234)
    for _ in range(50):
        await asyncio.gather(*(churn_one(gateway, sessions, rng) for _ in range(20)))
    await until(lambda: 1 == gateway.statistics().links)
    await until(lambda: len(asyncio.all_tasks()) == tasks and open_fds() == fds)
    stats = gateway.statistics()
    assert 1001 == stats.accepted
    assert 1001 == stats.handshakes_ok + stats.handshakes_failed
    assert 1 == stats.online
    assert 1 == clock.pending_timers()  # the witness link's timer, and nothing left by the others
    await assert_witness_works(gateway, witness)
