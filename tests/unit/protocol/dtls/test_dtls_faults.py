"""Faults at the DTLS layer: spoofed ClientHellos, replays, wrong CIDs, bad datagrams, unregistered keys."""

from __future__ import annotations

import pytest
from tests.support.dtls import (
    ADDRESS,
    COOKIE_SECRET,
    OTHER_KEY,
    Link,
    Registry,
    client_config,
    counter_random,
    drain,
    handshake,
    server_config,
)

from devicecloud.protocol.dtls import (
    AlertDescription,
    AlertReceived,
    ApplicationData,
    ConnectionClosed,
    DtlsClient,
    DtlsServer,
    DtlsState,
    RecordDropped,
    check_client_hello,
)
from devicecloud.protocol.dtls.cookies import make_cookie
from devicecloud.protocol.dtls.primitives import ecdsa_signer
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError


def _first_hello() -> bytes:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    client.start(0.0)
    (hello,) = client.datagrams_to_send()
    return hello


def test_a_clienthello_without_a_cookie_gets_a_cookie_and_no_state() -> None:
    hello = _first_hello()
    check = check_client_hello(hello, ADDRESS, (COOKIE_SECRET,))
    assert not check.accept
    assert check.reply is not None
    assert 22 == check.reply[0]
    assert hello[3:11] == check.reply[3:11]  # the HelloVerifyRequest reuses the ClientHello's record number
    # The function keeps nothing: the same datagram gets the same answer, whatever came between.
    for _ in range(1000):
        check_client_hello(hello, b"10.0.0.%d:1" % (_ % 250), (COOKIE_SECRET,))
    assert check == check_client_hello(hello, ADDRESS, (COOKIE_SECRET,))


def test_a_cookie_is_bound_to_the_address_and_the_secret() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    client.start(0.0)
    check = check_client_hello(client.datagrams_to_send()[0], ADDRESS, (COOKIE_SECRET,))
    assert check.reply is not None
    client.receive_datagram(check.reply, 0.0)
    (with_cookie,) = client.datagrams_to_send()
    assert check_client_hello(with_cookie, ADDRESS, (COOKIE_SECRET,)).accept
    elsewhere = check_client_hello(with_cookie, b"127.0.0.1:40001", (COOKIE_SECRET,))
    assert not elsewhere.accept
    assert elsewhere.reply is not None  # a fresh cookie for the new address
    assert not check_client_hello(with_cookie, ADDRESS, (b"new secret",)).accept
    assert check_client_hello(with_cookie, ADDRESS, (b"new secret", COOKIE_SECRET)).accept  # rotation


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x16",
        b"\x17\xfe\xfd" + bytes(10) + b"\x00\x01x",
        b"\x16\xfe\xfd" + bytes(8) + b"\x00\x0c" + bytes(12),
    ],
    ids=["empty", "one byte", "application data", "empty handshake"],
)
def test_the_cookie_gate_drops_what_is_not_a_clienthello(datagram: bytes) -> None:
    check = check_client_hello(datagram, ADDRESS, (COOKIE_SECRET,))
    assert (False, None) == (check.accept, check.reply)


def test_a_server_endpoint_refuses_a_clienthello_whose_cookie_it_did_not_make() -> None:
    server = DtlsServer(server_config(), ADDRESS, now=0.0)
    with pytest.raises(RemoteProtocolError, match="cookie"):
        server.receive_datagram(_first_hello(), 0.0)
    assert DtlsState.CLOSED == server.state
    assert make_cookie(COOKIE_SECRET, ADDRESS, b"x") != make_cookie(COOKIE_SECRET, b"elsewhere", b"x")


def test_an_unregistered_device_key_is_refused_and_only_that_peer() -> None:
    registry = Registry()
    config = server_config(registry)
    stranger = DtlsClient(client_config(OTHER_KEY), now=0.0, random_bytes=counter_random(b"x"))
    link = Link(stranger, config)
    stranger.start(0.0)
    with pytest.raises(RemoteProtocolError, match="not registered"):
        link.pump()
    assert link.server is not None
    assert DtlsState.CLOSED == link.server.state
    # The bad_certificate alert reaches the device, which gives up.
    for datagram in link.server.datagrams_to_send():
        stranger.receive_datagram(datagram, 0.0)
    events = drain(stranger)
    assert AlertReceived(2, AlertDescription.BAD_CERTIFICATE) in events
    assert DtlsState.CLOSED == stranger.state
    # The same server config goes on serving registered devices.
    from tests.support.dtls import DEVICE_ID, DEVICE_KEY, spki_der

    registry.keys[spki_der(DEVICE_KEY.public_key())] = DEVICE_ID.hex()
    good = handshake(registry=registry)
    assert good.server is not None
    assert DtlsState.ESTABLISHED == good.server.state


def test_a_device_whose_signature_does_not_match_its_key_is_refused() -> None:
    """The device presents the registered key but signs CertificateVerify with another one."""
    config = client_config()
    impostor = DtlsClient(
        type(config)(
            signer=ecdsa_signer(OTHER_KEY),
            device_public_key=config.device_public_key,
            server_public_key=config.server_public_key,
        ),
        now=0.0,
    )
    link = Link(impostor, server_config())
    impostor.start(0.0)
    with pytest.raises(RemoteProtocolError, match="CertificateVerify"):
        link.pump()
    assert link.server is not None
    assert link.server.identity == "0123456789abcdef01234567"  # the key was known; possession was not shown
    assert DtlsState.CLOSED == link.server.state


def _established() -> tuple[Link, DtlsServer]:
    link = handshake()
    assert link.server is not None
    drain(link.client), drain(link.server)
    return link, link.server


def test_a_replayed_record_is_dropped() -> None:
    link, server = _established()
    link.client.send_application_data(b"once")
    (datagram,) = link.client.datagrams_to_send()
    server.receive_datagram(datagram, 0.0)
    server.receive_datagram(datagram, 0.0)
    assert [ApplicationData(b"once"), RecordDropped("replayed record")] == drain(server)
    assert DtlsState.ESTABLISHED == server.state


def test_a_record_with_a_wrong_cid_is_dropped() -> None:
    link, server = _established()
    link.client.send_application_data(b"data")
    (datagram,) = link.client.datagrams_to_send()
    wrong = datagram[:11] + bytes(8) + datagram[19:]
    server.receive_datagram(wrong, 0.0)
    assert [RecordDropped("record without this session's CID")] == drain(server)
    server.receive_datagram(datagram, 0.0)  # the real one still goes through
    assert [ApplicationData(b"data")] == drain(server)


def test_a_tampered_record_is_dropped_and_does_not_move_the_replay_window() -> None:
    link, server = _established()
    link.client.send_application_data(b"data")
    (datagram,) = link.client.datagrams_to_send()
    server.receive_datagram(datagram[:-1] + bytes([datagram[-1] ^ 0x80]), 0.0)
    assert [RecordDropped("record authentication failed")] == drain(server)
    server.receive_datagram(datagram, 0.0)
    assert [ApplicationData(b"data")] == drain(server)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(lambda d: d[:12], "truncated record header"), (lambda d: d[:-1], "truncated record"),
     (lambda d: d + bytes(70000), "datagram too large")],
    ids=["header", "body", "oversized"],
)  # fmt: skip
def test_truncated_and_oversized_datagrams_are_dropped(cut: object, reason: str) -> None:
    link, server = _established()
    link.client.send_application_data(b"data")
    (datagram,) = link.client.datagrams_to_send()
    server.receive_datagram(cut(datagram), 0.0)  # type: ignore[operator]
    assert [RecordDropped(reason)] == drain(server)
    assert DtlsState.ESTABLISHED == server.state


def test_unprotected_records_after_the_handshake_are_dropped() -> None:
    _, server = _established()
    from devicecloud.protocol.dtls.records import encode_record

    for content_type, payload in ((23, b"plain"), (21, b"\x02\x28"), (22, b"\x01" + bytes(11))):
        server.receive_datagram(encode_record(content_type, 0, 99 + content_type, payload), 0.0)
    assert [
        RecordDropped("unprotected application data"),
        RecordDropped("unprotected alert after the handshake"),
        RecordDropped("ClientHello on an established session"),
    ] == drain(server)
    assert DtlsState.ESTABLISHED == server.state


def test_close_notify_closes_both_ends() -> None:
    link, server = _established()
    link.client.close()
    for datagram in link.client.datagrams_to_send():
        server.receive_datagram(datagram, 0.0)
    events = drain(server)
    assert AlertReceived(1, 0) in events
    assert ConnectionClosed("the peer closed the session") in events
    assert DtlsState.CLOSED == server.state


def test_a_clienthello_without_the_particle_suite_is_refused() -> None:
    """A ClientHello offering only AES-GCM (0xC02B) gets handshake_failure, after the cookie as always."""
    from devicecloud.protocol.dtls.messages import HandshakeType, handshake_header, parse_client_hello
    from devicecloud.protocol.dtls.records import encode_record

    def hello_record(cookie: bytes) -> bytes:
        body = (
            b"\xfe\xfd"
            + bytes(32)
            + b"\x00"
            + bytes([len(cookie)])
            + cookie
            + b"\x00\x02\xc0\x2b"
            + b"\x01\x00"
        )
        return encode_record(
            22, 0, 0, handshake_header(HandshakeType.CLIENT_HELLO, 0, len(body), 0, len(body)) + body
        )

    first = hello_record(b"")
    check = check_client_hello(first, ADDRESS, (COOKIE_SECRET,))
    assert check.reply is not None
    cookie = make_cookie(COOKIE_SECRET, ADDRESS, parse_client_hello(first[25:]).cookie_input)
    second = hello_record(cookie)
    assert check_client_hello(second, ADDRESS, (COOKIE_SECRET,)).accept
    server = DtlsServer(server_config(), ADDRESS, now=0.0)
    with pytest.raises(RemoteProtocolError, match="does not offer TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"):
        server.receive_datagram(second, 0.0)
    (alert,) = server.datagrams_to_send()
    assert bytes.fromhex("15fefd") == alert[:3]
    assert bytes([2, AlertDescription.HANDSHAKE_FAILURE]) == alert[-2:]
    # The gateway's path: accept() returns the endpoint already closed, its alert waiting to be sent.
    accepted = DtlsServer.accept(
        server_config(), check_client_hello(second, ADDRESS, (COOKIE_SECRET,)), ADDRESS, now=0.0
    )
    assert DtlsState.CLOSED == accepted.state
    assert [alert] == accepted.datagrams_to_send()
    (closed,) = drain(accepted)
    assert isinstance(closed, ConnectionClosed)
    assert closed.error
    with pytest.raises(LocalProtocolError):
        DtlsServer.accept(server_config(), check, ADDRESS, now=0.0)  # a check that asked for a cookie


def test_a_spoofer_repeating_the_clienthello_gets_the_flight_a_bounded_number_of_times() -> None:
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config())
    client.start(0.0)
    link.to_server(client.datagrams_to_send()[0])
    (hello,) = client.datagrams_to_send()
    link.to_server(hello)
    assert link.server is not None
    link.server.datagrams_to_send()
    sent = 0
    for n in range(50):  # the same ClientHello with ever new record numbers (epoch 0 is unauthenticated)
        copy = hello[:5] + (1000 + n).to_bytes(6, "big") + hello[11:]
        link.server.receive_datagram(copy, 0.0)
        sent += len(link.server.datagrams_to_send())
    assert 8 == sent


def test_a_device_pinned_to_another_server_key_refuses_the_server() -> None:
    """The device checks ServerKeyExchange with the key it has pinned: a different server key fails."""
    config = client_config()
    pinned_elsewhere = type(config)(
        signer=config.signer,
        device_public_key=config.device_public_key,
        server_public_key=OTHER_KEY.public_key(),
    )
    device = DtlsClient(pinned_elsewhere, now=0.0)
    link = Link(device, server_config())
    device.start(0.0)
    with pytest.raises(RemoteProtocolError, match="ServerKeyExchange not signed"):
        link.pump()
    assert DtlsState.CLOSED == device.state
    assert link.server is not None
    for datagram in device.datagrams_to_send():
        link.server.receive_datagram(datagram, 0.0)
    assert AlertReceived(2, AlertDescription.DECRYPT_ERROR) in drain(link.server)
    assert DtlsState.CLOSED == link.server.state
