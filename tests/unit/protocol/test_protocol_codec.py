"""Codecs: CoAP, framing, session crypto, variables and Describe, against the spec's byte vectors."""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devicecloud.protocol import (
    Code,
    DescribeFlags,
    LocalProtocolError,
    MessageKind,
    MessageType,
    OptionNumber,
    RemoteProtocolError,
    VariableType,
    build_describe,
    coap,
    crypto,
    decode_variable,
    encode_variable,
    messages,
    parse_describe,
)
from devicecloud.protocol.framing import ReceiveBuffer, frame


def test_decode_device_hello_vector() -> None:
    """The observed 0.7.0 device Hello decodes to NON POST /h with the 8-byte payload."""
    msg = coap.decode(bytes.fromhex("5002fff1b168ff0003ffff00000003"))
    assert (MessageType.NON, Code.POST, 65521, b"") == (msg.type, msg.code, msg.message_id, msg.token)
    assert ("h",) == msg.uri_path
    assert bytes.fromhex("0003ffff00000003") == msg.payload
    assert MessageKind.HELLO == messages.classify(msg)


@pytest.mark.parametrize(
    ("built", "expected_hex"),
    [
        (messages.hello(0xFFFA), "5002fffab168"),
        (messages.ack(0xFFF4), "6000fff4"),
        (messages.ping(3), "40000003"),
        (messages.ack(0xFFF5, Code.CONTENT, b"\x01", bytes.fromhex("6553f100")), "6145fff501ff6553f100"),
        (messages.describe_request(0xFFFB, b"\x01", None), "4101fffb01b164"),
        (messages.describe_request(0x2002, b"\x11", 2), "4101200211b1644102"),
        (
            messages.function_call(0xFFFC, b"\x02", "digitalwrite", "D7,HIGH"),
            "4102fffc02b1660c6469676974616c77726974654744372c48494748",
        ),
        (messages.variable_request(0x2004, b"\x13", "vbool"), "4101200413b1760576626f6f6c"),
        (messages.signal(0, b"\x06", True), "4103000006b1734101"),
        (
            messages.event(2, "spark/conformance/hello", "hi device", private=False, split_path=True),
            "50020002b16505737061726b0b636f6e666f726d616e63650568656c6c6fff686920646576696365",
        ),
        (
            messages.event(0xB9A7, "conf/pub3", "public-ttl3600", private=False, max_age=b"\x00\x0e\x10"),
            "5002b9a7b16509636f6e662f7075623333000e10ff7075626c69632d74746c33363030",
        ),
        (
            messages.event(0x2016, "pubin", "with max-age", private=False, max_age=coap.encode_uint(120)),
            "50022016b16505707562696e3178ff77697468206d61782d616765",
        ),
        (
            messages.event(0xFFF2, "spark/hardware/max_binary", "102400", private=True),
            "5002fff2b1450d0c737061726b2f68617264776172652f6d61785f62696e617279ff313032343030",
        ),
        (
            messages.subscribe(0xB99F, "conf/in", my_devices=True, device_id=None),
            "4001b99fb16507636f6e662f696e4175",
        ),
        (messages.time_request(0xFFF5, b"\x01"), "4101fff501b174"),
        (
            messages.update_begin(
                4, b"\x08", fast=True, chunk_size=512, file_length=1300, store=0, address=0
            ),
            "4102000408b175ff010200000005140000000000",
        ),
        (messages.update_done(7, b"\x0b"), "410300070bb175"),
    ],
)
def test_builders_match_recorded_bytes(built: coap.Message, expected_hex: str) -> None:
    """Each builder produces the exact bytes recorded from the real device session."""
    assert expected_hex == coap.encode(built).hex()
    assert built == coap.decode(bytes.fromhex(expected_hex))


def test_extended_option_lengths_round_trip() -> None:
    """Option lengths of 13..268 and >= 269 use the 1- and 2-byte extended forms."""
    for length in (12, 13, 268, 269, 1000):
        msg = coap.Message(MessageType.CON, Code.POST, 1, b"", ((OptionNumber.URI_PATH, b"x" * length),))
        assert msg == coap.decode(coap.encode(msg))
    msg = coap.Message(MessageType.NON, Code.POST, 1, b"", ((OptionNumber.NO_RESPONSE, b"\x1a"),))
    assert msg == coap.decode(coap.encode(msg))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (bytes.fromhex("800000"), "too short"),
        (bytes.fromhex("80000000"), "version"),
        (bytes.fromhex("49000000"), "token length"),
        (bytes.fromhex("41010000"), "truncated CoAP token"),
        (bytes.fromhex("600000000001"), "empty CoAP message"),
        (bytes.fromhex("50020000ff"), "payload marker"),
        (bytes.fromhex("50020000b2"), "truncated CoAP option value"),
        (bytes.fromhex("50020000d0"), "truncated CoAP option header"),
        (bytes.fromhex("50020000f1"), "reserved"),
    ],
)
def test_decode_rejects_malformed_messages(data: bytes, reason: str) -> None:
    """Malformed CoAP is a RemoteProtocolError naming the problem."""
    with pytest.raises(RemoteProtocolError, match=reason):
        coap.decode(data)


options = st.lists(
    st.tuples(st.sampled_from([1, 6, 11, 12, 14, 15, 60, 258, 3000]), st.binary(max_size=300)), max_size=5
)


@settings(max_examples=100, deadline=None)
@given(
    mtype=st.sampled_from(list(MessageType)),
    code=st.integers(1, 255),
    message_id=st.integers(0, 0xFFFF),
    token=st.binary(max_size=8),
    opts=options,
    payload=st.binary(max_size=100),
)
def test_coap_round_trip(
    mtype: MessageType, code: int, message_id: int, token: bytes, opts: Any, payload: bytes
) -> None:
    """encode then decode gives back the message (options in number order)."""
    msg = coap.Message(mtype, code, message_id, token, tuple(opts), payload)
    decoded = coap.decode(coap.encode(msg))
    assert sorted(msg.options, key=lambda o: o[0]) == list(decoded.options)
    assert (mtype, code, message_id, token, payload) == (
        decoded.type,
        decoded.code,
        decoded.message_id,
        decoded.token,
        decoded.payload,
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_coap_decoder_only_raises_remote_errors(data: bytes) -> None:
    """Random bytes either parse or raise RemoteProtocolError, nothing else."""
    with contextlib.suppress(RemoteProtocolError):
        coap.decode(data)


def test_encode_rejects_local_misuse() -> None:
    """Bad values we build are a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        coap.encode(coap.Message(MessageType.CON, 1, 0x10000))
    with pytest.raises(LocalProtocolError):
        coap.encode(coap.Message(MessageType.CON, 1, 1, b"123456789"))


def test_framing_and_receive_buffer() -> None:
    """Frames carry a 2-byte big-endian length; the buffer yields whole frames, refuses bad lengths early."""
    assert b"\x00\x10" + bytes(16) == frame(bytes(16))
    buf = ReceiveBuffer()
    buf.feed(b"\x00\x20" + bytes(10))
    assert buf.next_frame() is None
    buf.feed(bytes(22) + b"\x00")
    assert bytes(32) == buf.next_frame()
    assert buf.next_frame() is None
    buf.feed(b"\x11")
    with pytest.raises(RemoteProtocolError, match="invalid frame length 17"):
        buf.next_frame()
    with pytest.raises(LocalProtocolError):
        frame(bytes(15))


def test_session_cipher_chains_the_first_ciphertext_block_per_direction() -> None:
    """After each message a direction's IV becomes the first 16 bytes of that message's ciphertext."""
    keys = crypto.SessionKeys.from_material(bytes(range(40)))
    sender, receiver = crypto.SessionCipher(keys), crypto.SessionCipher(keys)
    first = sender.encrypt(b"x" * 40)
    assert crypto.aes_cbc_encrypt(keys.aes_key, keys.iv, b"x" * 40) == first
    second = sender.encrypt(b"hello")
    assert crypto.aes_cbc_encrypt(keys.aes_key, first[:16], b"hello") == second
    assert b"x" * 40 == receiver.decrypt(first)
    assert b"hello" == receiver.decrypt(second)
    assert 0x2120 == keys.device_message_id_seed


@given(st.binary(min_size=40, max_size=40), st.lists(st.binary(max_size=700), min_size=1, max_size=6))
def test_session_cipher_matches_the_library_cbc_message_after_message(
    material: bytes, messages: list[bytes]
) -> None:
    """The session's cipher (hand-chained ECB, or CBC for long messages) equals AES-CBC at every size."""
    keys = crypto.SessionKeys.from_material(material)
    sender, receiver = crypto.SessionCipher(keys), crypto.SessionCipher(keys)
    iv = keys.iv
    for message in messages:
        sent = sender.encrypt(message)
        assert crypto.aes_cbc_encrypt(keys.aes_key, iv, message) == sent
        assert message == receiver.decrypt(sent)
        iv = sent[:16]


def test_session_cipher_refuses_bad_padding_and_partial_blocks_without_advancing() -> None:
    """A bad message is a remote error and leaves the receive chain where it was."""
    keys = crypto.SessionKeys.from_material(bytes(range(40)))
    sender, receiver = crypto.SessionCipher(keys), crypto.SessionCipher(keys)
    good = sender.encrypt(b"ping")
    with pytest.raises(RemoteProtocolError, match="padding"):
        receiver.decrypt(bytes(16))
    with pytest.raises(RemoteProtocolError, match="whole AES blocks"):
        receiver.decrypt(good[:-1])
    assert b"ping" == receiver.decrypt(good)


def test_pkcs7_always_pads() -> None:
    """A 16-byte message gets a whole extra block of padding; bad padding is a remote error."""
    assert 32 == len(crypto.aes_cbc_encrypt(bytes(16), bytes(16), bytes(16)))
    with pytest.raises(RemoteProtocolError, match="padding"):
        crypto.aes_cbc_decrypt(bytes(16), bytes(16), bytes(16))


def test_raw_signature_round_trip(keys: Any) -> None:
    """The raw type-1 signature verifies with the public key, and fails for other data."""
    sig = crypto.rsa_sign_raw(keys.server, b"h" * 20)
    assert 256 == len(sig)
    assert crypto.rsa_verify_raw(keys.server.public_key(), sig, b"h" * 20)
    assert not crypto.rsa_verify_raw(keys.server.public_key(), sig, b"g" * 20)


@pytest.mark.parametrize(
    ("var_type", "value", "raw_hex"),
    [
        (VariableType.BOOL, True, "01"),
        (VariableType.BOOL, False, "00"),
        (VariableType.INT, -42, "ffffffd6"),
        (VariableType.INT, -12345, "ffffcfc7"),
        (VariableType.DOUBLE, 1234.5678, "adfa5c6d454a9340"),
        (VariableType.DOUBLE, -1234.5678, "adfa5c6d454a93c0"),
        (VariableType.STRING, "hello, cloud", "68656c6c6f2c20636c6f7564"),
        (VariableType.NULL, None, ""),
    ],
)
def test_variable_vectors(var_type: VariableType, value: Any, raw_hex: str) -> None:
    """Variable encodings match the recorded device bytes (double is little-endian)."""
    assert raw_hex == encode_variable(var_type, value).hex()
    assert value == decode_variable(var_type, bytes.fromhex(raw_hex))


def test_variable_errors() -> None:
    """Wrong sizes from the peer are remote errors; unencodable local values are local errors."""
    with pytest.raises(RemoteProtocolError):
        decode_variable(VariableType.INT, b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_variable(77, b"")
    with pytest.raises(LocalProtocolError):
        encode_variable(VariableType.INT, 2**31)
    with pytest.raises(LocalProtocolError):
        encode_variable(VariableType.BOOL, 1)
    assert struct.pack("<d", 3.0) == encode_variable(VariableType.DOUBLE, 3)


def test_describe_vectors() -> None:
    """The Tinker Describe parses, and the builder writes the firmware's key order."""
    tinker = b'{"f":["digitalread","digitalwrite","analogread","analogwrite"],"v":{},"p":3,"m":[]}'
    parsed = parse_describe(tinker)
    assert ("digitalread", "digitalwrite", "analogread", "analogwrite") == parsed.functions
    assert ({}, 3, ()) == (parsed.variables, parsed.platform_id, parsed.modules)
    built = build_describe(
        functions=["digitalread", "digitalwrite", "analogread", "analogwrite"], platform_id=3
    )
    assert tinker == built
    app = b'{"f":["pub","setint"],"v":{"vbool":1,"vint":2,"vdouble":9,"vstring":4}}'
    variables = {"vbool": 1, "vint": 2, "vdouble": 9, "vstring": 4}
    assert app == build_describe(
        functions=["pub", "setint"], variables=variables, flags=DescribeFlags.APPLICATION
    )
    assert VariableType.DOUBLE == (parse_describe(app).variables or {})["vdouble"]


@pytest.mark.parametrize(
    "payload", [b"", b"[]", b'{"f":1}', b'{"v":{"a":"x"}}', b'{"p":"3"}', b"\xff", b"[" * 100_000]
)
def test_describe_rejects_bad_payloads(payload: bytes) -> None:
    """Anything that is not a Describe object is a RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        parse_describe(payload)


def test_system_randomness_encrypts_through_openssl_and_decrypts(keys: Any) -> None:
    """With os.urandom, rsa_encrypt is OpenSSL's (fresh padding each time), and the key opens it."""
    first = crypto.rsa_encrypt(keys.device.public_key(), b"k" * 40, os.urandom)
    second = crypto.rsa_encrypt(keys.device.public_key(), b"k" * 40, os.urandom)
    assert first != second
    assert [b"k" * 40] * 2 == [crypto.rsa_decrypt(keys.device, c) for c in (first, second)]


def test_injected_randomness_pads_by_hand_exactly(keys: Any) -> None:
    """An injected source gives the textbook ciphertext of 00 02 ‖ its non-zero bytes ‖ 00 ‖ message."""
    drawn = iter([b"\x00\x07" * 42, b"\x09" * 64])

    def recorded(n: int) -> bytes:
        return next(drawn)[:n]

    ciphertext = crypto.rsa_encrypt(keys.device.public_key(), b"k" * 40, recorded)
    numbers = keys.device.public_key().public_numbers()
    block = b"\x00\x02" + b"\x07" * 42 + b"\x09" * 43 + b"\x00" + b"k" * 40
    assert pow(int.from_bytes(block, "big"), numbers.e, numbers.n).to_bytes(128, "big") == ciphertext
