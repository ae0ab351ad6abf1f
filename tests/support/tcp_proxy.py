"""
A TCP load balancer in miniature for tests: relays each connection to the device gateway from a chosen
source address (127.0.0.2 is loopback too on Linux), writing a PROXY protocol header first, as HAProxy's
``send-proxy`` (v1) and ``send-proxy-v2`` do. Headers are written from the spec here, not by the parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

V2_SIGNATURE = bytes.fromhex("0d0a0d0a000d0a515549540a")


def header_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    kind = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def header_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21  # TCP over IPv4 / IPv6
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@asynccontextmanager
async def tcp_proxy(
    target_port: int, *, source_address: str, header: Callable[[tuple[str, int]], bytes]
) -> AsyncIterator[int]:
    """
    Listen on 127.0.0.1 (the port is yielded); each client is relayed to ``target_port`` from
    ``source_address`` after ``header(client's address)``.
    """
    relays: set[asyncio.Task[None]] = set()

    async def relay(down_reader: asyncio.StreamReader, down_writer: asyncio.StreamWriter) -> None:
        writers = [down_writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", target_port, local_addr=(source_address, 0)
            )
            writers.append(up_writer)
            up_writer.write(header(down_writer.get_extra_info("peername")))
            await asyncio.gather(_pipe(down_reader, up_writer), _pipe(up_reader, down_writer))
        finally:
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()

    def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(relay(reader, writer))
        relays.add(task)
        task.add_done_callback(relays.discard)

    server = await asyncio.start_server(start, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()
