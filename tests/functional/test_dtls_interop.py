"""
Interop: the sans-IO DTLS server, driven over a real UDP socket here, against DTLS 1.2 stacks no one here
wrote — OpenSSL's ``s_client`` and Mbed TLS (python-mbedtls) — with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 on
P-256, data both ways. Those stacks cannot do raw public keys, so the server runs in its test-only X.509
mode (``ServerConfig.certificate_chain``); everything else — cookies, record layer, PRF, CCM_8, ECDHE,
ECDSA, Finished, client authentication through ``key_check`` — is the code the devices meet.
"""

from __future__ import annotations

import datetime
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support import unavailable
from tests.support.dtls import DEVICE_ID, DEVICE_KEY, OTHER_KEY, SERVER_KEY, Registry

from devicecloud.protocol.dtls import (
    AlertDescription,
    ApplicationData,
    ConnectionClosed,
    DtlsServer,
    DtlsState,
    HandshakeComplete,
    ServerConfig,
    check_client_hello,
    ecdsa_signer,
    spki_der,
)
from devicecloud.protocol.errors import RemoteProtocolError

REPLY = b"hello from devicecloud\n"
_DEADLINE = 20.0  # seconds a whole exchange may take; the loops end by themselves


def _certificate(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


SERVER_CERT = _certificate(SERVER_KEY, "devicecloud")


@dataclass
class UdpDtlsServer:
    """The gateway's job in miniature: a UDP socket, the cookie gate, one DtlsServer per address."""

    config: ServerConfig
    sock: socket.socket = field(init=False)
    sessions: dict[tuple[str, int], DtlsServer] = field(default_factory=dict)
    received: list[bytes] = field(default_factory=list)
    completed: list[HandshakeComplete] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    close_after_reply: bool = True

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def serve(self, done: Any) -> None:
        """Serve until ``done()`` or the deadline (then fail)."""
        deadline = time.monotonic() + _DEADLINE
        while not done():
            now = time.monotonic()
            assert now < deadline, "the DTLS exchange did not finish in time"
            timers = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
            wait = max(0.0, min([deadline, *timers]) - now)
            readable, _, _ = select.select([self.sock], [], [], min(wait, 0.5))
            now = time.monotonic()
            for address, server in list(self.sessions.items()):
                server.handle_timer(now)
                self._flush(server, address)
            if readable:
                datagram, address = self.sock.recvfrom(65535)
                self._datagram(datagram, address, now)

    def _datagram(self, datagram: bytes, address: tuple[str, int], now: float) -> None:
        label = f"{address[0]}:{address[1]}".encode()
        server = self.sessions.get(address)
        if server is None:
            check = check_client_hello(datagram, label, self.config.cookie_secrets)
            if check.reply is not None:
                self.sock.sendto(check.reply, address)
            if not check.accept:
                return
            server = self.sessions[address] = DtlsServer.accept(self.config, check, label, now=now)
        else:
            try:
                server.receive_datagram(datagram, now)
            except RemoteProtocolError as exc:
                self.refused.append(str(exc))
        while (event := server.next_event()) is not None:
            if isinstance(event, ConnectionClosed) and event.error and event.reason not in self.refused:
                self.refused.append(event.reason)
            if isinstance(event, HandshakeComplete):
                self.completed.append(event)
            elif isinstance(event, ApplicationData):
                self.received.append(event.data)
                server.send_application_data(REPLY)
                if self.close_after_reply:
                    server.close()
        self._flush(server, address)

    def _flush(self, server: DtlsServer, address: tuple[str, int]) -> None:
        for out in server.datagrams_to_send():
            self.sock.sendto(out, address)


ServerFactory = Callable[..., UdpDtlsServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    made: list[UdpDtlsServer] = []

    def make(*, registered: bool = True) -> UdpDtlsServer:
        server = _server(registered)
        made.append(server)
        return server

    yield make
    for server in made:
        server.sock.close()


def _server(registered: bool) -> UdpDtlsServer:
    registry = Registry({spki_der(DEVICE_KEY.public_key()): DEVICE_ID.hex()} if registered else {})
    config = ServerConfig(
        signer=ecdsa_signer(SERVER_KEY),
        key_check=registry.check,
        cookie_secrets=(b"interop cookie secret",),
        certificate_chain=(SERVER_CERT.public_bytes(serialization.Encoding.DER),),
    )
    return UdpDtlsServer(config)


def _pem_files(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert, key_file = tmp_path / "device.pem", tmp_path / "device.key"
    cert.write_bytes(_certificate(key, "device").public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key_file


def _s_client(
    server: UdpDtlsServer, tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> subprocess.Popen[bytes]:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("the openssl command is not installed")
    cert, key_file = _pem_files(tmp_path, key)
    command = [
        openssl, "s_client", "-dtls1_2", "-cipher", "ECDHE-ECDSA-AES128-CCM8",
        "-connect", f"127.0.0.1:{server.port}", "-cert", str(cert), "-key", str(key_file), "-ign_eof",
    ]  # fmt: skip
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_openssl_s_client_completes_a_handshake_and_exchanges_data(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    server = make_server()
    client = _s_client(server, tmp_path, DEVICE_KEY)
    try:
        assert client.stdin is not None
        client.stdin.write(b"hello from openssl\n")
        client.stdin.flush()
        server.serve(
            lambda: (
                bool(server.received) and all(s.state is DtlsState.CLOSED for s in server.sessions.values())
            )
        )
        output, _ = client.communicate(timeout=_DEADLINE)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert [b"hello from openssl\n"] == server.received
    (complete,) = server.completed
    assert DEVICE_ID.hex() == complete.session.identity  # its certificate's key went through key_check
    text = output.decode(errors="replace")
    assert "Cipher is ECDHE-ECDSA-AES128-CCM8" in text
    assert "Server Temp Key: ECDH, prime256v1" in text
    assert REPLY.decode() in text


def test_openssl_with_an_unregistered_key_is_refused(tmp_path: Path, make_server: ServerFactory) -> None:
    server = make_server(registered=False)
    client = _s_client(server, tmp_path, OTHER_KEY)
    try:
        server.serve(lambda: bool(server.refused))
        output, _ = client.communicate(timeout=_DEADLINE)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert ["the device key is not registered"] == server.refused
    assert not server.completed
    assert client.returncode != 0
    assert "bad certificate" in output.decode(
        errors="replace"
    )  # our bad_certificate alert, as OpenSSL read it
    assert AlertDescription.BAD_CERTIFICATE == 42


def test_mbedtls_completes_a_handshake_and_exchanges_data(make_server: ServerFactory) -> None:
    try:
        from mbedtls import pk, tls
        from mbedtls import x509 as mbedtls_x509
    except ImportError:
        unavailable("python-mbedtls is not installed (pip install devicecloud[test])")
    server = make_server()
    result: dict[str, Any] = {}

    def device() -> None:
        try:
            key = pk.ECC.from_DER(
                DEVICE_KEY.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            certificate = mbedtls_x509.CRT.from_DER(
                _certificate(DEVICE_KEY, "device").public_bytes(serialization.Encoding.DER)
            )
            configuration = tls.DTLSConfiguration(
                trust_store=tls.TrustStore(
                    [mbedtls_x509.CRT.from_DER(SERVER_CERT.public_bytes(serialization.Encoding.DER))]
                ),
                certificate_chain=([certificate], key),
                validate_certificates=True,  # our ServerKeyExchange is checked against the pinned certificate
                ciphers=["TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8"],
                lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
                highest_supported_version=tls.DTLSVersion.DTLSv1_2,
            )
            sock = tls.ClientContext(configuration).wrap_socket(
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM), server_hostname="devicecloud"
            )
            sock.settimeout(_DEADLINE)
            sock.connect(("127.0.0.1", server.port))
            sock.do_handshake()
            result["cipher"] = sock.cipher()
            sock.send(b"hello from mbedtls")
            result["reply"] = sock.recv(1024)
            sock.close()
        except Exception as exc:  # reported to the test thread
            result["error"] = repr(exc)

    server.close_after_reply = False
    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    server.serve(lambda: not thread.is_alive())
    thread.join()
    assert "error" not in result, result.get("error")
    assert "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8" == result["cipher"]
    assert REPLY == result["reply"]
    assert [b"hello from mbedtls"] == server.received
    (complete,) = server.completed
    assert DEVICE_ID.hex() == complete.session.identity


def test_a_flood_of_spoofed_clienthellos_over_udp_keeps_no_state(make_server: ServerFactory) -> None:
    """200 cookie-less ClientHellos from 20 sockets: each gets a HelloVerifyRequest, no endpoint is made."""
    from tests.support.dtls import client_config

    from devicecloud.protocol.dtls import DtlsClient

    server = make_server()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        for sender in senders:
            sender.settimeout(_DEADLINE)
            for _ in range(10):
                client = DtlsClient(client_config(), now=0.0)
                client.start(0.0)
                (hello,) = client.datagrams_to_send()
                sender.sendto(hello, ("127.0.0.1", server.port))
        answered = 0

        def all_answered() -> bool:
            nonlocal answered
            for sender in senders:
                sender.setblocking(False)
                try:
                    while True:
                        reply = sender.recv(2048)
                        assert 22 == reply[0]  # a handshake record: the HelloVerifyRequest
                        answered += 1
                except BlockingIOError:
                    pass
            return answered == 200

        server.serve(all_answered)
    finally:
        for sender in senders:
            sender.close()
    assert {} == server.sessions
    assert not server.completed
