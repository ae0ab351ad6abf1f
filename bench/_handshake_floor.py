"""
The protocol floor for ``device_bench.py``: the server's sans-IO handshake with nothing around it.

A separate process (pinned to the server's core) that serves the device handshake with the same
``protocol.Connection``, the same server key (from the server's data dir: ``{"data_dir": …}`` in
``argv[1]``), the same raw signer and the same event loop as ``devicecloud serve`` — but behind a bare
``asyncio.Protocol``: no link task, no streams, no key check (every offered key is accepted, parsed once
per distinct key), no presence, no ``spark/status``, no timers, no logging. What it costs per handshake is
what any server built on this protocol core pays at least on this machine: RSA, the rest of the protocol
(AES, HMAC, CoAP, framing) and the kernel's TCP work for accept, three reads, three writes and close.

Prints ``READY {"port": N, "signer": …}`` once listening; serves until a ``quit`` line or the end of stdin
(`_common.ScriptProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.cli.common import new_event_loop
from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    Connection,
    ConnectionState,
    DeviceIdentified,
    RawSigner,
    RemoteProtocolError,
    Role,
    load_private_key,
    load_public_key,
    raw_signer,
)


class FloorProtocol(asyncio.Protocol):
    def __init__(
        self, key: rsa.RSAPrivateKey, signer: RawSigner, keys: dict[bytes, rsa.RSAPublicKey]
    ) -> None:
        self._conn = Connection(Role.CLOUD, now=time.monotonic(), server_private_key=key, raw_signer=signer)
        self._keys = keys
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()  # the nonce

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        self._feed(b"")
        return False

    def _feed(self, data: bytes) -> None:
        with contextlib.suppress(RemoteProtocolError):  # the connection is closed; _flush closes the socket
            self._conn.receive_data(data, time.monotonic())
        while (event := self._conn.next_event()) is not NEED_DATA:
            if isinstance(event, DeviceIdentified):
                offered = event.offered_public_key_der
                public = self._keys.get(offered)
                if public is None:
                    public = self._keys[offered] = load_public_key(offered)
                self._conn.send(AcceptDevice(public), time.monotonic())
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        data = self._conn.data_to_send()
        if data:
            transport.write(data)
        if self._conn.state is ConnectionState.CLOSED:
            transport.close()


async def serve(data_dir: Path) -> None:
    key = load_private_key((data_dir / "server_key.pem").read_bytes())
    signer = raw_signer(key)
    keys: dict[bytes, rsa.RSAPublicKey] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FloorProtocol(key, signer, keys), "127.0.0.1", 0, backlog=1024)
    stop = asyncio.Event()

    def wait_for_quit() -> None:
        for line in sys.stdin:
            if line.strip() == "quit":
                break
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_quit, daemon=True).start()
    ready = {"port": server.sockets[0].getsockname()[1], "signer": signer.backend}
    print("READY " + json.dumps(ready), flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(Path(json.loads(sys.argv[1])["data_dir"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
