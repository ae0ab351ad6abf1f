"""
The OTA state machine replays the Device OS 0.7.0 OTA recordings byte for byte.

Unlike the plain replay (which issues each recorded UpdateBegin, Chunk and UpdateDone as a command), here
only the start of the update comes from the recording: from then on `OtaTransfer` decides what to send and
when, and its bytes must equal the recorded server bytes. The recorder's own faults are injected the way the
transfer's tests inject them: the fast session withheld a chunk from the first pass, the plain one sent a
chunk with a wrong CRC first.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.conformance import load_transcript
from tests.unit.protocol.test_protocol_conformance import EXPECTED_EVENTS, Replay, _drain

from devicecloud.protocol import ChunkReceived, ChunksMissed, RequestFailed, UpdateFinished, UpdateReady
from devicecloud.protocol.ota import OtaOptions, OtaPhase, OtaTransfer


def _faults(transcript: dict[str, Any]) -> tuple[frozenset[int], frozenset[int]]:
    """(chunks withheld from the first pass, chunks first sent with a bad CRC), read off the recording."""
    actions = [
        r["trigger"]["action"]
        for r in transcript["records"]
        if r["kind"] == "coap" and r.get("trigger", {}).get("type") == "api"
    ]
    begin = next(a["update_begin"] for a in actions if "update_begin" in a)
    count = -(-begin["file_length"] // begin["chunk_size"])
    first_pass: list[int] = []
    for action in actions:
        if "update_done" in action:
            break
        if "chunk_index" in action:
            first_pass.append(action["chunk_index"])
    withheld = frozenset(range(count)) - set(first_pass) if begin["fast"] else frozenset()
    bad = frozenset(a["chunk_index"] for a in actions if a.get("crc_deliberately_wrong"))
    return withheld, bad


class OtaReplay(Replay):
    """The recorded device against a cloud whose update is driven by `OtaTransfer`."""

    def __init__(self, transcript: dict[str, Any], finishes_alone: bool | None) -> None:
        super().__init__(transcript)
        self.finishes_alone = finishes_alone
        self.transfer: OtaTransfer | None = None
        self.taken: list[type] = []

    def _advance(self, now: float) -> None:
        super()._advance(now)
        transfer = self.transfer
        if transfer is not None and self.conn is not None:
            while (deadline := transfer.get_timer()) is not None and deadline <= now:
                transfer.handle_timer(self.conn, deadline)
                self._pump(deadline)

    def _pump(self, now: float) -> None:
        assert self.transfer is not None
        assert self.conn is not None
        while self.transfer.wants_to_send:
            self.transfer.send(self.conn, now, max_chunks=64)
        self._flush()

    def on_coap(self, r: dict[str, Any]) -> None:
        assert self.conn is not None
        trigger = r.get("trigger", {})
        action = trigger.get("action", {}) if trigger.get("type") == "api" else {}
        raw = bytes.fromhex(r["raw_hex"])
        if "update_begin" in action:
            begin = action["update_begin"]
            withheld, bad = _faults(self.t)
            options = OtaOptions(
                chunk_size=begin["chunk_size"],
                fast=begin["fast"],
                device_finishes_alone=self.finishes_alone,
                withhold=withheld,
                bad_crc=bad,
            )
            firmware = bytes.fromhex(self.t["artifacts"]["ota_firmware"]["hex"])
            self.transfer = OtaTransfer(firmware, options)
            self.transfer.start(self.conn, r["t"])
            self._expect_out(raw, f"record {r['i']} (UpdateBegin)")
        elif "chunk_index" in action or "update_done" in action:
            self._expect_out(raw, f"record {r['i']} ({r['label']}, sent by the transfer)")
        elif r["dir"] == "s2d" or self.transfer is None:
            super().on_coap(r)
        else:
            self.conn.receive_data(raw, r["t"])
            events = _drain(self.conn)
            assert EXPECTED_EVENTS[r["label"]] == [type(e) for e in events], f"record {r['i']}"
            for event in events:
                if self.transfer.handle_event(self.conn, event, r["t"]):
                    self.taken.append(type(event))
                else:
                    self._check_event(event, r)
            self._pump(r["t"])


@pytest.mark.parametrize("finishes_alone", [None, True])
def test_fast_ota_with_a_withheld_chunk_replays(finishes_alone: bool | None) -> None:
    """UpdateBegin, chunks 0 and 2, UpdateDone → 4.00 + ChunkMissed [1] → chunk 1 → the device finishes."""
    replay = OtaReplay(load_transcript("session_tinker"), finishes_alone)
    replay.run()
    transfer = replay.transfer
    assert transfer is not None
    assert transfer.result is not None
    assert (transfer.phase, transfer.result.ok, transfer.fast) == (OtaPhase.DONE, True, True)
    assert (transfer.chunks_sent, transfer.chunks_resent, transfer.finish_attempts) == (3, 0, 1)
    assert '"r":"ok"' in (transfer.result.device_result or "")
    assert [UpdateReady, RequestFailed, ChunksMissed, UpdateFinished] == replay.taken


def test_plain_ota_with_a_bad_crc_chunk_replays() -> None:
    """One chunk at a time; the wrong-CRC chunk gets 4.00 and is resent; UpdateDone → ACK 2.04 + JSON."""
    replay = OtaReplay(load_transcript("session_ota_legacy"), None)
    replay.run()
    transfer = replay.transfer
    assert transfer is not None
    assert transfer.result is not None
    assert (transfer.phase, transfer.result.ok, transfer.fast) == (OtaPhase.DONE, True, False)
    assert (transfer.chunks_sent, transfer.chunks_resent, transfer.finish_attempts) == (4, 1, 1)
    assert replay.taken.count(ChunkReceived) == 4
