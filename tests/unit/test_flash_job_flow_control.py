"""
`gateway.flash.FlashJob`'s flow control, with the socket's write buffer under the test's control: an update
never queues much more than `QUEUE_BYTES`, stops writing while the device reads nothing, and carries on
when it reads again. And `DeviceFacts`, what a link learns for an update.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tests.support.clock import FakeClock
from tests.unit.protocol.conftest import keys  # noqa: F401 - the session's RSA keys, as a fixture
from tests.unit.protocol.test_ota_transfer import Device
from tests.unit.protocol.test_protocol_connection import ConnectionPair

from devicecloud.gateway.flash import BATCH, QUEUE_BYTES, DeviceFacts, FlashJob
from devicecloud.protocol import (
    NEED_DATA,
    Connection,
    Description,
    Event,
    EventPublished,
    HelloReceived,
    ResponseStyle,
    Timing,
)
from devicecloud.protocol.ota import OtaOptions, OtaTransfer

IMAGE = random.Random(9).randbytes(300 * 1024)
# A chunk message on the wire: 512 bytes of data, CoAP header and options, padding, the length prefix.
MESSAGE = 512 + 48


class Transport:
    """A socket write buffer the test drains by hand."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.most = 0
        self.low = 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.low = low or 0

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)


class Writer:
    def __init__(self) -> None:
        self.transport = Transport()
        self.drained = asyncio.Event()

    async def drain(self) -> None:
        while len(self.transport.buffer) > self.transport.low:
            self.drained.clear()
            await self.drained.wait()


class Link:
    """What a job needs of a link: the connection, the writer, transmit (which offers events to the job)."""

    device_id = "0123456789abcdef01234567"

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.writer = Writer()
        self.update: FlashJob | None = None

    def transmit(self) -> None:
        transport = self.writer.transport
        transport.buffer += self.connection.data_to_send()
        transport.most = max(transport.most, len(transport.buffer))
        while (event := self.connection.next_event()) is not NEED_DATA:
            if self.update is not None and isinstance(event, Event):
                self.update.offer(event)


def deliver(p: ConnectionPair, link: Link, device: Device, size: int) -> None:
    """The device reads ``size`` bytes of the buffer and answers; its answers reach the cloud."""
    transport = link.writer.transport
    data, transport.buffer[:size] = bytes(transport.buffer[:size]), b""
    if data:
        p.device.receive_data(data, p.now)
    while (event := p.device.next_event()) is not NEED_DATA:
        assert isinstance(event, Event)
        device.handle(p, event)
    answer = p.device.data_to_send()
    if answer:
        p.cloud.receive_data(answer, p.now)
    link.transmit()
    link.writer.drained.set()


async def test_an_update_never_queues_more_than_its_share_and_waits_for_a_silent_device(
    keys: Any,  # noqa: F811
) -> None:
    p = ConnectionPair(keys, style=ResponseStyle.SEPARATE, cloud_timing=Timing(ping_after=None))
    p.pump()
    device = Device(legacy=False, lose={3, 77})
    link = Link(p.cloud)
    transfer = OtaTransfer(IMAGE, OtaOptions(device_finishes_alone=False))
    job = FlashJob(link, transfer, FakeClock())  # type: ignore[arg-type]
    link.update = job
    job.begin()
    running = asyncio.create_task(job.run())
    bound = QUEUE_BYTES + BATCH * MESSAGE
    silent_checked = False
    for step in range(5000):
        if running.done():
            break
        if 20 <= step < 80:  # the device stops reading for a while: the job fills its share, then waits
            await asyncio.sleep(0)
            assert len(link.writer.transport.buffer) <= bound
            silent_checked = len(link.writer.transport.buffer) >= QUEUE_BYTES
            continue
        deliver(p, link, device, 2048)
        await asyncio.sleep(0)
    outcome = await asyncio.wait_for(job.finished(), 5)
    assert outcome.ok, outcome
    assert bytes(device.buffer) == IMAGE
    assert silent_checked
    assert link.writer.transport.most <= bound, link.writer.transport.most
    assert job.transfer.chunks_resent == 2


def test_device_facts_take_the_limits_from_events_or_the_hello_and_bound_the_chunk_size() -> None:
    facts = DeviceFacts()
    facts.on_hello(HelloReceived(6, 6, 0x40, 6))
    assert (facts.target().max_binary, facts.chunk_size, facts.finishes_alone()) == (None, None, None)
    facts.on_event(EventPublished("spark/hardware/max_binary", b"102400", True, 60, False))
    facts.on_event(EventPublished("spark/hardware/ota_chunk_size", b"4096", True, 60, False))
    facts.on_event(EventPublished("spark/hardware/max_binary", b"lots", True, 60, False))  # ignored
    assert (facts.target().max_binary, facts.chunk_size, facts.target().hello_flags) == (102400, 594, 0x40)
    facts.on_describe(Description(modules=({"f": "s", "n": "1", "v": 207},)))
    assert facts.finishes_alone() is True  # Device OS 0.7 finishes a fast update by itself
    newer = DeviceFacts()
    limits = {"system_version": 3005, "max_binary": 1_572_864, "ota_chunk_size": 512}
    newer.on_hello(HelloReceived(6, 6, 0, 6, **limits))
    assert (newer.target().max_binary, newer.chunk_size, newer.finishes_alone()) == (1_572_864, 512, False)
