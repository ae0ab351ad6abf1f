"""Fuzzing: random peer bytes only ever raise RemoteProtocolError (h11's afl-server idea, via Hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    Connection,
    ConnectionState,
    DeviceIdentified,
    RemoteProtocolError,
    Role,
)
from devicecloud.protocol.framing import frame

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _feed(conn: Connection, data: bytes, *, byte_by_byte: bool) -> None:
    """Feed data, stopping at the first RemoteProtocolError (which is allowed)."""
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    try:
        for chunk in chunks:
            conn.receive_data(chunk, 1.0)
            while conn.next_event() is not NEED_DATA:
                pass
    except RemoteProtocolError:
        assert ConnectionState.CLOSED == conn.state


def _established(keys: Any) -> tuple[Connection, Connection]:
    cloud = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server)
    device = Connection(
        Role.DEVICE,
        now=0.0,
        server_public_key=keys.server.public_key(),
        device_private_key=keys.device,
        device_id=keys.device_id,
    )
    device.receive_data(cloud.data_to_send(), 0.0)
    cloud.receive_data(device.data_to_send(), 0.0)
    identified = cloud.next_event()
    assert isinstance(identified, DeviceIdentified)
    cloud.send(AcceptDevice(keys.device.public_key()), 0.0)
    device.receive_data(cloud.data_to_send(), 0.0)
    cloud.receive_data(device.data_to_send(), 0.0)
    device.receive_data(cloud.data_to_send(), 0.0)
    assert ConnectionState.ESTABLISHED == cloud.state == device.state
    return cloud, device


@pytest.mark.parametrize("byte_by_byte", [False, True])
@FUZZ
@given(data=st.binary(min_size=1, max_size=600))
def test_random_bytes_before_the_handshake(keys: Any, data: bytes, byte_by_byte: bool) -> None:
    """Random bytes as the device's handshake block raise only RemoteProtocolError."""
    cloud = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server)
    _feed(cloud, data, byte_by_byte=byte_by_byte)


@pytest.mark.parametrize("byte_by_byte", [False, True])
@FUZZ
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes_after_the_handshake(keys: Any, data: bytes, byte_by_byte: bool) -> None:
    """Random bytes after the handshake raise only RemoteProtocolError."""
    cloud, _ = _established(keys)
    _feed(cloud, data, byte_by_byte=byte_by_byte)


@FUZZ
@given(plaintexts=st.lists(st.binary(max_size=80), min_size=1, max_size=4))
def test_random_plaintexts_in_valid_frames(keys: Any, plaintexts: list[bytes]) -> None:
    """Well-encrypted frames holding random CoAP bytes raise only RemoteProtocolError."""
    cloud, device = _established(keys)
    cipher = device._cipher  # white-box: encrypt arbitrary plaintexts on the device's send chain
    assert cipher is not None
    _feed(cloud, b"".join(frame(cipher.encrypt(p)) for p in plaintexts), byte_by_byte=False)


@FUZZ
@given(
    mtype=st.integers(0, 3),
    code=st.sampled_from([0, 1, 2, 3, 4, 0x44, 0x45, 0x80, 0x84, 0xA3, 0x25]),
    path=st.lists(
        st.sampled_from(["h", "d", "f", "v", "e", "E", "t", "s", "u", "c", "k", "x", "zz"]), max_size=3
    ),
    query=st.lists(st.binary(max_size=3), max_size=2),
    token=st.binary(max_size=2),
    payload=st.binary(max_size=20),
)
def test_random_particle_messages(
    keys: Any, mtype: int, code: int, path: list[str], query: list[bytes], token: bytes, payload: bytes
) -> None:
    """Plausible-looking Particle messages with random fields raise only RemoteProtocolError, both roles."""
    from devicecloud.protocol import coap
    from devicecloud.protocol.codes import MessageType

    cloud, device = _established(keys)
    options = coap.path_options(path) + coap.query_options(query)
    for sender, receiver in ((device, cloud), (cloud, device)):
        msg = coap.Message(
            MessageType(mtype),
            code,
            0,
            token if code else b"",
            options if code else (),
            payload if code else b"",
        )
        cipher = sender._cipher  # white-box, as above
        assert cipher is not None
        _feed(receiver, frame(cipher.encrypt(coap.encode(msg))), byte_by_byte=False)
