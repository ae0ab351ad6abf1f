"""
DTLS 1.2 for Particle's UDP protocol (Gen3 devices, Electron), sans-IO, on ``cryptography`` primitives.

Datagrams in, events out, datagrams out; no sockets, no clock, no logging. The one profile the devices speak
(ota-and-dtls.md §B): TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 on P-256, raw public keys (RFC 7250) with no
server Certificate message, draft-05 Connection IDs (record types 25/253), legacy type-254 resumption
records, stateless HelloVerifyRequest cookies, a 64-record replay window, flight retransmission and
fragment reassembly. Typical server loop::

    check = check_client_hello(datagram, address, config.cookie_secrets)   # no session for this address
    if check.reply: sendto(check.reply, address)                           # HelloVerifyRequest, no state
    elif check.accept: server = DtlsServer.accept(config, check, address, now=clock())
    ...                                                                    # later datagrams:
    server.receive_datagram(datagram, clock())                             # RemoteProtocolError → drop it
    while (event := server.next_event()) is not None: ...                  # HandshakeComplete, data…
    for out in server.datagrams_to_send(): sendto(out, address)
    rearm(server.get_timer())                                              # → server.handle_timer(now)
"""

from devicecloud.protocol.dtls.client import ClientConfig, DtlsClient, ResumeMarker
from devicecloud.protocol.dtls.cookies import HelloCheck, check_client_hello
from devicecloud.protocol.dtls.endpoint import HANDSHAKE_TIMED_OUT, AlertDescription, DtlsState, Timers
from devicecloud.protocol.dtls.events import (
    AlertReceived,
    ApplicationData,
    ConnectionClosed,
    DtlsEvent,
    HandshakeComplete,
    RecordDropped,
)
from devicecloud.protocol.dtls.primitives import Signer, ecdsa_signer, spki_der
from devicecloud.protocol.dtls.records import CID_SIZE, peek_cid, peek_device_id
from devicecloud.protocol.dtls.server import DtlsServer, KeyCheck, ServerConfig
from devicecloud.protocol.dtls.session import SessionState

__all__ = [
    "CID_SIZE",
    "HANDSHAKE_TIMED_OUT",
    "AlertDescription",
    "AlertReceived",
    "ApplicationData",
    "ClientConfig",
    "ConnectionClosed",
    "DtlsClient",
    "DtlsEvent",
    "DtlsServer",
    "DtlsState",
    "HandshakeComplete",
    "HelloCheck",
    "KeyCheck",
    "RecordDropped",
    "ResumeMarker",
    "ServerConfig",
    "SessionState",
    "Signer",
    "Timers",
    "check_client_hello",
    "ecdsa_signer",
    "peek_cid",
    "peek_device_id",
    "spki_der",
]
