"""
The OTA v3 sender (`protocol.ota3.Ota3Transfer`) against a device-role UDP session, sans-IO: the injected
time is the only clock, the "device" below answers by hand, chunk losses are chosen per index.
"""

from __future__ import annotations

import hashlib
import random

from tests.unit.protocol.test_udp_session import Pair

from devicecloud.protocol import Event
from devicecloud.protocol.commands import (
    AcceptUpdateStart,
    RespondOtaError,
    RespondUpdateFinish,
    SendUpdateAck,
)
from devicecloud.protocol.events import (
    UpdateChunkArrived,
    UpdateFinishRequested,
    UpdateStartRequested,
)
from devicecloud.protocol.ota3 import Ota3Options, Ota3Phase, Ota3Transfer

IMAGE = random.Random(3).randbytes(40 * 512 + 100)  # 41 chunks, the last one short


class Device:
    """A hand-driven device: holds chunks, acks each arrival, loses the chunk arrivals it is told to."""

    def __init__(
        self, pair: Pair, *, window: int = 256, offset: int = 0, lose: set[int] | None = None
    ) -> None:
        self.pair, self.window, self.offset = pair, window, offset
        self.lose = dict.fromkeys(lose or set(), 1)  # index → arrivals still to lose
        self.data: dict[int, bytes] = {}
        self.arrivals: list[int] = []
        self.finish: UpdateFinishRequested | None = None
        self.refuse: int | None = None
        self.silent = False

    def cumulative(self) -> int:
        n = 0
        while n + 1 in self.data:
            n += 1
        return n

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, UpdateStartRequested):
                if self.refuse is not None:
                    self.pair.device.send(RespondOtaError(event.request_id, self.refuse, "no"), self.pair.now)
                else:
                    self.pair.device.send(
                        AcceptUpdateStart(event.request_id, self.window, self.offset), self.pair.now
                    )
            elif isinstance(event, UpdateChunkArrived):
                if self.lose.get(event.index):
                    self.lose[event.index] -= 1
                    continue
                self.arrivals.append(event.index)
                self.data[event.index] = event.data
                if not self.silent:
                    cumulative = self.cumulative()
                    held = frozenset(i for i in self.data if i > cumulative)
                    self.pair.device.send(SendUpdateAck(cumulative, held), self.pair.now)
            elif isinstance(event, UpdateFinishRequested):
                self.finish = event
                if not self.silent:
                    stats = b'{"recv_chunks":%d}' % len(self.arrivals)
                    self.pair.device.send(RespondUpdateFinish(event.request_id, stats), self.pair.now)


def run(pair: Pair, device: Device, transfer: Ota3Transfer, *, until: float = 60.0) -> None:
    """Pump both sides, feeding the transfer; move the injected time to its timer when it is idle."""
    assert pair.cloud is not None
    seen_cloud = seen_device = 0
    while not transfer.done and pair.now <= until:
        transfer.send(pair.cloud, pair.now, 8)
        pair.pump()
        device.handle(pair.device_events[seen_device:])
        seen_device = len(pair.device_events)
        pair.pump()
        for event in pair.cloud_events[seen_cloud:]:
            transfer.handle_event(pair.cloud, event, pair.now)
        seen_cloud = len(pair.cloud_events)
        if not transfer.wants_to_send and not transfer.done:
            timer = transfer.get_timer()
            assert timer is not None
            pair.now = max(pair.now, timer)
            transfer.handle_timer(pair.cloud, pair.now)


def connected() -> Pair:
    pair = Pair()
    pair.pump()
    pair.accept()
    return pair


def image_of(device: Device) -> bytes:
    return b"".join(device.data[i] for i in sorted(device.data))


def test_losses_evidenced_by_the_bitmap_are_resent_at_once_and_the_tail_after_resend_after() -> None:
    pair = connected()
    device = Device(pair, lose={3, 17, 41})  # 41 is the last chunk: nothing after it tells it was lost
    transfer = Ota3Transfer(IMAGE)
    assert pair.cloud is not None
    transfer.start(pair.cloud, pair.now)
    run(pair, device, transfer)
    assert transfer.phase is Ota3Phase.DONE, transfer.result
    assert image_of(device) == IMAGE
    assert (41, 44, 3) == (transfer.chunk_count, transfer.chunks_sent, transfer.chunks_resent)
    assert transfer.result is not None
    assert {"recv_chunks": 41} == transfer.result.stats
    # 3 and 17 went again on the bitmap's evidence, without waiting; only the tail needed the 1 s timer.
    assert 1.0 == pair.now
    assert device.finish is not None
    assert not device.finish.cancel


def test_the_window_bounds_what_is_in_flight() -> None:
    pair = connected()
    device = Device(pair, window=4)
    device.silent = True  # holds chunks and says nothing
    transfer = Ota3Transfer(IMAGE)
    assert pair.cloud is not None
    transfer.start(pair.cloud, pair.now)
    pair.pump()
    device.handle(pair.device_events)
    pair.pump()
    for event in pair.cloud_events:
        transfer.handle_event(pair.cloud, event, pair.now)
    assert transfer.wants_to_send
    transfer.send(pair.cloud, pair.now, 100)
    assert not transfer.wants_to_send
    assert 4 == transfer.chunks_sent  # chunks 1–4; the device ignores anything past its window


def test_a_resumed_update_sends_only_the_rest_numbered_from_one() -> None:
    pair = connected()
    device = Device(pair, offset=30 * 512)
    transfer = Ota3Transfer(IMAGE)
    assert pair.cloud is not None
    transfer.start(pair.cloud, pair.now)
    run(pair, device, transfer)
    assert transfer.phase is Ota3Phase.DONE
    assert (30 * 512, 11, 11) == (transfer.offset, transfer.chunk_count, transfer.chunks_sent)
    assert list(range(1, 12)) == device.arrivals
    assert image_of(device) == IMAGE[30 * 512 :]
    start = next(e for e in pair.device_events if isinstance(e, UpdateStartRequested))
    assert (len(IMAGE), 512, hashlib.sha256(IMAGE).digest()) == (
        start.file_size,
        start.chunk_size,
        start.sha256,
    )


def test_a_device_error_code_fails_with_its_meaning() -> None:
    pair = connected()
    device = Device(pair)
    device.refuse = -1380
    transfer = Ota3Transfer(IMAGE)
    assert pair.cloud is not None
    transfer.start(pair.cloud, pair.now)
    run(pair, device, transfer)
    assert transfer.result is not None
    assert (
        False,
        "the device refused the update: updates are disabled on the device (error -1380, 5.03)",
    ) == (
        transfer.result.ok,
        transfer.result.reason,
    )
    assert 0 == transfer.chunks_sent


def test_a_device_that_stops_acknowledging_fails_the_update_and_is_told_to_cancel() -> None:
    pair = connected()
    device = Device(pair)
    device.lose = dict.fromkeys(range(1, 42), 1000)  # every chunk lost, every time
    transfer = Ota3Transfer(IMAGE, Ota3Options(progress_timeout=30.0))
    assert pair.cloud is not None
    transfer.start(pair.cloud, pair.now)
    run(pair, device, transfer)
    assert transfer.result is not None
    assert (False, "the device made no progress for 30 s") == (transfer.result.ok, transfer.result.reason)
    assert 30.0 == pair.now
    pair.pump()
    (cancel,) = [e for e in pair.device_events if isinstance(e, UpdateFinishRequested)]
    assert cancel.cancel
