"""
The OTA byte layouts against the real Device OS 0.7.0 recordings, from the device's side: the device role
reads the recorded server messages (UpdateBegin, fast and plain chunks, UpdateDone) into the fields the
recorder meant, and the builders the device role answers with produce the recorded device bytes.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from tests.support.conformance import load_transcript

from devicecloud.protocol import (
    ChunkArrived,
    Code,
    MessageKind,
    UpdateBeginRequested,
    UpdateDoneRequested,
    coap,
    messages,
)
from devicecloud.protocol.ota_requests import device_event


def records(name: str) -> dict[int, dict[str, Any]]:
    return {r["i"]: r for r in load_transcript(name)["records"] if r["kind"] == "coap"}


def plaintext(record: dict[str, Any]) -> bytes:
    return bytes.fromhex(record["plaintext_hex"])


def read_as_device(record: dict[str, Any]) -> tuple[Any, list[tuple[MessageKind, bool]]]:
    """The event the device role makes of a recorded server message, and what it registered for an answer."""
    msg = coap.decode(plaintext(record))
    kind = messages.classify(msg)
    assert kind is not None
    registered: list[tuple[MessageKind, bool]] = []

    def inbound(k: MessageKind, m: coap.Message, *, acked: bool) -> int:
        registered.append((k, acked))
        return 7

    return device_event(kind, msg, inbound), registered


@pytest.mark.parametrize(("name", "index"), [("session_tinker", 38), ("session_ota_legacy", 13)])
def test_the_device_reads_updatebegin_at_its_fixed_offsets(name: str, index: int) -> None:
    record = records(name)[index]
    begin = record["trigger"]["action"]["update_begin"]
    event, registered = read_as_device(record)
    assert event == UpdateBeginRequested(
        7, begin["fast"], begin["chunk_size"], begin["file_length"], begin["store"], begin["address"]
    )
    assert registered == [(MessageKind.UPDATE_BEGIN, False)]  # answered later: UpdateReady or a refusal


def test_fast_chunks_carry_their_index_and_crc_and_get_no_answer() -> None:
    for index in (41, 42, 47):
        record = records("session_tinker")[index]
        action = record["trigger"]["action"]
        event, registered = read_as_device(record)
        assert isinstance(event, ChunkArrived)
        assert (event.request_id, event.index, event.crc32) == (
            None,
            action["chunk_index"],
            int(action["crc32_hex"], 16),
        )
        assert len(event.data) == action["length"]
        assert zlib.crc32(event.data) == event.crc32
        assert registered == []


def test_plain_chunks_are_acked_at_once_and_answered_later_even_with_a_wrong_crc() -> None:
    for index in (16, 19, 22, 25):
        record = records("session_ota_legacy")[index]
        action = record["trigger"]["action"]
        event, registered = read_as_device(record)
        assert isinstance(event, ChunkArrived)
        assert (event.request_id, event.index, event.crc32) == (7, None, int(action["crc32_hex"], 16))
        assert (zlib.crc32(event.data) != event.crc32) == action["crc_deliberately_wrong"]
        assert registered == [(MessageKind.CHUNK, True)]


def test_updatedone_waits_for_the_devices_answer() -> None:
    event, registered = read_as_device(records("session_tinker")[43])
    assert event == UpdateDoneRequested(7)
    assert registered == [(MessageKind.UPDATE_DONE, False)]


def test_the_device_answers_build_the_recorded_bytes() -> None:
    fast, plain = records("session_tinker"), records("session_ota_legacy")
    # UpdateReady: NON 2.04, the request's token, one flags byte (bit 0 = fast OTA).
    assert messages.response(0xFFFF, Code.CHANGED, b"\x08", b"\x01") == coap.decode(plaintext(fast[40]))
    assert coap.encode(messages.response(0xFFFF, Code.CHANGED, b"\x08", b"\x01")) == plaintext(fast[40])
    assert coap.encode(messages.response(0x1EDE, Code.CHANGED, b"\xfd", b"\x00")) == plaintext(plain[15])
    # UpdateDone with chunks missing: ACK 4.00 with the token; then ChunkMissed (CON GET /c, uint16 BE list).
    assert coap.encode(messages.ack(7, Code.BAD_REQUEST, b"\x0b")) == plaintext(fast[44])
    assert coap.encode(messages.chunk_missed(0, (1,), confirmable=True)) == plaintext(fast[45])
    # ChunkReceived: NON 2.04, or 4.00 for the wrong CRC.
    assert coap.encode(messages.response(0x1EDF, Code.CHANGED, b"\xfe")) == plaintext(plain[18])
    assert coap.encode(messages.response(0x1EE0, Code.BAD_REQUEST, b"\xff")) == plaintext(plain[21])
    # The result: 0.7 finishing a fast update by itself (NON PUT /u), or piggy-backed on UpdateDone's ACK.
    result = coap.decode(plaintext(fast[48])).payload
    assert coap.encode(messages.update_result(1, result)) == plaintext(fast[48])
    legacy = coap.decode(plaintext(plain[29])).payload
    assert coap.encode(messages.ack(0x3006, Code.CHANGED, b"\x03", legacy)) == plaintext(plain[29])


def test_chunk_missed_lists_several_indices_and_goes_non_from_2x() -> None:
    missed = messages.chunk_missed(9, (1, 300, 65534), confirmable=False)
    assert coap.encode(missed) == bytes.fromhex("5001 0009 b163 ff 0001 012c fffe")
