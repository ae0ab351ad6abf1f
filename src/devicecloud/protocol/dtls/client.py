"""
The client (device) end of Particle's DTLS 1.2 profile, sans-IO: what Device OS's Mbed TLS does, for the
virtual device and the tests.

It offers only TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, raw public keys both ways and (``offer_cid``) draft-05's
Connection ID; it does not read a server Certificate (the pinned server key verifies ServerKeyExchange, and
a Certificate message is an unexpected message, as on a device). ``resume`` continues a stored session
without a handshake; until the first record from the server arrives the datagrams carry the resumption
marker of ``ResumeMarker``: 253 for CID sessions (Device OS ≥ 4.0), 254 + device id for the others (≤ 3.0).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol.dtls import events
from devicecloud.protocol.dtls.endpoint import AlertDescription, Endpoint, HandshakeFailure, Timers
from devicecloud.protocol.dtls.messages import (
    ECDSA_SHA256,
    RAW_PUBLIC_KEY,
    SECP256R1,
    Extension,
    HandshakeType,
    build_client_hello,
    parse_certificate_request,
    parse_hello_verify_request,
    parse_server_hello,
    parse_server_key_exchange,
)
from devicecloud.protocol.dtls.primitives import (
    RecordCipher,
    Signer,
    ecdh_shared_secret,
    ecdsa_verify,
    encode_point,
    key_block,
    master_secret,
    private_key_from_bytes,
    spki_der,
    verify_data,
)
from devicecloud.protocol.dtls.records import CID_SIZE
from devicecloud.protocol.dtls.session import SessionState
from devicecloud.protocol.errors import LocalProtocolError

__all__ = ["ClientConfig", "DtlsClient", "ResumeMarker"]

RandomBytes = Callable[[int], bytes]


class ResumeMarker(Enum):
    """How a resumed client marks its datagrams until the server answers."""

    NONE = "none"  # Device OS 3.1–3.3: plain CID records
    MOVED = "moved"  # 253 on CID sessions (4.0+), 254 + device id on sessions without CID (≤ 3.0)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """
    A device's DTLS identity.

    Attributes:
        signer: signs CertificateVerify with the device's P-256 key.
        device_public_key: the device key (its SPKI is the raw-public-key Certificate).
        server_public_key: the pinned server key.
        device_id: the 12-byte device id (for type-254 records).
        offer_cid: offer draft-05's Connection ID (Device OS ≥ 3.1).
        timers: Device OS uses 3 s doubling to 24 s.
    """

    signer: Signer
    device_public_key: ec.EllipticCurvePublicKey
    server_public_key: ec.EllipticCurvePublicKey
    device_id: bytes = bytes(12)
    offer_cid: bool = True
    timers: Timers = field(default_factory=lambda: Timers(initial=3.0, maximum=24.0))
    max_datagram: int = 1152


class DtlsClient(Endpoint):
    """One device-side DTLS association. Call :meth:`start` to send the first ClientHello."""

    __slots__ = (
        "_cid",
        "_client_random",
        "_config",
        "_expect",
        "_master",
        "_random",
        "_saw_ccs",
        "_server_point",
        "_server_random",
        "_transcript",
    )

    is_server = False

    def __init__(self, config: ClientConfig, *, now: float, random_bytes: RandomBytes = os.urandom) -> None:
        super().__init__(now=now, timers=config.timers, max_datagram=config.max_datagram)
        self._config = config
        self._random = random_bytes
        self._client_random = b""
        self._server_random = b""
        self._expect: set[int] = set()
        self._cid: bytes | None = None
        self._master = b""
        self._saw_ccs = False
        self._server_point = b""
        self._device_id = config.device_id
        self._transcript = bytearray()  # the handshake messages, which CertificateVerify signs

    def _add_transcript(self, raw: bytes) -> None:
        self._transcript += raw
        super()._add_transcript(raw)

    def _reset_transcript(self) -> None:
        self._transcript = bytearray()
        super()._reset_transcript()

    @classmethod
    def resume(
        cls,
        config: ClientConfig,
        session: SessionState,
        *,
        now: float,
        marker: ResumeMarker = ResumeMarker.MOVED,
    ) -> DtlsClient:
        """A client continuing a stored session: established at once, no handshake."""
        client = cls(config, now=now)
        client._restore(session)
        if marker is ResumeMarker.MOVED:
            client._send_marker = 253 if session.cid is not None else 254
        return client

    def start(self, now: float) -> None:
        """Send the first ClientHello."""
        if self._client_random:
            raise LocalProtocolError("already started")
        self._client_random = self._random(32)
        self._send_hello(b"", now)

    # ------------------------------------------------------------------------------------------ messages

    def _send_hello(self, cookie: bytes, now: float) -> None:
        extensions: list[tuple[int, bytes]] = [
            (Extension.SIGNATURE_ALGORITHMS, b"\x00\x02" + ECDSA_SHA256.to_bytes(2, "big")),
            (Extension.SUPPORTED_GROUPS, b"\x00\x02" + SECP256R1.to_bytes(2, "big")),
            (Extension.EC_POINT_FORMATS, b"\x01\x00"),
        ]
        if self._config.offer_cid:
            extensions.append((Extension.CONNECTION_ID, b"\x00"))
        extensions += [
            (Extension.CLIENT_CERTIFICATE_TYPE, bytes([1, RAW_PUBLIC_KEY])),
            (Extension.SERVER_CERTIFICATE_TYPE, bytes([1, RAW_PUBLIC_KEY])),
        ]
        self._new_flight()
        self._reset_transcript()  # the cookie exchange is not part of the handshake hash
        self._queue_message(
            HandshakeType.CLIENT_HELLO, build_client_hello(self._client_random, cookie, extensions)
        )
        self._send_flight(now, expect_reply=True)
        self._expect = {HandshakeType.SERVER_HELLO} | (
            {HandshakeType.HELLO_VERIFY_REQUEST} if not cookie else set()
        )

    def _on_handshake_message(self, msg_type: int, body: bytes, raw: bytes, now: float) -> None:
        if msg_type not in self._expect:
            raise HandshakeFailure(
                f"unexpected handshake message {msg_type}", AlertDescription.UNEXPECTED_MESSAGE
            )
        if msg_type == HandshakeType.HELLO_VERIFY_REQUEST:
            self._send_hello(parse_hello_verify_request(body), now)
            return
        if msg_type == HandshakeType.FINISHED:
            self._finished(body)
            return
        self._add_transcript(raw)
        if msg_type == HandshakeType.SERVER_HELLO:
            self._server_hello(body)
            self._expect = {HandshakeType.SERVER_KEY_EXCHANGE}
        elif msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
            params, point, signature = parse_server_key_exchange(body)
            signed = self._client_random + self._server_random + params
            if not ecdsa_verify(self._config.server_public_key, signature, signed):
                raise HandshakeFailure(
                    "ServerKeyExchange not signed by the server key", AlertDescription.DECRYPT_ERROR
                )
            self._server_point = point
            self._expect = {HandshakeType.CERTIFICATE_REQUEST, HandshakeType.SERVER_HELLO_DONE}
        elif msg_type == HandshakeType.CERTIFICATE_REQUEST:
            parse_certificate_request(body)
            self._expect = {HandshakeType.SERVER_HELLO_DONE}
        elif msg_type == HandshakeType.SERVER_HELLO_DONE:
            self._send_client_flight(now)
            self._peer_flight_end = self._recv_msg_seq - 1

    def _server_hello(self, body: bytes) -> None:
        hello = parse_server_hello(body)
        self._server_random = hello.random
        if hello.extensions.get(Extension.CLIENT_CERTIFICATE_TYPE) != bytes([RAW_PUBLIC_KEY]):
            raise HandshakeFailure("server did not take a raw public key", AlertDescription.HANDSHAKE_FAILURE)
        cid = hello.extensions.get(Extension.CONNECTION_ID)
        if cid is not None:
            if not self._config.offer_cid or len(cid) != 1 + CID_SIZE or cid[0] != CID_SIZE:
                raise HandshakeFailure("the server's CID is not 8 bytes", AlertDescription.ILLEGAL_PARAMETER)
            self._cid = cid[1:]

    def _send_client_flight(self, now: float) -> None:
        ephemeral = private_key_from_bytes(self._random(32))
        pre_master = ecdh_shared_secret(ephemeral, self._server_point)
        self._master = master_secret(pre_master, self._client_random, self._server_random)
        block = self._keys = key_block(self._master, self._client_random, self._server_random)
        self._pending_write = RecordCipher(block.client_key, block.client_iv)
        self._pending_read = RecordCipher(block.server_key, block.server_iv)
        self._new_flight()
        spki = spki_der(self._config.device_public_key)
        self._queue_message(HandshakeType.CERTIFICATE, len(spki).to_bytes(3, "big") + spki)
        point = encode_point(ephemeral.public_key())
        self._queue_message(HandshakeType.CLIENT_KEY_EXCHANGE, bytes([len(point)]) + point)
        signature = self._config.signer(bytes(self._transcript))
        verify = ECDSA_SHA256.to_bytes(2, "big") + len(signature).to_bytes(2, "big") + signature
        self._queue_message(HandshakeType.CERTIFICATE_VERIFY, verify)
        self._queue_change_cipher_spec()
        self._switch_write_epoch()
        self._cid_out = self._cid
        finished = verify_data(self._master, b"client finished", self._transcript_hash())
        self._queue_message(HandshakeType.FINISHED, finished, epoch=1)
        self._send_flight(now, expect_reply=True)
        self._expect = {HandshakeType.FINISHED}

    def _on_change_cipher_spec(self) -> None:
        if self._expect != {HandshakeType.FINISHED}:
            raise HandshakeFailure("ChangeCipherSpec too early", AlertDescription.UNEXPECTED_MESSAGE)
        self._saw_ccs = True

    def _finished(self, body: bytes) -> None:
        if not self._saw_ccs:
            raise HandshakeFailure("Finished before ChangeCipherSpec", AlertDescription.UNEXPECTED_MESSAGE)
        if body != verify_data(self._master, b"server finished", self._transcript_hash()):
            raise HandshakeFailure("server Finished does not verify", AlertDescription.DECRYPT_ERROR)
        self._flight = []
        self._expect = set()
        self.session = SessionState(
            master_secret=self._master,
            client_random=self._client_random,
            server_random=self._server_random,
            cid=self._cid,
            epoch=1,
            write_sequence=self._write_seq[1],
            replay_top=self._replay[1].top,
            replay_bitmap=self._replay[1].bitmap,
            peer_key=spki_der(self._config.server_public_key),
            keys=self._keys,
        )
        self._established()
        self._events.append(events.HandshakeComplete(self.session))

    def _on_application_data(self, data: bytes, moved: bool) -> None:
        self._send_marker = None  # the server answered: move-session mode ends, as on Device OS
        super()._on_application_data(data, moved)
