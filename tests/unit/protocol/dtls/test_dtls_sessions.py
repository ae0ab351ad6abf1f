"""Sessions as plain data: export, store as JSON, resume on either end without a handshake (CID, 253, 254)."""

from __future__ import annotations

import json

import pytest
from tests.support.dtls import ADDRESS, DEVICE_ID, client_config, drain, handshake, server_config

from devicecloud.protocol.dtls import (
    ApplicationData,
    DtlsClient,
    DtlsServer,
    DtlsState,
    RecordDropped,
    ResumeMarker,
    SessionState,
    peek_cid,
    peek_device_id,
)
from devicecloud.protocol.dtls.primitives import key_block
from devicecloud.protocol.errors import LocalProtocolError

NEW_ADDRESS = b"192.0.2.7:61000"


def _stored(session: SessionState) -> SessionState:
    """What a session store would give back: through JSON."""
    return SessionState.from_dict(json.loads(json.dumps(session.to_dict())))


def _slept(client_kwargs: dict[str, object] | None = None) -> tuple[SessionState, SessionState, list[bytes]]:
    """A handshake, a little traffic both ways, then both ends store their session (device sleeps)."""
    link = handshake(client_kwargs)
    assert link.server is not None
    drain(link.client), drain(link.server)
    link.client.send_application_data(b"hello")
    old = link.client.datagrams_to_send()
    link.to_server(old[0])
    link.server.send_application_data(b"ack")
    for datagram in link.server.datagrams_to_send():
        link.client.receive_datagram(datagram, 0.0)
    drain(link.client), drain(link.server)
    return _stored(link.client.export_session()), _stored(link.server.export_session()), old


def test_a_session_survives_json_and_keeps_its_counters() -> None:
    client_state, server_state, _ = _slept()
    assert client_state.master_secret == server_state.master_secret
    assert 2 == server_state.write_sequence  # Finished, then one record of data
    assert 2 == client_state.write_sequence
    assert (1, 0b11) == (server_state.replay_top, server_state.replay_bitmap)
    assert DEVICE_ID.hex() == server_state.identity
    assert server_state == _stored(server_state)


def test_a_cid_session_resumes_from_a_new_address_after_a_server_restart() -> None:
    client_state, server_state, old = _slept()
    assert server_state.cid is not None
    device = DtlsClient.resume(client_config(), client_state, now=100.0)
    device.send_application_data(b"\x40\x00\x00\x05")  # a CoAP ping, as a resumed Device OS 4+ sends
    (datagram,) = device.datagrams_to_send()
    assert 253 == datagram[0]  # move-session mode
    # A new server process finds the session by the CID in the datagram, from any address.
    assert server_state.cid == peek_cid(datagram)
    server = DtlsServer.resume(server_config(), server_state, NEW_ADDRESS, now=100.0)
    server.receive_datagram(datagram, 100.0)
    assert [ApplicationData(b"\x40\x00\x00\x05", moved=True)] == drain(server)
    server.send_application_data(b"\x60\x00\x00\x05")
    (reply,) = server.datagrams_to_send()
    assert 2 == int.from_bytes(reply[5:11], "big")  # the server's numbers go on from before the sleep
    device.receive_datagram(reply, 100.0)
    assert [ApplicationData(b"\x60\x00\x00\x05")] == drain(device)
    device.send_application_data(b"after")
    (normal,) = device.datagrams_to_send()
    assert 25 == normal[0]  # the server answered: move-session mode is over
    server.receive_datagram(normal, 100.0)
    assert [ApplicationData(b"after")] == drain(server)
    # A record from before the sleep is still a replay for the restarted server.
    server.receive_datagram(old[0], 100.0)
    assert [RecordDropped("replayed record")] == drain(server)


def test_a_session_without_cid_resumes_with_legacy_254_records() -> None:
    client_state, server_state, _ = _slept({"offer_cid": False})
    assert server_state.cid is None
    device = DtlsClient.resume(client_config(offer_cid=False), client_state, now=5.0)
    device.send_application_data(b"ping")
    (datagram,) = device.datagrams_to_send()
    assert 254 == datagram[0]
    assert DEVICE_ID + b"\x0c" == datagram[-13:]
    assert DEVICE_ID == peek_device_id(datagram)  # how the server finds the session (by device id)
    server = DtlsServer.resume(server_config(), server_state, NEW_ADDRESS, now=5.0)
    server.receive_datagram(datagram, 5.0)
    assert [ApplicationData(b"ping", moved=True)] == drain(server)


def test_resumption_without_a_marker_is_plain_cid_records() -> None:
    client_state, server_state, _ = _slept()
    device = DtlsClient.resume(client_config(), client_state, now=5.0, marker=ResumeMarker.NONE)
    device.send_application_data(b"ping")
    (datagram,) = device.datagrams_to_send()
    assert 25 == datagram[0]
    server = DtlsServer.resume(server_config(), server_state, ADDRESS, now=5.0)
    assert DtlsState.ESTABLISHED == server.state
    assert server.get_timer() is None
    server.receive_datagram(datagram, 5.0)
    assert [ApplicationData(b"ping")] == drain(server)


def test_a_forgotten_session_cannot_be_faked() -> None:
    """A server holding another session's keys drops the device's records (the gateway then answers RST)."""
    client_state, _, _ = _slept()
    _, other_server_state, _ = _slept({"offer_cid": True})
    wrong = SessionState.from_dict({**other_server_state.to_dict(), "master_secret": "00" * 48, "keys": None})
    device = DtlsClient.resume(client_config(), client_state, now=5.0)
    device.send_application_data(b"ping")
    server = DtlsServer.resume(server_config(), wrong, ADDRESS, now=5.0)
    server.receive_datagram(device.datagrams_to_send()[0], 5.0)
    assert [RecordDropped("record authentication failed")] == drain(server)


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"master_secret": "00"},
        {"client_random": "zz"},
        {"epoch": 0},
        {"write_sequence": 1 << 48},
        {"replay_bitmap": 1 << 64},
        {"identity": 5},
        {"peer_key": None},
        {"keys": "00" * 39},
        {"keys": "zz"},
    ],
    ids=[
        "format",
        "master",
        "hex",
        "epoch",
        "sequence",
        "bitmap",
        "identity",
        "missing key",
        "keys",
        "keys hex",
    ],
)
def test_a_damaged_stored_session_is_refused(change: dict[str, object]) -> None:
    _, server_state, _ = _slept()
    with pytest.raises(LocalProtocolError):
        SessionState.from_dict({**server_state.to_dict(), **change})


def test_a_session_keeps_its_key_expansion_and_an_older_row_without_it_still_resumes() -> None:
    """The stored keys spare a resumption the PRF; a row stored before they were kept derives them."""
    client_state, server_state, _ = _slept()
    derived = key_block(server_state.master_secret, server_state.client_random, server_state.server_random)
    assert (derived, derived) == (server_state.keys, client_state.keys)
    older = {k: v for k, v in server_state.to_dict().items() if k != "keys"}
    device = DtlsClient.resume(client_config(), client_state, now=5.0)
    device.send_application_data(b"ping")
    server = DtlsServer.resume(server_config(), SessionState.from_dict(older), ADDRESS, now=5.0)
    server.receive_datagram(device.datagrams_to_send()[0], 5.0)
    assert [b"ping"] == [event.data for event in drain(server) if isinstance(event, ApplicationData)]


def test_export_before_a_handshake_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        DtlsServer(server_config(), ADDRESS, now=0.0).export_session()
