"""The DTLS handshake between the sans-IO server and client: flights, extensions, timers, fragments."""

from __future__ import annotations

from tests.support.dtls import (
    DEVICE_ID,
    DEVICE_KEY,
    Link,
    client_config,
    counter_random,
    drain,
    handshake,
    server_config,
)

from devicecloud.protocol.dtls import (
    ApplicationData,
    ConnectionClosed,
    DtlsClient,
    DtlsState,
    HandshakeComplete,
    Timers,
    spki_der,
)
from devicecloud.protocol.dtls.messages import Extension, HandshakeType, Reader, parse_server_hello
from devicecloud.protocol.dtls.records import parse_datagram


def _handshake_messages(datagram: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each unencrypted handshake message in a datagram (whole messages only)."""
    out = []
    for record in parse_datagram(datagram):
        if record.epoch != 0 or record.content_type != 22:
            continue
        payload = record.fragment
        while payload:
            length = int.from_bytes(payload[9:12], "big")
            out.append((payload[0], payload[12 : 12 + length]))
            payload = payload[12 + length :]
    return out


def test_the_handshake_completes_with_cookie_cid_and_raw_public_keys() -> None:
    link = handshake()
    assert link.server is not None
    assert DtlsState.ESTABLISHED == link.client.state == link.server.state
    (client_done,) = drain(link.client)
    (server_done,) = drain(link.server)
    assert isinstance(client_done, HandshakeComplete)
    assert isinstance(server_done, HandshakeComplete)
    assert DEVICE_ID.hex() == server_done.session.identity == link.server.identity
    assert spki_der(DEVICE_KEY.public_key()) == server_done.session.peer_key
    assert client_done.session.master_secret == server_done.session.master_secret
    assert server_done.session.cid is not None
    assert 8 == len(server_done.session.cid)
    assert ["c", "s", "c", "s", "c", "s"] == [direction for direction, _ in link.wire]


def test_the_server_flight_is_particles_no_certificate_message() -> None:
    link = handshake()
    hvr = _handshake_messages(link.wire[1][1])
    assert [HandshakeType.HELLO_VERIFY_REQUEST] == [t for t, _ in hvr]
    flight = _handshake_messages(link.wire[3][1])
    assert [
        HandshakeType.SERVER_HELLO,
        HandshakeType.SERVER_KEY_EXCHANGE,
        HandshakeType.CERTIFICATE_REQUEST,
        HandshakeType.SERVER_HELLO_DONE,
    ] == [t for t, _ in flight]
    hello = parse_server_hello(flight[0][1])
    assert b"\x02" == hello.extensions[Extension.CLIENT_CERTIFICATE_TYPE]
    assert b"\x02" == hello.extensions[Extension.SERVER_CERTIFICATE_TYPE]
    assert 9 == len(hello.extensions[Extension.CONNECTION_ID])
    assert 8 == hello.extensions[Extension.CONNECTION_ID][0]
    assert b"\x00" == hello.extensions[Extension.RENEGOTIATION_INFO]
    # ServerKeyExchange: named curve secp256r1, a 65-byte point, ECDSA-SHA256.
    ske = flight[1][1]
    assert bytes.fromhex("03001741") == ske[:4]
    assert bytes.fromhex("0403") == ske[69:71]
    assert bytes.fromhex("014000020403" + "0000") == flight[2][1]
    reader = Reader(ske[71:], "signature")
    assert len(reader.vector(2)) > 60


def test_application_data_both_ways_cid_records_up_plain_records_down() -> None:
    link = handshake()
    assert link.server is not None
    drain(link.client), drain(link.server)
    link.client.send_application_data(b"\x40\x01\x00\x01")
    (up,) = link.client.datagrams_to_send()
    assert 25 == up[0]
    assert link.server.export_session().cid == up[11:19]
    link.to_server(up)
    assert [ApplicationData(b"\x40\x01\x00\x01")] == drain(link.server)
    link.server.send_application_data(b"\x60\x00\x00\x01")
    (down,) = link.server.datagrams_to_send()
    assert 23 == down[0]
    link.client.receive_datagram(down, 0.0)
    assert [ApplicationData(b"\x60\x00\x00\x01")] == drain(link.client)


def test_without_a_cid_offer_there_is_no_cid() -> None:
    link = handshake({"offer_cid": False})
    assert link.server is not None
    flight = _handshake_messages(link.wire[3][1])
    assert Extension.CONNECTION_ID not in parse_server_hello(flight[0][1]).extensions
    drain(link.client), drain(link.server)
    assert link.server.export_session().cid is None
    link.client.send_application_data(b"ping")
    (up,) = link.client.datagrams_to_send()
    assert 23 == up[0]
    link.to_server(up)
    assert [ApplicationData(b"ping")] == drain(link.server)


def test_a_transcript_replays_byte_for_byte() -> None:
    """Randomness, the ephemeral keys and deterministic ECDSA are all injected: same inputs, same bytes."""
    first, second = handshake(), handshake()
    assert first.wire == second.wire
    assert 6 == len(first.wire)


def test_feeding_the_accepted_datagram_gives_the_same_wire_as_accept() -> None:
    """The gateway's path (DtlsServer.accept from the gate's check) and the plain one agree byte for byte."""
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    fed = Link(client, server_config(), feed_accepted=True)
    client.start(0.0)
    fed.pump()
    assert fed.server is not None
    assert DtlsState.ESTABLISHED == fed.server.state
    assert handshake().wire == fed.wire


def test_a_lost_server_flight_is_sent_again_on_the_clients_timer() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config())
    client.start(0.0)
    link.to_server(client.datagrams_to_send()[0])  # → HelloVerifyRequest, answered inside to_server
    link.to_server(client.datagrams_to_send()[0])  # ClientHello with cookie → the server's flight
    assert link.server is not None
    lost = link.server.datagrams_to_send()
    assert lost
    assert 3.0 == client.get_timer()  # Device OS: 3 s, doubling
    client.handle_timer(3.0)
    assert 1 == client.retransmissions
    assert 9.0 == client.get_timer()
    link.now = 3.0
    link.pump()  # the ClientHello again: the server sends its flight again, with new record numbers
    assert DtlsState.ESTABLISHED == client.state == link.server.state
    assert 1 == link.server.retransmissions


def test_a_lost_client_flight_is_recovered_by_the_servers_timer() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config())
    client.start(0.0)
    link.to_server(client.datagrams_to_send()[0])
    link.to_server(client.datagrams_to_send()[0])
    assert link.server is not None
    for datagram in link.server.datagrams_to_send():
        client.receive_datagram(datagram, 0.0)
    client.datagrams_to_send()  # the client's flight is lost
    assert 1.0 == link.server.get_timer()
    link.server.handle_timer(1.0)  # the server's flight again → the client answers with its flight again
    link.now = 1.0
    link.pump()
    assert DtlsState.ESTABLISHED == client.state == link.server.state
    assert 1 == client.retransmissions


def test_a_lost_final_flight_is_sent_again_when_the_client_repeats_its_flight() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config())
    client.start(0.0)
    for _ in range(2):
        link.to_server(client.datagrams_to_send()[0])
    assert link.server is not None
    for datagram in link.server.datagrams_to_send():
        client.receive_datagram(datagram, 0.0)
    for datagram in client.datagrams_to_send():
        link.to_server(datagram)
    assert DtlsState.ESTABLISHED == link.server.state
    assert link.server.datagrams_to_send()  # CCS + Finished, lost
    assert link.server.get_timer() is None  # the server's last flight has no timer (RFC 6347 §4.2.4)
    client.handle_timer(3.0)
    link.now = 3.0
    link.pump()
    assert DtlsState.ESTABLISHED == client.state
    assert 1 == link.server.retransmissions


def test_a_handshake_that_never_finishes_times_out() -> None:
    client = DtlsClient(
        client_config(timers=Timers(initial=3.0, maximum=24.0, handshake_timeout=60.0)), now=0.0
    )
    client.start(0.0)
    now = 0.0
    sent = 0
    while (deadline := client.get_timer()) is not None:
        now = deadline
        client.handle_timer(now)
        sent += len(client.datagrams_to_send())
    assert 60.0 == now
    assert 5 == sent  # the ClientHello at 0 s, then again at 3, 9, 21 and 45 s (3 s doubling, capped at 24)
    (closed,) = [e for e in drain(client) if isinstance(e, ConnectionClosed)]
    assert closed.error
    assert "timed out" in closed.reason


def test_fragmented_flights_are_reassembled_in_any_order() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config(max_datagram=120))
    client.start(0.0)
    for _ in range(2):  # ClientHellos are never fragmented (the cookie gate wants them whole)
        link.to_server(client.datagrams_to_send()[0])
    assert link.server is not None
    client._max_datagram = 100  # from here on the device's messages are cut into fragments
    flight = link.server.datagrams_to_send()
    assert len(flight) > 3
    assert all(len(d) <= 120 for d in flight)
    assert not link.server.retransmissions
    for datagram in reversed(flight):
        client.receive_datagram(datagram, 0.0)
    answer = client.datagrams_to_send()
    assert len(answer) > 3
    for datagram in reversed(answer[:-1]):  # the epoch-1 Finished last: it needs the CCS before it
        link.to_server(datagram)
    link.to_server(answer[-1])
    link.pump()
    assert DtlsState.ESTABLISHED == client.state == link.server.state
