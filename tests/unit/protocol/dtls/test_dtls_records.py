"""DTLS records: the wire forms (plain, CID 25/253, legacy 254), strict parsing, the replay window."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicecloud.protocol.dtls.records import (
    MAX_DATAGRAM,
    ContentType,
    ReplayWindow,
    cid_aad,
    cid_inner_plaintext,
    encode_record,
    parse_cid_inner_plaintext,
    parse_datagram,
    peek_cid,
    peek_device_id,
    plain_aad,
)
from devicecloud.protocol.errors import RemoteProtocolError

CID = bytes.fromhex("a1a2a3a4a5a6a7a8")
DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")


def test_a_plain_record_has_the_rfc_6347_layout() -> None:
    record = encode_record(22, 0, 0x010203040506, b"abc")
    assert bytes.fromhex("16fefd0000010203040506" + "0003") + b"abc" == record
    (parsed,) = parse_datagram(record)
    assert (22, 0, 0x010203040506, None, b"abc", False) == (
        parsed.content_type,
        parsed.epoch,
        parsed.sequence,
        parsed.cid,
        parsed.fragment,
        parsed.moved,
    )
    assert bytes.fromhex("0000010203040506") == parsed.explicit_nonce


def test_several_records_in_one_datagram() -> None:
    datagram = (
        encode_record(22, 0, 1, b"one") + encode_record(20, 0, 2, b"\x01") + encode_record(23, 1, 0, b"x")
    )
    assert [(22, b"one"), (20, b"\x01"), (23, b"x")] == [
        (r.content_type, r.fragment) for r in parse_datagram(datagram)
    ]


def test_a_cid_record_carries_the_8_byte_cid_before_the_length() -> None:
    record = encode_record(25, 1, 7, b"sealed", cid=CID)
    assert bytes.fromhex("19fefd0001000000000007") + CID + b"\x00\x06sealed" == record
    (parsed,) = parse_datagram(record)
    assert (25, CID, b"sealed", False) == (parsed.content_type, parsed.cid, parsed.fragment, parsed.moved)
    assert CID == peek_cid(record)


def test_type_253_is_a_cid_record_marked_as_moved() -> None:
    record = encode_record(25, 1, 7, b"sealed", cid=CID)
    moved = b"\xfd" + record[1:]
    (parsed,) = parse_datagram(moved)
    assert (25, CID, b"sealed", True) == (parsed.content_type, parsed.cid, parsed.fragment, parsed.moved)
    assert CID == peek_cid(moved)


def test_type_254_is_application_data_with_the_device_id_after_it() -> None:
    record = encode_record(23, 1, 9, b"sealed")
    legacy = b"\xfe" + record[1:] + DEVICE_ID + b"\x0c"
    assert DEVICE_ID == peek_device_id(legacy)
    assert peek_cid(legacy) is None
    (parsed,) = parse_datagram(legacy)
    assert (23, 9, b"sealed", True, DEVICE_ID) == (
        parsed.content_type,
        parsed.sequence,
        parsed.fragment,
        parsed.moved,
        parsed.device_id,
    )


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (encode_record(22, 0, 0, b"abc")[:12], "truncated record header"),
        (encode_record(22, 0, 0, b"abc")[:-1], "truncated record"),
        (encode_record(25, 1, 0, b"abc", cid=CID)[:17], "truncated CID record header"),
        (b"\x18" + encode_record(22, 0, 0, b"abc")[1:], "unknown record type"),
        (encode_record(22, 0, 0, b"abc").replace(b"\xfe\xfd", b"\x03\x03", 1), "not a DTLS 1.2 record"),
        (bytes.fromhex("17fefd00010000000000004801") + bytes(0x4801), "record too long"),
        (bytes(MAX_DATAGRAM + 1), "datagram too large"),
        (b"\xfe" + encode_record(23, 1, 0, b"abc")[1:] + DEVICE_ID + b"\x0b", "without a device id"),
        (
            b"\xfe"
            + (encode_record(23, 1, 0, b"a") + encode_record(23, 1, 1, b"b"))[1:]
            + DEVICE_ID
            + b"\x0c",
            "more than one record",
        ),
    ],
    ids=[
        "short header",
        "short body",
        "short CID",
        "type",
        "version",
        "long",
        "oversized",
        "254",
        "254 twice",
    ],
)
def test_bad_datagrams_raise_remote_protocol_error(datagram: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        parse_datagram(datagram)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_datagrams_raise_only_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_datagram(data)
    peek_cid(data)
    peek_device_id(data)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"\x16\xfe\xfd", b"\x19\xfe\xfd", b"\xfd\xfe\xfd", b"\xfe\xfe\xfd"]),
    rest=st.binary(max_size=80),
)
def test_random_bytes_behind_valid_headers_raise_only_remote_protocol_error(
    prefix: bytes, rest: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_datagram(prefix + rest)


def test_aads_are_draft_05s_and_tls_12s() -> None:
    nonce = bytes.fromhex("0001000000000007")
    assert nonce + bytes.fromhex("17fefd0005") == plain_aad(nonce, 23, 5)
    # draft-05 (Mbed TLS 2.22): seq ‖ 25 ‖ version ‖ cid ‖ cid_len ‖ length — not RFC 9146's layout.
    assert nonce + bytes.fromhex("19fefd") + CID + bytes.fromhex("080010") == cid_aad(nonce, CID, 16)


def test_cid_inner_plaintext_pads_to_16_and_parses_back() -> None:
    inner = cid_inner_plaintext(b"hello", 23)
    assert b"hello\x17" + bytes(10) == inner
    assert (23, b"hello") == parse_cid_inner_plaintext(inner)
    assert 16 == len(cid_inner_plaintext(bytes(15), 23))
    assert 32 == len(cid_inner_plaintext(bytes(16), 23))
    assert (22, b"\x00\x00") == parse_cid_inner_plaintext(b"\x00\x00\x16\x00")
    with pytest.raises(RemoteProtocolError, match="without a content type"):
        parse_cid_inner_plaintext(bytes(16))
    with pytest.raises(RemoteProtocolError, match="unknown type"):
        parse_cid_inner_plaintext(b"x\x19")


def test_replay_window_accepts_each_number_once_within_64() -> None:
    window = ReplayWindow()
    for seq in (0, 1, 5, 3):
        assert window.check(seq)
        window.accept(seq)
    assert not any(window.check(seq) for seq in (0, 1, 3, 5))
    assert window.check(2)
    assert window.check(4)
    assert window.check(6)
    window.accept(100)
    assert not window.check(36)  # 64 behind the top: outside the window
    assert window.check(37)
    assert not window.check(100)
    window.accept(37)
    assert not window.check(37)
    window.accept(1000)  # a jump past the window clears it
    assert (1000, 1) == (window.top, window.bitmap)
    assert window.check(999)
    assert not window.check(936)


def test_replay_window_survives_as_plain_numbers() -> None:
    window = ReplayWindow()
    for seq in (10, 12, 13):
        window.accept(seq)
    copy = ReplayWindow(window.top, window.bitmap)
    assert [window.check(s) for s in range(20)] == [copy.check(s) for s in range(20)]
    assert ContentType.CID_MOVED == 253
    assert ContentType.LEGACY_MOVED == 254
