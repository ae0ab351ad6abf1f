"""Fuzzing the DTLS endpoints: whatever a peer sends raises only RemoteProtocolError (h11's afl idea)."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.dtls import (
    ADDRESS,
    COOKIE_SECRET,
    Link,
    client_config,
    counter_random,
    drain,
    handshake,
    server_config,
)

from devicecloud.protocol.dtls import DtlsClient, DtlsServer, DtlsState, check_client_hello
from devicecloud.protocol.dtls.messages import handshake_header
from devicecloud.protocol.dtls.records import encode_record
from devicecloud.protocol.errors import RemoteProtocolError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _feed(endpoint: DtlsServer | DtlsClient, datagrams: list[bytes]) -> None:
    for datagram in datagrams:
        try:
            endpoint.receive_datagram(datagram, 1.0)
        except RemoteProtocolError:
            assert DtlsState.CLOSED == endpoint.state
        drain(endpoint)
        endpoint.handle_timer(2.0)
        endpoint.datagrams_to_send()


def _server_after_cookie() -> tuple[DtlsServer, Link]:
    """A server endpoint that accepted a ClientHello and sent its flight."""
    client = DtlsClient(client_config(), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config())
    client.start(0.0)
    for _ in range(2):
        link.to_server(client.datagrams_to_send()[0])
    assert link.server is not None
    link.server.datagrams_to_send()
    return link.server, link


@FUZZ
@given(data=st.binary(max_size=400))
def test_the_cookie_gate_never_raises(data: bytes) -> None:
    check = check_client_hello(data, ADDRESS, (COOKIE_SECRET,))
    assert not check.accept


@FUZZ
@given(datagrams=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_datagrams_mid_handshake(datagrams: list[bytes]) -> None:
    server, _ = _server_after_cookie()
    _feed(server, datagrams)


@FUZZ
@given(
    messages=st.lists(
        st.tuples(st.sampled_from([1, 11, 15, 16, 20, 99]), st.binary(max_size=200)), min_size=1, max_size=4
    ),
    seq=st.integers(min_value=0, max_value=4),
)
def test_random_handshake_messages_in_well_formed_records(
    messages: list[tuple[int, bytes]], seq: int
) -> None:
    server, _ = _server_after_cookie()
    datagrams = [
        encode_record(22, 0, 10 + i, handshake_header(msg_type, seq + i, len(body), 0, len(body)) + body)
        for i, (msg_type, body) in enumerate(messages)
    ]
    _feed(server, datagrams)


@FUZZ
@given(
    fragments=st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 5), st.binary(max_size=60)),
        min_size=1,
        max_size=6,
    )
)
def test_random_fragments(fragments: list[tuple[int, int, int, bytes]]) -> None:
    server, _ = _server_after_cookie()
    datagrams = [
        encode_record(22, 0, 10 + i, handshake_header(11, seq, length, offset, len(chunk)) + chunk)
        for i, (length, offset, seq, chunk) in enumerate(fragments)
    ]
    _feed(server, datagrams)


@FUZZ
@given(datagrams=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_datagrams_to_established_ends(datagrams: list[bytes]) -> None:
    link = handshake()
    assert link.server is not None
    for endpoint in (link.server, link.client):
        drain(endpoint)
        _feed(endpoint, datagrams)
        assert DtlsState.ESTABLISHED == endpoint.state  # nothing unauthenticated ends a session


@FUZZ
@given(datagrams=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_random_datagrams_to_a_client_waiting_for_the_server(datagrams: list[bytes]) -> None:
    client = DtlsClient(client_config(), now=0.0)
    client.start(0.0)
    client.datagrams_to_send()
    with contextlib.suppress(RemoteProtocolError):
        _feed(client, datagrams)
