"""OTA protocol v3 byte layouts against ota-and-dtls.md §A.3 (its hand-built examples, byte by byte)."""

from __future__ import annotations

import hashlib

import pytest

from devicecloud.protocol import coap
from devicecloud.protocol.codes import Code, MessageKind, MessageType
from devicecloud.protocol.errors import RemoteProtocolError
from devicecloud.protocol.events import (
    UpdateAcked,
    UpdateChunkArrived,
    UpdateFinishAnswered,
    UpdateFinishRequested,
    UpdateRefused,
    UpdateStarted,
    UpdateStartRequested,
)
from devicecloud.protocol.messages import classify
from devicecloud.protocol.ota3_messages import (
    Ota3Option,
    answer_event,
    cloud_event,
    coap_code_for,
    decode_bitmap,
    device_event,
    encode_bitmap,
    error_payload,
    error_reason,
    finish_response,
    start_response,
    update_ack,
    update_chunk,
    update_finish,
    update_start,
)

SHA = hashlib.sha256(b"x").digest()


def test_update_start_is_the_notes_example_byte_for_byte() -> None:
    """Token 7A, 9965-byte file, chunk 512, with hash (§A.3 "Hand-built examples")."""
    msg = update_start(0x1234, b"\x7a", file_size=9965, chunk_size=512, sha256=SHA)
    expected = (
        bytes.fromhex("41 02 12 34 7A B1 53")
        + bytes.fromhex("E2 06 F1 26 ED")  # FILE_SIZE: delta 2057 − 11 = 269 + 0x06F1, 2 bytes
        + bytes.fromhex("4D 13")  # FILE_SHA256: delta 4, length 13 + 0x13 = 32
        + SHA
        + bytes.fromhex("42 02 00")  # CHUNK_SIZE: delta 4, 2 bytes
    )
    assert expected == coap.encode(msg)
    assert MessageKind.UPDATE_START is classify(coap.decode(expected))


def test_update_start_optional_options_in_ascending_order() -> None:
    msg = update_start(1, b"\x01", file_size=1, chunk_size=1024, discard=True, module_function=5)
    data = coap.encode(msg)
    # FILE_SIZE 1 (E1 06 F1 01), CHUNK_SIZE (delta 8) 0x0400, DISCARD_DATA (delta 4) empty, MODULE_FUNCTION 5.
    assert data.endswith(bytes.fromhex("E1 06 F1 01 82 04 00 40 81 05"))
    again = coap.decode(data)
    assert [n for n, _ in again.options[1:]] == [
        Ota3Option.FILE_SIZE,
        Ota3Option.CHUNK_SIZE,
        Ota3Option.DISCARD_DATA,
        Ota3Option.MODULE_FUNCTION,
    ]


def test_a_chunk_is_non_without_token_with_a_1_based_index() -> None:
    data = bytes(range(256)) * 2
    encoded = coap.encode(update_chunk(0xABCD, 1, data))
    assert bytes.fromhex("50 02 AB CD B1 43 E1 06 E9 01 FF") + data == encoded
    assert coap.encode(update_chunk(1, 300, b"z")).startswith(
        bytes.fromhex("50 02 00 01 B1 43 E2 06 E9 01 2C")
    )
    with pytest.raises(Exception, match="start at 1"):
        update_chunk(1, 0, b"z")


def test_update_finish_and_cancel() -> None:
    assert bytes.fromhex("41 02 00 07 99 B1 46") == coap.encode(update_finish(7, b"\x99"))
    cancel = coap.encode(update_finish(7, b"\x99", cancel=True))
    assert cancel == bytes.fromhex("41 02 00 07 99 B1 46 E0 07 01")  # delta 2073 − 11 = 269 + 0x0701, empty


def test_the_ack_bitmap_is_little_endian_words_from_cumulative_plus_one() -> None:
    assert b"" == encode_bitmap(5, [])
    assert b"" == encode_bitmap(5, [1, 5])  # at or below the cumulative count: not in the bitmap
    assert bytes.fromhex("05 00 00 00") == encode_bitmap(5, [6, 8])  # bits 0 and 2
    assert bytes.fromhex("00 00 00 00 01 00 00 00") == encode_bitmap(0, [33])  # bit 32: second word
    assert bytes.fromhex("00 00 00 80") == encode_bitmap(10, [42])  # bit 31
    assert frozenset({6, 8}) == decode_bitmap(5, bytes.fromhex("05 00 00 00"))
    assert frozenset({33, 42}) == decode_bitmap(0, bytes.fromhex("00 00 00 00 01 02 00 00"))
    with pytest.raises(RemoteProtocolError):
        decode_bitmap(0, b"\x01\x02\x03")


def test_an_update_ack_reads_back_as_cumulative_and_held_chunks() -> None:
    data = coap.encode(update_ack(3, 12, [14, 15, 50]))
    assert data.startswith(bytes.fromhex("50 02 00 03 B1 41 E1 06 E9 0C FF"))
    event = cloud_event(coap.decode(data))
    assert UpdateAcked(12, frozenset({14, 15, 50})) == event
    no_gaps = coap.decode(coap.encode(update_ack(4, 0, [])))
    assert not no_gaps.payload
    assert UpdateAcked(0, frozenset()) == cloud_event(no_gaps)  # 0 = an empty option
    bad = coap.Message(MessageType.NON, Code.POST, 5, b"", no_gaps.options, b"\x01")
    assert cloud_event(bad) is None  # a malformed ack is dropped like a lost datagram


def test_the_device_answers_read_back() -> None:
    created = coap.decode(coap.encode(start_response(9, b"\x7a", window=256, offset=4096)))
    assert (MessageType.CON, Code.CREATED) == (created.type, created.code)
    assert UpdateStarted(1, 256, 4096) == answer_event(1, MessageKind.UPDATE_START, created)
    fresh = coap.decode(coap.encode(start_response(9, b"\x7a", window=256, offset=0)))
    assert (Ota3Option.FILE_SIZE, b"") in fresh.options  # offset 0 travels as an empty option
    stats = b'{"recv_chunks":20,"dup_chunks":0,"ooo_chunks":1,"sent_acks":11,"proc_time":5}'
    finished = coap.decode(coap.encode(finish_response(10, b"\x7b", stats)))
    assert UpdateFinishAnswered(2, stats) == answer_event(2, MessageKind.UPDATE_FINISH, finished)


def test_error_responses_carry_the_system_error() -> None:
    body = error_payload(-1380, "Updates are disabled")
    assert b'{"code":-1380,"message":"Updates are disabled"}' == body
    assert Code.SERVICE_UNAVAILABLE == coap_code_for(-1380)  # every OTA error is 5.03: read the code
    assert Code.BAD_REQUEST == coap_code_for(-270)
    refused = coap.Message(MessageType.ACK, Code.SERVICE_UNAVAILABLE, 3, b"\x01", (), body)
    event = answer_event(1, MessageKind.UPDATE_START, refused)
    assert UpdateRefused(1, Code.SERVICE_UNAVAILABLE, -1380, "Updates are disabled") == event
    assert "updates are disabled on the device (error -1380, 5.03)" == error_reason(0xA3, -1380, None)
    assert "odd (5.03)" == error_reason(0xA3, None, "odd")


def _inbound_log() -> tuple[list[tuple[MessageKind, bool]], object]:
    log: list[tuple[MessageKind, bool]] = []

    def inbound(kind: MessageKind, msg: coap.Message, *, acked: bool) -> int:
        log.append((kind, acked))
        return len(log)

    return log, inbound


def test_the_device_reads_the_clouds_requests() -> None:
    log, inbound = _inbound_log()
    start = coap.decode(coap.encode(update_start(1, b"\x7a", file_size=9965, chunk_size=512, sha256=SHA)))
    event = device_event(MessageKind.UPDATE_START, start, inbound)  # type: ignore[arg-type]
    assert UpdateStartRequested(1, 9965, 512, SHA, False, None, True) == event
    chunk = coap.decode(coap.encode(update_chunk(2, 7, b"abc")))
    assert UpdateChunkArrived(7, b"abc") == device_event(MessageKind.UPDATE_CHUNK, chunk, inbound)  # type: ignore[arg-type]
    cancel = coap.decode(coap.encode(update_finish(3, b"\x7b", cancel=True)))
    assert UpdateFinishRequested(2, False, True) == device_event(MessageKind.UPDATE_FINISH, cancel, inbound)  # type: ignore[arg-type]
    no_token = coap.Message(MessageType.CON, Code.POST, 4, b"", start.options)
    assert not device_event(MessageKind.UPDATE_START, no_token, inbound).decoded  # type: ignore[arg-type, union-attr]
    assert [
        (MessageKind.UPDATE_START, True),
        (MessageKind.UPDATE_FINISH, True),
        (MessageKind.UPDATE_START, False),
    ] == log
