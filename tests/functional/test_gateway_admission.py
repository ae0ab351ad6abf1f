"""
Admission control: in a connect storm the gateway works on a bounded number of handshakes, and every other
connection waits unread in the kernel's listen backlog until a handshake ends (decision 0014).
"""

from __future__ import annotations

import asyncio

from tests.support.clock import FakeClock
from tests.support.gateway_fakes import (
    FakeSessions,
    TestDevice,
    device_key,
    running_gateway,
    until,
)

from devicecloud.protocol import public_key_der

SLOTS = 4
EXTRA = 6
HANDSHAKE_TIMEOUT = 10.0


class GatedSessions(FakeSessions):
    """
    Key checks wait at a gate: a handshake admitted by the gateway stops there and can be counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def check_device_key(self, device_id: str, offered: bytes, ip_address: str | None) -> bytes | None:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().check_device_key(device_id, offered, ip_address)


def registered(sessions: FakeSessions, n: int) -> TestDevice:
    device = TestDevice(n)
    sessions.keys[device.id] = public_key_der(device_key(n).public_key())
    return device


async def test_a_storm_is_admitted_slots_at_a_time_and_all_connect(clock: FakeClock) -> None:
    """N + k devices at once with N slots: N handshakes run, k wait in the backlog; then all come online."""
    sessions = GatedSessions()
    async with running_gateway(sessions, clock, handshake_slots=SLOTS) as gateway:
        devices = [registered(sessions, n) for n in range(SLOTS + EXTRA)]
        for device in devices:
            await device.connect(gateway.port)  # TCP is up: the kernel took the connection either way

        # The first N reached the key check; the rest were never accepted, so they got no nonce.
        await until(lambda: sessions.waiting == SLOTS and gateway.statistics().handshakes_queued == EXTRA)
        stats = gateway.statistics()
        assert (SLOTS, SLOTS, SLOTS) == (stats.handshake_slots, stats.handshakes_in_progress, stats.accepted)

        sessions.gate.set()
        for device in devices:
            await device.online()
        await until(lambda: gateway.statistics().handshakes_in_progress == 0)
        stats = gateway.statistics()
        assert SLOTS + EXTRA == stats.handshakes_ok == len(sessions.online)
        assert SLOTS == stats.handshakes_in_progress_peak == sessions.most_waiting
        assert 0 == stats.handshakes_queued
        for device in devices:
            await device.close()


async def test_a_silent_socket_holds_its_slot_only_until_the_handshake_deadline(clock: FakeClock) -> None:
    """Peers that take the nonce and say nothing fill the slots; the deadline frees them for a device."""
    sessions = FakeSessions()
    async with running_gateway(
        sessions, clock, handshake_slots=2, handshake_timeout=HANDSHAKE_TIMEOUT
    ) as gateway:
        silent = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(2)]
        for reader, _ in silent:
            assert 40 == len(await reader.readexactly(40))
        device = registered(sessions, 1)
        await device.connect(gateway.port)
        await until(lambda: gateway.statistics().handshakes_queued == 1)
        assert 2 == gateway.statistics().handshakes_in_progress
        assert device.id not in sessions.online

        clock.advance(HANDSHAKE_TIMEOUT)
        for reader, _ in silent:
            assert b"" == await reader.read()  # dropped at the deadline
        await device.online()
        await until(lambda: gateway.statistics().handshakes_in_progress == 0)
        stats = gateway.statistics()
        assert (2, 1) == (stats.handshakes_failed, stats.handshakes_ok)
        for _, writer in silent:
            writer.close()
        await device.close()


async def test_a_failed_handshake_frees_its_slot(clock: FakeClock) -> None:
    """With one slot, a peer that sends garbage and one that hangs up do not keep the next device out."""
    sessions = FakeSessions()
    async with running_gateway(sessions, clock, handshake_slots=1) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        await reader.readexactly(40)
        writer.write(bytes(256))
        assert b"" == await reader.read()
        writer.close()
        _, hangs_up = await asyncio.open_connection("127.0.0.1", gateway.port)
        hangs_up.close()
        device = registered(sessions, 2)
        await device.connect(gateway.port)
        await device.online()
        await until(lambda: gateway.statistics().handshakes_in_progress == 0)
        assert 1 == gateway.statistics().handshakes_in_progress_peak
        await device.close()
