"""
The device TCP server: listener, one task per socket, a cap on links, graceful shutdown.

Theory of operation:
    `DeviceGateway.start()` listens (``asyncio.start_server``); every accepted socket becomes a
    `Link` served by the task asyncio starts for it. The gateway keeps those tasks in a set, so `stop()`
    can cancel them and wait until each has closed its socket and reported its device offline.

    Beyond ``max_links`` sockets (handshaking or established), a new socket is closed at once, before any
    RSA work is spent on it. Each `protocol.Connection` gets the gateway's `Timing`: the handshake
    deadline, the request deadline, the keep-alive ping (``ping_after`` seconds of silence) and the
    dead-link deadline (``idle_timeout`` seconds of silence; keep it below ``2 * ping_after`` so a dead
    link is dropped within twice the keep-alive).

    Time comes from the injected `Clock` only (``monotonic()`` for the protocol, ``now()`` for the time a
    device asks for, ``call_at`` for timers), so tests drive keep-alives and timeouts with a fake clock.
    Randomness comes from ``random_bytes``, which the conformance replays replace with recorded bytes.

    `control` is the gateway's `services.ports.DeviceControl` (see `control.py`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from devicecloud.gateway.context import EventHook, LinkContext, LinkCounters, SubscribeHook
from devicecloud.gateway.control import GatewayControl
from devicecloud.gateway.link import Link
from devicecloud.gateway.registry import LinkRegistry
from devicecloud.protocol import Connection, RandomBytes, RawSigner, Role, Timing, raw_signer

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from devicecloud.clock import Clock
    from devicecloud.services.ports import DeviceSessions

__all__ = ["DeviceGateway", "GatewayStatistics"]

logger = structlog.get_logger("devicecloud.gateway")


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    """
    A snapshot of the gateway's state and running totals.

    Attributes:
        links: sockets open now, in any state.
        online: devices with an established link.
        accepted: sockets accepted since start.
        refused: sockets closed at once because ``max_links`` were open.
        handshakes_ok: links that reached the Hello.
        handshakes_failed: links that ended before the Hello (bad bytes, unknown key, deadline, EOF).
        replaced: links closed because the same device connected again.
        protocol_errors: links closed because the peer broke the protocol.
        requests: requests sent for `control`.
        requests_timed_out: requests that got no answer in time.
        events_received: events devices published (``/e/``, ``/E/``).
        events_refused: of those, the ones refused (over the device's publish limit, or invalid).
        events_invalid: of the refused, the ones against the rules (too long, not UTF-8, …).
        events_sent: events forwarded to devices for their subscriptions.
        events_undeliverable: events a subscribed device could not be sent (skipped, the link kept).
        events_dropped: events a subscribed device lost because its link fell behind (the link kept).
    """

    links: int
    online: int
    accepted: int
    refused: int
    handshakes_ok: int
    handshakes_failed: int
    replaced: int
    protocol_errors: int
    requests: int
    requests_timed_out: int
    events_received: int
    events_refused: int
    events_invalid: int
    events_sent: int
    events_undeliverable: int
    events_dropped: int


class DeviceGateway:
    """
    The TCP server devices connect to.

    Args:
        sessions: where link facts are reported (key check, connected, described, heard, disconnected).
        server_private_key: the server's RSA-2048 key.
        clock: time for deadlines and keep-alives, and the wall time devices ask for.
        host: the address to listen on; ``None`` = every interface.
        port: the TCP port; 0 picks a free one (read it back from `port`).
        max_links: the most sockets open at once; more are closed on arrival.
        handshake_timeout: seconds from accept until the device's Hello.
        ping_after: seconds of silence after which the gateway pings the device (the keep-alive).
        idle_timeout: seconds of silence after which the link is dead and dropped.
        request_timeout: the longest any request may wait, whatever timeout a caller asks for.
        random_bytes: the randomness for each connection (nonce, session key, ids, tokens).
        describe_on_connect: ask each device for its Describe after its Hello (2.x devices that
            announce device-initiated Describe are not asked).
        on_event: awaited for every event a device publishes; its True/False accepts or refuses it (a
            refused CON event gets ACK 4.00). Without it every event is accepted and goes nowhere.
        on_subscribe: opens the feed of events for a device's subscriptions (see `SubscribeHook`);
            without it Subscribe messages are ACKed and nothing is forwarded.
    """

    def __init__(
        self,
        sessions: DeviceSessions,
        server_private_key: RSAPrivateKey,
        *,
        clock: Clock,
        host: str | None = None,
        port: int = 5683,
        max_links: int = 10_000,
        handshake_timeout: float = 30.0,
        ping_after: float = 20.0,
        idle_timeout: float = 35.0,
        request_timeout: float = 30.0,
        random_bytes: RandomBytes = os.urandom,
        describe_on_connect: bool = True,
        on_event: EventHook | None = None,
        on_subscribe: SubscribeHook | None = None,
    ) -> None:
        self._server_key = server_private_key
        self._signer: RawSigner | None = None  # chosen at start(): it loads libcrypto and signs once
        self._clock = clock
        self._host = host
        self._port = port
        self._max_links = max_links
        self._random_bytes = random_bytes
        self._timing = Timing(
            handshake_timeout=handshake_timeout,
            request_timeout=request_timeout,
            ping_after=ping_after,
            idle_timeout=idle_timeout,
        )
        self._counters = LinkCounters()
        self._registry: LinkRegistry[Link] = LinkRegistry()
        self._ctx = LinkContext(
            sessions=sessions,
            registry=self._registry,
            clock=clock,
            counters=self._counters,
            describe_on_connect=describe_on_connect,
            on_event=on_event,
            on_subscribe=on_subscribe,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._at_cap = False
        #: The `services.ports.DeviceControl` for the devices linked to this gateway.
        self.control = GatewayControl(self._registry)

    @property
    def port(self) -> int:
        """
        The port actually listened on (useful with ``port=0``).
        """
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the gateway is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """
        Start listening. Raises `OSError` when the address is taken.
        """
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        self._stopping = False
        if self._signer is None:
            self._signer = raw_signer(self._server_key)
            if self._signer.backend != "libcrypto":
                logger.warning(
                    "no usable libcrypto: handshakes are signed in pure Python (~20x slower)",
                    reason=self._signer.reason,
                )
        self._server = await asyncio.start_server(self._accept, self._host, self._port, backlog=1024)
        logger.info("device gateway listening", host=self._host or "*", port=self.port)

    async def stop(self) -> None:
        """
        Stop listening, close every link (each reports its device offline) and wait for their tasks.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        logger.info("device gateway stopped", links_closed=len(tasks))

    def statistics(self) -> GatewayStatistics:
        """
        Counts for introspection and metrics.
        """
        c = self._counters
        return GatewayStatistics(
            links=len(self._tasks),
            online=len(self._registry),
            accepted=c.accepted,
            refused=c.refused,
            handshakes_ok=c.handshakes_ok,
            handshakes_failed=c.handshakes_failed,
            replaced=c.replaced,
            protocol_errors=c.protocol_errors,
            requests=c.requests,
            requests_timed_out=c.requests_timed_out,
            events_received=c.events_received,
            events_refused=c.events_refused,
            events_invalid=c.events_invalid,
            events_sent=c.events_sent,
            events_undeliverable=c.events_undeliverable,
            events_dropped=c.events_dropped,
        )

    def link(self, device_id: str) -> Link | None:
        """
        The device's current link, if it is connected here.
        """
        return self._registry.get(device_id)

    async def wait_online(self, device_id: str) -> None:
        """
        Return once the device has an established link here (at once if it has one).
        """
        await self._registry.wait_online(device_id)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """
        The task asyncio starts for each socket.
        """
        if self._stopping or len(self._tasks) >= self._max_links:
            self._refuse(writer)
            return
        self._at_cap = False
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio runs this callback in a task
            return
        self._tasks.add(task)
        self._counters.accepted += 1
        try:
            peer = writer.get_extra_info("peername")
            ip_address = str(peer[0]) if isinstance(peer, tuple) else None
            try:
                conn = Connection(
                    Role.CLOUD,
                    now=self._clock.monotonic(),
                    server_private_key=self._server_key,
                    raw_signer=self._signer,
                    timing=self._timing,
                    random_bytes=self._random_bytes,
                )
            except Exception:
                logger.exception("cannot start a device connection", ip=ip_address)
                writer.transport.abort()
                return
            await Link(self._ctx, conn, reader, writer, ip_address).run()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # stop() cancelled us and the link has cleaned up. End normally: asyncio 3.11 logs a
            # cancelled client_connected_cb task as an error.
        finally:
            self._tasks.discard(task)

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self._counters.refused += 1
        if not self._at_cap and not self._stopping:
            self._at_cap = True  # one line per episode, not one per refused socket
            logger.warning("device link cap reached; refusing new sockets", max_links=self._max_links)
        writer.transport.abort()
