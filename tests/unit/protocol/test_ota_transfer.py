"""
`OtaTransfer` against a device-role Connection in memory: both response styles, lost chunks (several per
ChunkMissed, more than fit in one), plain OTA with bad CRCs, refusals, results and timeouts.

The device side here is a few lines written from the reference's tables (not the virtual device), so a
mistake shared by both ends of the project would still show.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.unit.protocol.test_protocol_connection import ConnectionPair

from devicecloud.protocol import (
    AcceptUpdate,
    ChunkArrived,
    Code,
    ConnectionState,
    Event,
    RejectRequest,
    ReportMissedChunks,
    ReportUpdateDone,
    RespondChunk,
    RespondUpdateDone,
    ResponseStyle,
    Timing,
    UpdateBeginRequested,
    UpdateDoneRequested,
    messages,
)
from devicecloud.protocol.ota import OtaOptions, OtaPhase, OtaTransfer, update_result

IMAGE = random.Random(5).randbytes(100 * 1024)


@dataclass
class Device:
    """A device that keeps chunks, loses the ones in ``lose`` on first arrival, and answers like Device OS."""

    legacy: bool  # 0.7: finishes alone after resends, CON ChunkMissed (50), string results
    lose: set[int] = field(default_factory=set)
    refuse: int | None = None  # 5.03 with token, or 4.00 without (0.7)
    bad_result: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    received: set[int] = field(default_factory=set)
    count: int = 0
    size: int = 0
    fast: bool = False
    plain_next: int = 0
    reported: bool = False
    missed_messages: int = 0

    def handle(self, p: ConnectionPair, event: Event) -> None:
        conn, now = p.device, p.now
        if isinstance(event, UpdateBeginRequested):
            if self.refuse == Code.BAD_REQUEST:  # Device OS ≤1.1: ACK 4.00 without a token
                conn._send_message(
                    messages.ack(conn._inbound.pop(event.request_id).message_id, Code.BAD_REQUEST)
                )
            elif self.refuse is not None:
                conn.send(RejectRequest(event.request_id, self.refuse), now)
            else:
                assert event.file_length is not None
                assert event.chunk_size is not None
                self.buffer = bytearray(event.file_length)
                self.size, self.fast = event.chunk_size, event.fast
                self.count = -(-event.file_length // event.chunk_size)
                conn.send(AcceptUpdate(event.request_id, event.fast), now)
        elif isinstance(event, ChunkArrived):
            good = event.crc32 == zlib.crc32(event.data)
            if event.index is None:
                if good:
                    self._store(self.plain_next, event.data)
                    self.plain_next += 1
                assert event.request_id is not None
                conn.send(RespondChunk(event.request_id, good), now)
                return
            if event.index in self.lose:
                self.lose.discard(event.index)
            elif good:
                self._store(event.index, event.data)
            if self.legacy and self.reported and len(self.received) == self.count:
                conn.send(ReportUpdateDone(self._result()), now)
        elif isinstance(event, UpdateDoneRequested):
            missing = [i for i in range(self.count) if i not in self.received]
            if missing:
                conn.send(RejectRequest(event.request_id, Code.BAD_REQUEST), now)
                self.reported = True
                self.missed_messages += 1
                # Several indices per message, and no more than the version allows.
                conn.send(ReportMissedChunks(tuple(missing[: 50 if self.legacy else 40]), self.legacy), now)
            else:
                conn.send(RespondUpdateDone(event.request_id, self._result()), now)

    def _store(self, index: int, data: bytes) -> None:
        self.buffer[index * self.size : index * self.size + len(data)] = data
        self.received.add(index)

    def _result(self) -> bytes:
        if self.legacy:
            return json.dumps({"r": "error" if self.bad_result else "ok", "u": {}}).encode()
        return json.dumps({"r": -1330 if self.bad_result else 0}).encode()


def drive(p: ConnectionPair, transfer: OtaTransfer, device: Device, *, settle: float = 0.0) -> None:
    """Run both ends until nothing moves, then let ``settle`` seconds of timers pass and go on."""
    while True:
        cloud, dev = p.pump()
        for event in dev:
            device.handle(p, event)
        for event in cloud:
            transfer.handle_event(p.cloud, event, p.now)
        sent = transfer.wants_to_send
        while transfer.wants_to_send:
            transfer.send(p.cloud, p.now, max_chunks=16)
        if cloud or dev or sent:
            continue
        deadline = transfer.get_timer()
        if settle and deadline is not None and deadline <= p.now + settle:
            p.advance(deadline - p.now)
            transfer.handle_timer(p.cloud, p.now)
            continue
        break


def start(keys: Any, device: Device, **options: Any) -> tuple[ConnectionPair, OtaTransfer]:
    style = ResponseStyle.PIGGYBACK if device.legacy else ResponseStyle.SEPARATE
    p = ConnectionPair(keys, style=style, cloud_timing=Timing(request_timeout=30.0, ping_after=None))
    p.pump()
    transfer = OtaTransfer(IMAGE, OtaOptions(**options))
    transfer.start(p.cloud, p.now)
    return p, transfer


@pytest.mark.parametrize(("legacy", "alone"), [(True, None), (True, True), (False, None), (False, False)])
def test_fast_ota_with_5_percent_lost_ends_byte_identical(
    keys: Any, legacy: bool, alone: bool | None
) -> None:
    lost = set(random.Random(1).sample(range(200), 10))
    device = Device(legacy=legacy, lose=set(lost))
    p, transfer = start(keys, device, device_finishes_alone=alone)
    drive(p, transfer, device, settle=5.0)
    assert transfer.result is not None
    assert (transfer.phase, transfer.result.ok) == (OtaPhase.DONE, True), transfer.result
    assert bytes(device.buffer) == IMAGE
    assert (transfer.chunks_sent, transfer.chunks_resent) == (200 + 10, 10)
    # 0.7 finishes by itself after one round; later versions are asked again.
    assert transfer.finish_attempts == (1 if legacy else 2)


def test_more_missed_chunks_than_one_chunkmissed_holds_take_several_rounds(keys: Any) -> None:
    device = Device(legacy=False, lose=set(range(0, 200, 2)))  # 100 lost: 40 per message
    p, transfer = start(keys, device, device_finishes_alone=False)
    drive(p, transfer, device)
    assert transfer.result is not None
    assert transfer.result.ok
    assert bytes(device.buffer) == IMAGE
    assert (device.missed_messages, transfer.finish_attempts) == (3, 4)


def test_plain_ota_resends_chunks_refused_for_their_crc(keys: Any) -> None:
    device = Device(legacy=False)
    p, transfer = start(keys, device, fast=False, bad_crc=frozenset({0, 7, 199}))
    drive(p, transfer, device)
    assert transfer.result is not None
    assert (transfer.result.ok, transfer.fast, transfer.chunks_resent) == (True, False, 3)
    assert bytes(device.buffer) == IMAGE


def test_a_device_that_declines_fast_ota_gets_plain_ota(keys: Any) -> None:
    device = Device(legacy=True)
    p, transfer = start(keys, device)
    real = device.handle

    def decline(pair: ConnectionPair, event: Event) -> None:
        if isinstance(event, UpdateBeginRequested):
            event = UpdateBeginRequested(
                event.request_id, False, event.chunk_size, event.file_length, event.store, event.address
            )
        real(pair, event)

    device.handle = decline  # type: ignore[method-assign,assignment]
    drive(p, transfer, device)
    assert transfer.result is not None
    assert (transfer.result.ok, transfer.fast) == (True, False)


@pytest.mark.parametrize(("code", "shown"), [(Code.SERVICE_UNAVAILABLE, "5.03"), (Code.BAD_REQUEST, "4.00")])
def test_a_refused_update_fails_at_once(keys: Any, code: int, shown: str) -> None:
    device = Device(legacy=code == Code.BAD_REQUEST, refuse=code)
    p, transfer = start(keys, device)
    drive(p, transfer, device)
    assert transfer.result is not None
    assert transfer.phase is OtaPhase.FAILED
    assert f"refused the update ({shown}" in transfer.result.reason
    assert transfer.chunks_sent == 0


@pytest.mark.parametrize("legacy", [True, False])
def test_a_device_that_reports_a_failed_image_fails_the_update(keys: Any, legacy: bool) -> None:
    device = Device(legacy=legacy, bad_result=True)
    p, transfer = start(keys, device)
    drive(p, transfer, device)
    assert transfer.result is not None
    assert transfer.phase is OtaPhase.FAILED
    assert "the update failed" in transfer.result.reason


def test_results_in_every_style() -> None:
    assert update_result(b'{"r":"ok","u":{}}') == (True, "the device accepted the update")
    assert update_result(b'{"r":0}')[0]
    assert update_result(b"")[0]  # a bare 2.04
    assert update_result(b"not json")[0]
    assert update_result(b'{"r":"error"}') == (False, "the device reported that the update failed")
    assert update_result(b'{"r":-1340}') == (
        False,
        "the device reported that the update failed (error -1340)",
    )


def test_a_silent_device_fails_the_update_after_the_chunk_timeout(keys: Any) -> None:
    device = Device(legacy=False)
    p, transfer = start(keys, device, fast=False, chunk_timeout=7.0)
    p.link_up = False  # nothing arrives any more
    drive(p, transfer, device, settle=10.0)
    assert transfer.result is not None
    assert transfer.result.reason == "the device made no progress for 7 s"


def test_the_whole_update_has_a_deadline(keys: Any) -> None:
    device = Device(legacy=False, lose=set(range(200)))
    p, transfer = start(keys, device, total_timeout=3.0, chunk_timeout=100.0, device_finishes_alone=False)
    p.link_up = False
    drive(p, transfer, device, settle=5.0)
    assert transfer.result is not None
    assert transfer.result.reason == "the update did not finish within 3 s"


def test_a_closed_link_fails_the_update_and_the_connection_still_closes_cleanly(keys: Any) -> None:
    device = Device(legacy=False)
    p, transfer = start(keys, device)
    p.pump()
    p.device.receive_data(b"", p.now)  # the device end sees EOF and closes
    p.cloud.receive_data(b"", p.now)
    for event in p.pump()[0]:
        transfer.handle_event(p.cloud, event, p.now)
    assert transfer.result is not None
    assert transfer.result.reason == "the device disconnected during the update"
    assert p.cloud.state is ConnectionState.CLOSED


def test_bad_sizes_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        OtaTransfer(IMAGE, OtaOptions(chunk_size=0))
    with pytest.raises(ValueError, match="fewer than 65535"):
        OtaTransfer(bytes(70000), OtaOptions(chunk_size=1))
    with pytest.raises(ValueError, match="nothing"):
        OtaTransfer(b"")
