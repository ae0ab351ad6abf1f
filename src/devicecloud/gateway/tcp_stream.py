"""
A device socket's reading and writing ends for its link: one small `asyncio.Protocol`.

It does for a link what asyncio's ``StreamReader``/``StreamReaderProtocol``/``StreamWriter`` trio does, with
only what a link uses (``read``, ``readexactly`` for a PROXY header, ``drain``, ``wait_closed``, the
transport) and one object per socket instead of three (and the trio's futures made up front). A handshake
reads three or four times; each read here is a buffer check, and a future only when nothing is buffered.

Flow control both ways, as the trio does it: reading pauses while more than `READ_LIMIT` bytes wait unread
(a device that floods while its link awaits a service is held back by TCP, not buffered without end), and
``drain()`` waits while the transport's write buffer is above its high-water mark.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

__all__ = ["READ_LIMIT", "TcpLinkStream", "open_link_stream"]

#: Unread bytes above which the socket stops being read until the link catches up (asyncio's streams: 64 KiB).
READ_LIMIT = 64 * 1024


class TcpLinkStream(asyncio.Protocol):
    """
    The link's reader (`gateway.context.LinkReader`) and writer (`gateway.context.LinkWriter`) in one.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_drain_waiter",
        "_eof",
        "_error",
        "_loop",
        "_lost",
        "_read_paused",
        "_transport",
        "_waiter",
        "_write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost = False  # connection_lost came: the socket is closed
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for bytes
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None  # made on the first wait_closed() only

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake(self._waiter)
        if not self._read_paused and len(self._buffer) > READ_LIMIT and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(self._waiter)
        return True  # keep the socket open for writing: the link closes it once it has said its last

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        if exc is not None:
            self._error = exc
        self._wake(self._waiter)
        self._wake(self._drain_waiter)
        self._wake(self._closed)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(self._drain_waiter)

    # ------------------------------------------------------------------ the reader

    async def read(self, n: int = -1) -> bytes:
        """
        Up to ``n`` bytes (all that is buffered when ``n`` is -1) once some arrived; ``b""`` at the end.
        Raises the error the connection was lost with (a reset), as asyncio's streams do.
        """
        if self._error is not None:
            raise self._error
        if not self._buffer and not self._eof:
            await self._wait_for_data()
            if self._error is not None:
                raise self._error
        buffer = self._buffer
        if n < 0 or n >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:n])
            del buffer[:n]
        self._resume_reading()
        return data

    async def readexactly(self, n: int) -> bytes:
        """
        Exactly ``n`` bytes, leaving what follows them buffered; `asyncio.IncompleteReadError` at an end
        before them.
        """
        while len(self._buffer) < n:
            if self._error is not None:
                raise self._error
            if self._eof:
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._resume_reading()
            await self._wait_for_data()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._resume_reading()
        return data

    async def _wait_for_data(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("two reads at once on one link stream")
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _resume_reading(self) -> None:
        if self._read_paused and len(self._buffer) <= READ_LIMIT and self._transport is not None:
            self._read_paused = False
            self._transport.resume_reading()

    # ------------------------------------------------------------------ the writer

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None, "not connected"
        return self._transport

    async def drain(self) -> None:
        """
        Return once the write buffer is below its high-water mark; `ConnectionResetError` once the
        connection is lost (or the error it was lost with).
        """
        if self._error is not None:
            raise self._error
        if self._transport is not None and self._transport.is_closing():
            await asyncio.sleep(0)  # let connection_lost run, as asyncio's drain does
        while True:
            if self._lost:
                raise ConnectionResetError("Connection lost")
            if not self._write_paused:
                return
            self._drain_waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None

    async def wait_closed(self) -> None:
        """Return once the socket is closed (the transport said the connection is lost)."""
        if self._lost:
            return
        if self._closed is None or self._closed.cancelled():
            self._closed = self._loop.create_future()
        await self._closed

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def open_link_stream(sock: socket.socket) -> TcpLinkStream:
    """The link stream over an accepted (non-blocking) socket."""
    loop = asyncio.get_running_loop()
    stream = TcpLinkStream(loop)
    await loop.connect_accepted_socket(lambda: stream, sock)
    return stream
