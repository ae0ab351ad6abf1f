"""
The link's socket stream (`gateway.tcp_stream`) over a real socket pair: reads, the PROXY header's exact
reads, the end of the stream, flow control both ways, and closing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from tests.support.devices import wait_until

from devicecloud.gateway.tcp_stream import READ_LIMIT, TcpLinkStream, open_link_stream


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TcpLinkStream, socket.socket]]:
    """The stream on one end of a connected pair; the other end, non-blocking, plays the device."""
    ours, device = socket.socketpair()
    ours.setblocking(False)
    device.setblocking(False)
    stream = await open_link_stream(ours)
    yield stream, device
    stream.transport.abort()
    device.close()


async def send(device: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(device, data)


async def test_reads_what_arrived_and_then_the_end(pair: tuple[TcpLinkStream, socket.socket]) -> None:
    stream, device = pair
    reading = asyncio.ensure_future(stream.read(4))
    await send(device, b"hello world")
    assert await reading == b"hell"  # at most what was asked for
    assert await stream.read(100) == b"o world"
    device.shutdown(socket.SHUT_WR)
    assert await stream.read(100) == b""
    assert await stream.read(100) == b""  # the end stays the end
    assert not stream.transport.is_closing()  # half closed: the link still says its last


async def test_readexactly_leaves_what_follows(pair: tuple[TcpLinkStream, socket.socket]) -> None:
    stream, device = pair
    reading = asyncio.ensure_future(stream.readexactly(6))
    await send(device, b"PRO")
    await asyncio.sleep(0)
    assert not reading.done()
    await send(device, b"XY\r\nrest")
    assert await reading == b"PROXY\r"
    assert await stream.read() == b"\nrest"
    await send(device, b"ab")
    device.shutdown(socket.SHUT_WR)
    with pytest.raises(asyncio.IncompleteReadError) as cut:
        await stream.readexactly(5)
    assert cut.value.partial == b"ab"


async def test_a_flooding_peer_is_held_back_by_tcp(pair: tuple[TcpLinkStream, socket.socket]) -> None:
    """
    Nobody reads: past READ_LIMIT the socket is not read any more, so the kernel's buffers fill and the
    sender waits; what the stream holds stays bounded. Reading again lets everything through, in order.
    """
    stream, device = pair
    flood = bytes(range(256)) * (32 * 1024)  # 8 MiB, far more than the socket pair's buffers
    sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(device, flood))

    async def paused() -> bool:
        return stream._read_paused  # the pause is the behaviour under test

    await wait_until(paused)
    assert len(stream._buffer) <= READ_LIMIT + 256 * 1024  # one kernel read past the limit
    assert not sending.done()
    received = bytearray()
    while len(received) < len(flood):
        received += await stream.read(1 << 20)
    await sending
    assert received == flood


async def test_drain_waits_for_the_peer_then_fails_once_it_is_gone(
    pair: tuple[TcpLinkStream, socket.socket],
) -> None:
    stream, device = pair
    stream.transport.set_write_buffer_limits(high=1024)
    while stream.transport.get_write_buffer_size() <= 1024:
        stream.transport.write(b"y" * 65536)
    draining = asyncio.ensure_future(stream.drain())
    await asyncio.sleep(0)
    assert not draining.done()  # the device reads nothing yet
    loop = asyncio.get_running_loop()
    while not draining.done():
        await loop.sock_recv(device, 1 << 20)
    await draining
    device.close()
    stream.transport.write(b"z" * 65536)  # meets the closed end: the transport learns the peer is gone
    await stream.wait_closed()
    with pytest.raises(ConnectionError):
        await stream.drain()


async def test_wait_closed_returns_once_the_socket_is_closed(
    pair: tuple[TcpLinkStream, socket.socket],
) -> None:
    stream, _device = pair
    waiting = asyncio.ensure_future(stream.wait_closed())
    await asyncio.sleep(0)
    assert not waiting.done()
    stream.transport.close()
    await waiting
    await stream.wait_closed()  # and at once after
