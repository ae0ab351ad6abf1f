"""
One connection of a virtual device: the asyncio glue around a device-role ``protocol.CoapSession`` (a TCP
``Connection`` over a stream, or a ``protocol.udp.UdpSession`` over a connected UDP socket: then each
``data_to_send()`` is one datagram and each received datagram one ``receive_data``).

Theory of operation:
    This is aioquic's ``asyncio/protocol.py`` pattern, kept deliberately dumb: bytes from the socket go into
    ``Connection.receive_data(data, now())``; events are drained and either resolve a waiting request (results
    of our own requests, matched by ``request_id``) or go to the owner (:class:`LinkOwner`); whatever the
    connection wants to send is written; one timer is re-armed at ``Connection.get_timer()`` and calls
    ``handle_timer(now())`` when it fires. No protocol rule lives here.

    Ending: a ``ConnectionClosed`` event (peer EOF, a protocol error, a dead link, ``close()``) closes the
    transport; ``wait_closed()`` returns once asyncio has called ``connection_lost``, i.e. once the socket
    really is closed, so callers never leak it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from devicecloud.protocol import (
    NEED_DATA,
    Close,
    CoapSession,
    Command,
    ConnectionClosed,
    ConnectionState,
    Event,
    RemoteProtocolError,
    RequestCompleted,
    RequestFailed,
    RequestTimedOut,
    TimeReceived,
)
from devicecloud.protocol.udp import UdpSession

__all__ = ["DeviceLink", "LinkOwner", "RequestResult"]

logger = structlog.get_logger("devicecloud.virtualdevice")

#: The events that answer a request we made (carry our ``request_id``).
RequestResult = RequestCompleted | RequestFailed | RequestTimedOut | TimeReceived
_RESULT_TYPES = (RequestCompleted, RequestFailed, RequestTimedOut, TimeReceived)


class LinkOwner(Protocol):
    """Who gets the events that are not answers to our own requests."""

    def link_event(self, link: DeviceLink, event: Event) -> None:
        """Handle one event (called synchronously, in order)."""


class DeviceLink(asyncio.Protocol):
    """
    An ``asyncio.Protocol`` driving one device-role :class:`~devicecloud.protocol.Connection`.

    Args:
        connection: a fresh device-role connection.
        owner: receives the events.
        now: the clock the connection's deadlines are on.
    """

    def __init__(self, connection: CoapSession, owner: LinkOwner, now: Callable[[], float]) -> None:
        self.connection = connection
        self._owner = owner
        self._now = now
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._rebinding = False
        self._datagrams = isinstance(connection, UdpSession)  # a connected UDP socket: sendto(datagram)
        self._silent = False
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Future[RequestResult]] = {}
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self.close_reason: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements the Transport interface without subclassing asyncio.Transport,
        # so check for what we use rather than the class.
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def go_silent(self) -> None:
        """
        Stop reading and writing while keeping the socket open: what a device that lost power looks like
        from the cloud (no FIN, no RST, just silence).
        """
        self._silent = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._datagrams:
            self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        try:
            self.connection.receive_data(data, self._now())
        except RemoteProtocolError as exc:
            # The connection has closed itself and queued ConnectionClosed; processing below drops the socket.
            logger.warning(
                "protocol error from the cloud", device_id=self.connection.device_id, error=str(exc)
            )
        self._process()

    def datagram_received(self, data: bytes, addr: object) -> None:
        """A UDP datagram (the socket is connected: it comes from the gateway)."""
        if not self._silent:
            self.data_received(data)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors on the UDP socket: retransmissions and the keep-alive decide what they mean."""

    def eof_received(self) -> bool:
        self._feed_eof()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._rebinding:
            self._rebinding = False  # the socket left behind by `rebind`, not ours any more
            return
        self._feed_eof()
        self._cancel_timer()
        self._transport = None
        # The connection fails its pending requests when it closes; this only catches the impossible rest.
        for request_id, waiter in self._waiters.items():
            if not waiter.done():
                waiter.set_result(RequestFailed(request_id, None, "link lost"))
        if not self._lost.done():
            self._lost.set_result(None)

    # ------------------------------------------------------------------ API for the owner

    @property
    def is_open(self) -> bool:
        """True until the connection has closed (the socket may take one more loop turn to go)."""
        return self.connection.state is not ConnectionState.CLOSED

    def send(self, command: Command) -> int | None:
        """
        Give the connection a command and write what it produces.

        Returns:
            The request id, for commands that expect an answer.

        Raises:
            LocalProtocolError: the command is not valid now (e.g. the connection is closed).
        """
        request_id = self.connection.send(command, self._now())
        self._process()
        return request_id

    async def request(self, command: Command) -> RequestResult:
        """
        Send a command that expects an answer and wait for it (the connection's own deadline applies).

        Returns:
            ``RequestCompleted``/``TimeReceived``, or ``RequestFailed``/``RequestTimedOut`` (also when the
            link closes first).
        """
        request_id = self.connection.send(command, self._now())
        if request_id is None:  # pragma: no cover - callers only pass commands that answer
            raise ValueError(f"{type(command).__name__} gets no answer")
        waiter: asyncio.Future[RequestResult] = self._loop.create_future()
        self._waiters[request_id] = waiter
        self._process()
        try:
            return await waiter
        finally:
            self._waiters.pop(request_id, None)

    def close(self, reason: str = "closed locally") -> None:
        """Close the connection (if still open) and the socket."""
        if self.is_open:
            self.connection.send(Close(reason), self._now())
            self._process()
        elif self._transport is not None:
            self._transport.close()

    async def rebind(self, remote: tuple[str, int]) -> None:
        """
        UDP only: continue on a new local port, as after a NAT gave the device a new public address (the
        DTLS session and its Connection ID stay; the cloud follows the first record it authenticates).
        """
        if not self._datagrams or self._transport is None:
            raise RuntimeError("only a UDP link can move to a new port")
        link = self

        class _Forward(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                link.datagram_received(data, addr)

            def connection_lost(self, exc: Exception | None) -> None:
                link.connection_lost(exc)

        transport, _ = await self._loop.create_datagram_endpoint(_Forward, remote_addr=remote)
        old, self._transport = self._transport, transport  # type: ignore[assignment]
        self._rebinding = True
        old.close()  # its connection_lost comes here: ignored once

    async def wait_closed(self) -> None:
        """Wait until the socket is closed."""
        await asyncio.shield(self._lost)

    # ------------------------------------------------------------------ the loop body

    def _feed_eof(self) -> None:
        if self.is_open:
            self.connection.receive_data(b"", self._now())
            self._process()

    def _on_timer(self) -> None:
        self._timer = None
        self.connection.handle_timer(self._now())
        self._process()

    def _process(self) -> None:
        closed = False
        while (event := self.connection.next_event()) is not NEED_DATA:
            if isinstance(event, _RESULT_TYPES):
                waiter = self._waiters.get(event.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
            elif isinstance(event, Event):
                if isinstance(event, ConnectionClosed):
                    closed = True
                    self.close_reason = event.reason
                self._deliver(event)
        self._flush()
        if closed and self._transport is not None:
            self._transport.close()  # after the flush: queued bytes still go out

    def _deliver(self, event: Event) -> None:
        try:
            self._owner.link_event(self, event)
        except Exception:  # a bug above us must not kill the link from inside an asyncio callback
            logger.exception("event handling failed", kind=type(event).__name__)

    def _flush(self) -> None:
        while data := self.connection.data_to_send():  # UDP: one datagram per call
            if self._transport is None or self._transport.is_closing() or self._silent:
                continue
            if self._datagrams:
                self._transport.sendto(data)  # type: ignore[attr-defined]
            else:
                self._transport.write(data)
            self.bytes_sent += len(data)
        self._arm_timer()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        deadline = self.connection.get_timer()
        if deadline is not None and self._transport is not None:
            self._timer = self._loop.call_later(max(0.0, deadline - self._now()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
