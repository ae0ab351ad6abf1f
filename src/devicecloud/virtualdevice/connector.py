"""
Staying connected: connect, run one link until it ends, back off, connect again — until stopped.

Theory of operation:
    ``start()`` spawns one task running :meth:`Connector._run`: each round builds a fresh protocol
    ``Connection`` (a session never survives its socket), opens TCP to the gateway with a
    :class:`~devicecloud.virtualdevice.link.DeviceLink` as the asyncio protocol, and waits until the link's
    socket is closed. With ``reconnect`` on it then sleeps ``Backoff.delay(attempt)`` — ``attempt`` resets
    after any round that reached an established session, so a server restart costs one short delay while
    a server that refuses us is retried ever more slowly — and goes again.

    "Connected" means the Hello exchange is done (``ServerHelloReceived``), not merely TCP: that is when the
    cloud lists the device as online. ``stop()`` closes the link, cancels the task and returns only once the
    socket is closed, so tests with ``filterwarnings = error`` never see a leaked socket.

    Events from the link go to the owner unchanged; the connector only watches for the Hello and the close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from devicecloud.protocol import CoapSession, ConnectionClosed, Event, ServerHelloReceived
from devicecloud.protocol.udp import UdpSession
from devicecloud.virtualdevice.link import DeviceLink, LinkOwner
from devicecloud.virtualdevice.support import Backoff, Counters, NotConnectedError

__all__ = ["Connector"]


class Connector:
    """
    Keeps one device connected to its gateway.

    Args:
        host: the gateway's address.
        port: its TCP port.
        new_connection: builds a fresh device-role protocol connection for each attempt.
        owner: receives every link event.
        reconnect: try again after a link ends.
        backoff: the delays between attempts.
        connect_timeout: seconds allowed for the TCP connect.
        now: the protocol clock.
        counters: where connects, disconnects and bytes are counted.
        log: a bound structlog logger.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        new_connection: Callable[[], CoapSession],
        owner: LinkOwner,
        reconnect: bool,
        backoff: Backoff,
        connect_timeout: float,
        now: Callable[[], float],
        counters: Counters,
        log: Any,
    ) -> None:
        self.host, self.port = host, port
        self.reconnect = reconnect
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.last_disconnect_reason: str | None = None
        self.link: DeviceLink | None = None
        self._new_connection = new_connection
        self._owner = owner
        self._now = now
        self._counters = counters
        self._log = log
        self._established = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """A session is established right now."""
        return self._established.is_set()

    async def start(self, name: str) -> None:
        """Start the connect loop in a task called ``name``."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        """Close the link, stop reconnecting and wait until the socket is closed."""
        self._stopping.set()
        task, self._task = self._task, None
        if self.link is not None:
            self.link.close("stopped")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, timeout: float | None = None) -> None:
        """
        Wait until a session is established.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
            NotConnectedError: not started, or the loop ended (``reconnect`` off) without a session.
        """
        task = self._task
        if task is None:
            raise NotConnectedError("the virtual device is not started")
        waiter = asyncio.ensure_future(self._established.wait())
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._established.is_set():
            raise NotConnectedError(f"not connected: {self.last_disconnect_reason}")

    def link_event(self, link: DeviceLink, event: Event) -> None:
        """Note the Hello and the close, then pass the event on."""
        if isinstance(event, ServerHelloReceived):
            self._counters.connects += 1
            self._established.set()
        elif isinstance(event, ConnectionClosed):
            self._established.clear()
            (self._log.warning if event.error else self._log.info)("disconnected", reason=event.reason)
        self._owner.link_event(link, event)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            connects = self._counters.connects
            await self._session()
            if not self.reconnect or self._stopping.is_set():
                return
            attempt = 0 if self._counters.connects > connects else attempt + 1
            delay = self.backoff.delay(attempt)
            self._log.info("reconnecting", delay=round(delay, 2), reason=self.last_disconnect_reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _session(self) -> None:
        """One connection, from TCP connect until its socket is closed."""
        connection = self._new_connection()
        link = DeviceLink(connection, self, self._now)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if isinstance(connection, UdpSession):  # a connected UDP socket; the DTLS handshake follows
                    await loop.create_datagram_endpoint(lambda: link, remote_addr=(self.host, self.port))
                else:
                    await loop.create_connection(lambda: link, self.host, self.port)
        except OSError as exc:  # TimeoutError included
            self._ended(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}")
            self._log.warning("connect failed", reason=self.last_disconnect_reason)
            return
        self.link = link
        try:
            await link.wait_closed()
        finally:
            self.link = None
            self._established.clear()
            link.close()
            await link.wait_closed()  # also when cancelled: the socket must not outlive the session
            self._counters.bytes_sent += link.bytes_sent
            self._counters.bytes_received += link.bytes_received
            self._ended(link.close_reason or "connection lost")

    def _ended(self, reason: str) -> None:
        self.last_disconnect_reason = reason
        self._counters.disconnects += 1
