"""Shared pieces of the DTLS tests: fixed keys and randomness, configs, an in-memory client ↔ server link."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol.dtls import (
    ClientConfig,
    DtlsClient,
    DtlsEvent,
    DtlsServer,
    ServerConfig,
    check_client_hello,
    ecdsa_signer,
    spki_der,
)

ADDRESS = b"127.0.0.1:40000"
COOKIE_SECRET = b"k" * 32


def fixed_key(seed: int) -> ec.EllipticCurvePrivateKey:
    """A P-256 key fixed by ``seed`` (transcripts replay byte for byte)."""
    return ec.derive_private_key(
        int.from_bytes(hashlib.sha256(bytes([seed])).digest(), "big") >> 8, ec.SECP256R1()
    )


def counter_random(label: bytes) -> Callable[[int], bytes]:
    """Deterministic "randomness": SHA-256 of a label and a counter."""
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        out = b""
        while len(out) < n:
            state["n"] += 1
            out += hashlib.sha256(label + state["n"].to_bytes(4, "big")).digest()
        return out[:n]

    return random_bytes


SERVER_KEY = fixed_key(1)
DEVICE_KEY = fixed_key(2)
OTHER_KEY = fixed_key(3)
DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")


@dataclass
class Registry:
    """The server's registered keys: SPKI → device id."""

    keys: dict[bytes, str] = field(default_factory=dict)

    def check(self, spki: bytes) -> str | None:
        return self.keys.get(spki)


def server_config(registry: Registry | None = None, **kwargs: object) -> ServerConfig:
    if registry is None:
        registry = Registry({spki_der(DEVICE_KEY.public_key()): DEVICE_ID.hex()})
    return ServerConfig(
        signer=ecdsa_signer(SERVER_KEY), key_check=registry.check, cookie_secrets=(COOKIE_SECRET,), **kwargs
    )  # type: ignore[arg-type]


def client_config(key: ec.EllipticCurvePrivateKey = DEVICE_KEY, **kwargs: object) -> ClientConfig:
    return ClientConfig(
        signer=ecdsa_signer(key),
        device_public_key=key.public_key(),
        server_public_key=SERVER_KEY.public_key(),
        device_id=DEVICE_ID,
        **kwargs,
    )  # type: ignore[arg-type]


def drain(endpoint: DtlsClient | DtlsServer) -> list[DtlsEvent]:
    out = []
    while (event := endpoint.next_event()) is not None:
        out.append(event)
    return out


@dataclass
class Link:
    """A client and the server side as a gateway would run it (cookie gate first), datagrams recorded."""

    client: DtlsClient
    server_config: ServerConfig
    server: DtlsServer | None = None
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    now: float = 0.0
    feed_accepted: bool = False  # start the server by feeding it the accepted datagram, not with accept()

    def to_server(self, datagram: bytes) -> None:
        self.wire.append(("c", datagram))
        if self.server is None:
            check = check_client_hello(datagram, ADDRESS, self.server_config.cookie_secrets)
            if check.reply is not None:
                self.wire.append(("s", check.reply))
                self.client.receive_datagram(check.reply, self.now)
                return
            if not check.accept:
                return
            if self.feed_accepted:
                self.server = DtlsServer(
                    self.server_config, ADDRESS, now=self.now, random_bytes=counter_random(b"s")
                )
            else:
                self.server = DtlsServer.accept(
                    self.server_config, check, ADDRESS, now=self.now, random_bytes=counter_random(b"s")
                )
                return
        self.server.receive_datagram(datagram, self.now)

    def pump(self) -> None:
        """Deliver everything both sides have to send until both are quiet."""
        for _ in range(50):
            moved = False
            for datagram in self.client.datagrams_to_send():
                moved = True
                self.to_server(datagram)
            if self.server is not None:
                for datagram in self.server.datagrams_to_send():
                    moved = True
                    self.wire.append(("s", datagram))
                    self.client.receive_datagram(datagram, self.now)
            if not moved:
                return
        raise AssertionError("the link never went quiet")


def handshake(
    client_kwargs: dict[str, object] | None = None, registry: Registry | None = None, **server_kwargs: object
) -> Link:
    client = DtlsClient(client_config(**(client_kwargs or {})), now=0.0, random_bytes=counter_random(b"c"))
    link = Link(client, server_config(registry, **server_kwargs))
    client.start(0.0)
    link.pump()
    return link
