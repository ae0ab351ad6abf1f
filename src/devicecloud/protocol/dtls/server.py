"""
The server end of Particle's DTLS 1.2 profile (ota-and-dtls.md §B.3), sans-IO.

Flight by flight::

    ClientHello (no cookie)        → HelloVerifyRequest        (cookies.check_client_hello: stateless)
    ClientHello (valid cookie)     → ServerHello [CID, client/server_certificate_type = 2, renegotiation_info]
                                     (Certificate only in the test-only X.509 mode)
                                     ServerKeyExchange (ECDHE P-256, signed by the long-term key)
                                     CertificateRequest, ServerHelloDone
    Certificate (raw public key), ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished
                                   → ChangeCipherSpec, Finished; HandshakeComplete(session)

The device's key is checked by ``ServerConfig.key_check`` (SubjectPublicKeyInfo DER → the device's identity,
or ``None`` to refuse it with a bad_certificate alert). Randomness comes from ``random_bytes`` (server random,
ephemeral key, CID, in that order) and signatures from ``ServerConfig.signer``, so a transcript replays byte
for byte.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol.dtls import events
from devicecloud.protocol.dtls.cookies import HelloCheck, make_cookie
from devicecloud.protocol.dtls.endpoint import AlertDescription, Endpoint, HandshakeFailure, Timers
from devicecloud.protocol.dtls.messages import (
    CIPHER_SUITE,
    EMPTY_RENEGOTIATION_SCSV,
    RAW_PUBLIC_KEY,
    SECP256R1,
    X509,
    ClientHello,
    Extension,
    HandshakeType,
    Reader,
    build_certificate_request,
    build_server_hello,
    build_server_key_exchange,
    parse_certificate,
    parse_client_hello,
    parse_signature,
    server_ecdh_params,
)
from devicecloud.protocol.dtls.primitives import (
    RecordCipher,
    Signer,
    ecdh_shared_secret,
    ecdsa_verify_digest,
    encode_point,
    key_block,
    load_spki,
    master_secret,
    private_key_from_bytes,
    spki_der,
    verify_data,
)
from devicecloud.protocol.dtls.records import CID_SIZE
from devicecloud.protocol.dtls.session import SessionState
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DtlsServer", "KeyCheck", "ServerConfig"]

RandomBytes = Callable[[int], bytes]
# The device's SubjectPublicKeyInfo DER → its identity (the device id), or None to refuse the key.
KeyCheck = Callable[[bytes], "str | None"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """
    What every server endpoint of one process shares.

    Attributes:
        signer: signs ServerKeyExchange with the server's long-term P-256 key (``primitives.ecdsa_signer``).
        key_check: the device key → its identity, or ``None`` (refused).
        cookie_secrets: HMAC keys of HelloVerifyRequest cookies; the first makes them, all verify.
        certificate_chain: TEST-ONLY X.509 mode: DER certificates (leaf first, its key the signer's) sent
            to clients that do not offer raw public keys (OpenSSL, stock Mbed TLS); their X.509
            certificate's key then goes through ``key_check``. Empty (the default) = Particle's profile only.
        timers: flight retransmission.
        max_datagram: the largest datagram sent (Device OS buffers: 1152 bytes of record plaintext).
        use_cid: give a Connection ID to clients that offer the extension (Device OS ≥ 3.1 needs it).
    """

    signer: Signer
    key_check: KeyCheck
    cookie_secrets: tuple[bytes, ...]
    certificate_chain: tuple[bytes, ...] = ()
    timers: Timers = field(default_factory=Timers)
    max_datagram: int = 1152
    use_cid: bool = True


class DtlsServer(Endpoint):
    """
    One device's DTLS association on the server: :meth:`accept` starts one from the ClientHello that
    ``check_client_hello`` accepted; :meth:`resume` continues a stored session. (Constructing one and
    feeding it the accepted datagram also works: it then checks the cookie again itself.)
    """

    __slots__ = (
        "_address",
        "_cid",
        "_client_key",
        "_client_random",
        "_client_spki",
        "_config",
        "_ephemeral",
        "_expect",
        "_identity",
        "_master",
        "_random",
        "_raw_client_key",
        "_saw_ccs",
        "_server_random",
    )

    is_server = True

    def __init__(
        self, config: ServerConfig, address: bytes, *, now: float, random_bytes: RandomBytes = os.urandom
    ) -> None:
        super().__init__(now=now, timers=config.timers, max_datagram=config.max_datagram)
        self._config = config
        self._address = address
        self._random = random_bytes
        self._expect: int | None = HandshakeType.CLIENT_HELLO
        self._client_random = b""
        self._server_random = b""
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._raw_client_key = False
        self._client_key: ec.EllipticCurvePublicKey | None = None
        self._client_spki = b""
        self._identity: str | None = None
        self._master = b""
        self._cid: bytes | None = None
        self._saw_ccs = False

    @classmethod
    def accept(
        cls,
        config: ServerConfig,
        check: HelloCheck,
        address: bytes,
        *,
        now: float,
        random_bytes: RandomBytes = os.urandom,
    ) -> DtlsServer:
        """
        A server endpoint that has answered the ClientHello ``check`` accepted: its flight is waiting in
        ``datagrams_to_send()``; or, when the ClientHello cannot be served (no common suite, no raw public
        key…), it is already closed with the fatal alert waiting there and ``ConnectionClosed`` queued.

        Raises:
            LocalProtocolError: ``check`` did not accept a ClientHello.
        """
        if not check.accept or check.hello is None:
            raise LocalProtocolError("the cookie gate did not accept this datagram")
        server = cls(config, address, now=now, random_bytes=random_bytes)
        seq = int.from_bytes(check.message[4:6], "big")
        server._first_hello = False
        server._recv_msg_seq, server._send_msg_seq, server._peer_flight_end = seq + 1, seq, seq
        server._replay[0].accept(check.record_sequence)
        server._write_seq[0] = check.record_sequence
        server._add_transcript(check.message)
        try:
            server._answer_hello(check.hello, now)
        except HandshakeFailure as exc:
            server._fail(str(exc), exc.alert)
        return server

    @classmethod
    def resume(cls, config: ServerConfig, session: SessionState, address: bytes, *, now: float) -> DtlsServer:
        """An endpoint for a stored session: established at once, no handshake."""
        server = cls(config, address, now=now)
        server._expect = None
        server._restore(session)
        return server

    @property
    def cid(self) -> bytes | None:
        """The Connection ID this server gave the client (set once the ServerHello is sent), else ``None``."""
        return self.session.cid if self.session is not None else self._cid

    @property
    def identity(self) -> str | None:
        """What ``key_check`` said about the device's key (set once the key was accepted)."""
        return self.session.identity if self.session is not None else self._identity

    # ------------------------------------------------------------------------------------------ messages

    def _on_handshake_message(self, msg_type: int, body: bytes, raw: bytes, now: float) -> None:
        if msg_type != self._expect:
            raise HandshakeFailure(
                f"unexpected handshake message {msg_type}", AlertDescription.UNEXPECTED_MESSAGE
            )
        if msg_type == HandshakeType.CLIENT_HELLO:
            self._add_transcript(raw)
            self._client_hello(body, now)
            self._peer_flight_end = self._recv_msg_seq - 1
        elif msg_type == HandshakeType.CERTIFICATE:
            self._add_transcript(raw)
            self._certificate(body)
            self._expect = HandshakeType.CLIENT_KEY_EXCHANGE
        elif msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
            self._add_transcript(raw)
            self._client_key_exchange(body)
            self._expect = HandshakeType.CERTIFICATE_VERIFY
        elif msg_type == HandshakeType.CERTIFICATE_VERIFY:
            signature = parse_signature(Reader(body, "CertificateVerify"))
            if self._client_key is None or not ecdsa_verify_digest(
                self._client_key, signature, self._transcript_hash()
            ):
                raise HandshakeFailure("CertificateVerify does not verify", AlertDescription.DECRYPT_ERROR)
            self._client_key = None  # verified: the key object holds ~2 KB of libcrypto memory per session
            self._add_transcript(raw)
            self._expect = HandshakeType.FINISHED
        elif msg_type == HandshakeType.FINISHED:
            if not self._saw_ccs:
                raise HandshakeFailure(
                    "Finished before ChangeCipherSpec", AlertDescription.UNEXPECTED_MESSAGE
                )
            expected = verify_data(self._master, b"client finished", self._transcript_hash())
            if body != expected:
                raise HandshakeFailure("client Finished does not verify", AlertDescription.DECRYPT_ERROR)
            self._add_transcript(raw)
            self._peer_flight_end = self._recv_msg_seq - 1
            self._finish(now)

    def _on_change_cipher_spec(self) -> None:
        if self._expect != HandshakeType.FINISHED:
            raise HandshakeFailure("ChangeCipherSpec too early", AlertDescription.UNEXPECTED_MESSAGE)
        self._saw_ccs = True

    def _on_application_data(self, data: bytes, moved: bool) -> None:
        self._flight = []  # the client has our Finished: no more retransmissions
        super()._on_application_data(data, moved)

    # ------------------------------------------------------------------------------------------ steps

    def _client_hello(self, body: bytes, now: float) -> None:
        hello = parse_client_hello(body)
        valid = any(
            hmac.compare_digest(make_cookie(secret, self._address, hello.cookie_input), hello.cookie)
            for secret in self._config.cookie_secrets
        )
        if not hello.cookie or not valid:
            raise HandshakeFailure("ClientHello without a valid cookie")
        self._answer_hello(hello, now)

    def _answer_hello(self, hello: ClientHello, now: float) -> None:
        if hello.version[1] > 0xFD:  # DTLS versions count down: FE FF is 1.0, FE FD 1.2
            raise HandshakeFailure("client does not offer DTLS 1.2", 70)  # protocol_version
        if CIPHER_SUITE not in hello.cipher_suites or 0 not in hello.compression_methods:
            raise HandshakeFailure("client does not offer TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8")
        if SECP256R1 not in hello.groups():
            raise HandshakeFailure("client does not offer P-256")
        client_types = hello.certificate_types(Extension.CLIENT_CERTIFICATE_TYPE)
        server_types = hello.certificate_types(Extension.SERVER_CERTIFICATE_TYPE)
        x509_mode = bool(self._config.certificate_chain)
        self._raw_client_key = RAW_PUBLIC_KEY in client_types
        if not self._raw_client_key and not (x509_mode and (not client_types or X509 in client_types)):
            raise HandshakeFailure("client cannot send a raw public key", AlertDescription.HANDSHAKE_FAILURE)
        send_certificate = RAW_PUBLIC_KEY not in server_types
        if send_certificate and not x509_mode:
            raise HandshakeFailure(
                "client wants an X.509 server certificate", AlertDescription.HANDSHAKE_FAILURE
            )
        self._client_random = hello.random
        self._server_random = self._random(32)
        self._ephemeral = private_key_from_bytes(self._random(32))
        extensions: list[tuple[int, bytes]] = []
        if (
            EMPTY_RENEGOTIATION_SCSV in hello.cipher_suites
            or Extension.RENEGOTIATION_INFO in hello.extensions
        ):
            extensions.append((Extension.RENEGOTIATION_INFO, b"\x00"))
        if Extension.EC_POINT_FORMATS in hello.extensions:
            extensions.append((Extension.EC_POINT_FORMATS, b"\x01\x00"))
        if client_types:
            extensions.append(
                (Extension.CLIENT_CERTIFICATE_TYPE, bytes([RAW_PUBLIC_KEY if self._raw_client_key else X509]))
            )
        if server_types:
            extensions.append(
                (Extension.SERVER_CERTIFICATE_TYPE, bytes([X509 if send_certificate else RAW_PUBLIC_KEY]))
            )
        if hello.offers_cid and self._config.use_cid:
            self._cid = self._random(CID_SIZE)
            extensions.append((Extension.CONNECTION_ID, bytes([CID_SIZE]) + self._cid))
        self._new_flight()
        self._queue_message(
            HandshakeType.SERVER_HELLO, build_server_hello(self._server_random, b"", extensions)
        )
        if send_certificate:
            chain = b"".join(len(c).to_bytes(3, "big") + c for c in self._config.certificate_chain)
            self._queue_message(HandshakeType.CERTIFICATE, len(chain).to_bytes(3, "big") + chain)
        point = encode_point(self._ephemeral.public_key())
        params = server_ecdh_params(point)
        signature = self._config.signer(self._client_random + self._server_random + params)
        self._queue_message(
            HandshakeType.SERVER_KEY_EXCHANGE, build_server_key_exchange(point, signature, params=params)
        )
        self._queue_message(HandshakeType.CERTIFICATE_REQUEST, build_certificate_request())
        self._queue_message(HandshakeType.SERVER_HELLO_DONE, b"")
        self._send_flight(now, expect_reply=True)
        self._expect = HandshakeType.CERTIFICATE

    def _certificate(self, body: bytes) -> None:
        entries = parse_certificate(body, raw_public_key=self._raw_client_key)
        if not entries:
            raise HandshakeFailure("the client sent no key", AlertDescription.HANDSHAKE_FAILURE)
        if self._raw_client_key:
            spki = entries[0]
        else:
            try:
                certificate = x509.load_der_x509_certificate(entries[0])
                public_key = certificate.public_key()
            except ValueError as exc:
                raise HandshakeFailure(
                    "unreadable client certificate", AlertDescription.BAD_CERTIFICATE
                ) from exc
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise HandshakeFailure(
                    "client certificate without an EC key", AlertDescription.BAD_CERTIFICATE
                )
            spki = spki_der(public_key)
        try:
            self._client_key = load_spki(spki)
        except RemoteProtocolError as exc:
            raise HandshakeFailure(str(exc), AlertDescription.BAD_CERTIFICATE) from exc
        identity = self._config.key_check(spki)
        if identity is None:
            raise HandshakeFailure("the device key is not registered", AlertDescription.BAD_CERTIFICATE)
        self._client_spki = spki
        self._identity = identity

    def _client_key_exchange(self, body: bytes) -> None:
        reader = Reader(body, "ClientKeyExchange")
        point = reader.vector(1, minimum=1)
        reader.end()
        assert self._ephemeral is not None
        try:
            pre_master = ecdh_shared_secret(self._ephemeral, point)
        except RemoteProtocolError as exc:
            raise HandshakeFailure(str(exc), AlertDescription.ILLEGAL_PARAMETER) from exc
        self._ephemeral = None
        self._master = master_secret(pre_master, self._client_random, self._server_random)
        block = self._keys = key_block(self._master, self._client_random, self._server_random)
        self._pending_read = RecordCipher(block.client_key, block.client_iv)
        self._pending_write = RecordCipher(block.server_key, block.server_iv)
        self._cid_in = self._cid

    def _finish(self, now: float) -> None:
        self._new_flight()
        self._queue_change_cipher_spec()
        self._switch_write_epoch()
        finished = verify_data(self._master, b"server finished", self._transcript_hash())
        self._queue_message(HandshakeType.FINISHED, finished, epoch=1)
        self._send_flight(now, expect_reply=False)
        self._expect = None
        self.session = SessionState(
            master_secret=self._master,
            client_random=self._client_random,
            server_random=self._server_random,
            cid=self._cid,
            epoch=1,
            write_sequence=self._write_seq[1],
            replay_top=self._replay[1].top,
            replay_bitmap=self._replay[1].bitmap,
            peer_key=self._client_spki,
            identity=self._identity,
            keys=self._keys,
        )
        self._established()
        self._events.append(events.HandshakeComplete(self.session))
