"""
The device TCP server: listeners, admission of handshakes, one task per socket, a cap on links, shutdown.

Theory of operation:
    `DeviceGateway.start()` opens its listening sockets itself (every address of ``host``, a listen backlog
    of ``listen_backlog``) and runs one accept loop per socket. A loop accepts a socket only once it holds
    one of the ``handshake_slots`` (`admission`): during a connect storm the sockets beyond that wait in
    the kernel's backlog, unread, and the server spends nothing on them until a handshake ends and frees
    a slot (decision 0014). A slot is held from accept until the device has been reported connected, or
    until the link ends before that (bad bytes, unknown key, EOF, the handshake deadline); the link says
    when through its ``on_online`` callback. The handshake deadline therefore counts from admission, when
    the gateway sends the nonce: the wait in the backlog is the device's, bounded by its own timer.

    Every accepted socket becomes a `Link` served by its own task, over a `tcp_stream.TcpLinkStream`; the
    gateway keeps those tasks in a set, so `stop()` can cancel them and wait until each has closed its socket
    and reported its device offline.

    Beyond ``max_links`` sockets (handshaking or established), a new socket is closed at once, before any
    RSA work is spent on it. Each `protocol.Connection` gets the gateway's `Timing`: the handshake
    deadline, the request deadline, the keep-alive ping (``ping_after`` seconds of silence) and the
    dead-link deadline (``idle_timeout`` seconds of silence; keep it below ``2 * ping_after`` so a dead
    link is dropped within twice the keep-alive).

    Time comes from the injected `Clock` only (``monotonic()`` for the protocol, ``now()`` for the time a
    device asks for, ``call_at`` for timers), so tests drive keep-alives and timeouts with a fake clock.
    Randomness comes from ``random_bytes``, which the conformance replays replace with recorded bytes.

    `control` is the gateway's `services.ports.DeviceControl` (see `control.py`).

    Behind a TCP proxy (decision 0031): a socket whose peer is one of ``proxy_protocol_from`` must start
    with a PROXY protocol header (v1 or v2, `protocol.proxy_header`), read before the nonce, within
    ``proxy_header_timeout`` seconds and without reading past it; the client address it carries is the
    link's address from then on (sessions, logs). A missing, slow or malformed header closes that socket
    only. Sockets from other peers are devices connecting directly, as without a proxy: whatever header they
    send is not believed (it is the start of their handshake, and fails it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from devicecloud.gateway.admission import HandshakeAdmission, HandshakeSlot
from devicecloud.gateway.context import EventHook, LinkContext, LinkCounters, SubscribeHook
from devicecloud.gateway.control import GatewayControl
from devicecloud.gateway.flash import GatewayUpdates
from devicecloud.gateway.kept_sessions import SessionStore
from devicecloud.gateway.link import Link
from devicecloud.gateway.registry import LinkRegistry
from devicecloud.gateway.tcp_stream import TcpLinkStream, open_link_stream
from devicecloud.gateway.udp import UdpGateway, UdpStatistics, UdpTotals
from devicecloud.protocol import Connection, RandomBytes, RawSigner, Role, Timing, raw_signer
from devicecloud.protocol.proxy_header import ProxyHeader, ProxyHeaderError, ProxyHeaderReader

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from devicecloud.clock import Clock
    from devicecloud.services.ports import DeviceSessions

__all__ = ["DeviceGateway", "GatewayStatistics"]

logger = structlog.get_logger("devicecloud.gateway")

# accept() failures that mean "out of descriptors or memory": asyncio's own server pauses a second on them.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_DELAY = 1.0
# Linux's struct tcp_info: for a listening socket ``tcpi_unacked`` (a u32 after 8 bytes and 4 u32s) is
# the number of connections waiting in its accept queue.
_TCP_INFO_SIZE = 104
_TCP_INFO_QUEUED = struct.Struct("=I")
_TCP_INFO_QUEUED_AT = 24


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
        handshake_slots: the most handshakes in progress at once (``handshake_slots``).
        handshakes_in_progress: sockets admitted whose device is not yet reported connected.
        handshakes_in_progress_peak: the most handshakes ever in progress at once since start.
        handshakes_queued: connections waiting in the listen backlog to be admitted (``None`` where the
            operating system does not tell; Linux does).
        proxy_headers_refused: sockets from a trusted proxy closed because their PROXY protocol header
            was malformed, missing or late (counted in ``handshakes_failed`` too).
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
    handshake_slots: int
    handshakes_in_progress: int
    handshakes_in_progress_peak: int
    handshakes_queued: int | None
    proxy_headers_refused: int = 0


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
        handshake_slots: the most handshakes in progress at once; more connections wait in the backlog.
        listen_backlog: the listen backlog (connections the kernel holds for us; it caps it at
            ``net.core.somaxconn``).
        handshake_timeout: seconds from admission (the nonce) until the device's Hello.
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
        udp_server_key: the server's EC P-256 key; with ``udp_port`` it turns on the UDP/DTLS listener
            (`udp.UdpGateway`) for Gen3 devices, whose links share this gateway's registry and control.
        udp_port: the UDP port (5684; 0 picks a free one); ``None`` = no UDP listener.
        udp_sessions: where UDP sessions wait between links (default: in memory).
        proxy_protocol_from: addresses or networks of TCP proxies whose sockets start with a PROXY
            protocol header naming the device's address (empty: none; see the module docstring).
        proxy_header_timeout: seconds from admission such a header has to arrive whole.
        udp_address_rate: datagrams a second one IP may send outside a session (bursts of twice as many).
        udp_address_handshakes: DTLS handshakes in progress from one IP at most.
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
        handshake_slots: int = 512,
        listen_backlog: int = 4096,
        reuse_port: bool = False,
        handshake_timeout: float = 30.0,
        ping_after: float = 20.0,
        idle_timeout: float = 35.0,
        request_timeout: float = 30.0,
        random_bytes: RandomBytes = os.urandom,
        describe_on_connect: bool = True,
        on_event: EventHook | None = None,
        on_subscribe: SubscribeHook | None = None,
        udp_server_key: EllipticCurvePrivateKey | None = None,
        udp_port: int | None = None,
        udp_sessions: SessionStore | None = None,
        proxy_protocol_from: Sequence[str] = (),
        proxy_header_timeout: float = 5.0,
        udp_address_rate: float = 10.0,
        udp_address_handshakes: int = 16,
    ) -> None:
        self._server_key = server_private_key
        self._signer: RawSigner | None = None  # chosen at start(): it loads libcrypto and signs once
        self._clock = clock
        self._host = host
        self._port = port
        self._max_links = max_links
        self._admission = HandshakeAdmission(handshake_slots)
        self._backlog = listen_backlog
        self._reuse_port = reuse_port
        self._bound_port = port
        self._random_bytes = random_bytes
        self._proxies = tuple(ipaddress.ip_network(entry, strict=False) for entry in proxy_protocol_from)
        self._proxy_header_timeout = proxy_header_timeout
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
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._stopping = False
        self._at_cap = False
        self._udp: UdpGateway | None = None
        if udp_server_key is not None and udp_port is not None:
            self._udp = UdpGateway(
                self._ctx,
                udp_server_key,
                host=host,
                port=udp_port,
                max_sessions=max_links,
                handshake_timeout=handshake_timeout,
                random_bytes=random_bytes,
                sessions=udp_sessions,
                rate=udp_address_rate,
                burst=2 * udp_address_rate,
                handshakes_per_address=udp_address_handshakes,
            )
        #: The `services.ports.DeviceControl` for the devices linked to this gateway.
        self.control = GatewayControl(self._registry)
        #: The `services.ports.DeviceUpdates` for the devices linked to this gateway.
        self.updates = GatewayUpdates(self._registry, clock)

    @property
    def port(self) -> int:
        """
        The port actually listened on (useful with ``port=0``).
        """
        if not self._listeners:
            raise RuntimeError("the gateway is not listening")
        return self._bound_port

    @property
    def udp_port(self) -> int | None:
        """The UDP port listened on, or ``None`` without a UDP listener."""
        return self._udp.port if self._udp is not None else None

    def udp_statistics(self) -> UdpStatistics | None:
        """The UDP side's totals, or ``None`` without a UDP listener."""
        return self._udp.stats if self._udp is not None else None

    def udp_totals(self) -> UdpTotals | None:
        """The UDP side's counters with the live sessions' parts (for metrics), or ``None`` without UDP."""
        return self._udp.totals() if self._udp is not None else None

    async def start(self) -> None:
        """
        Start listening. Raises `OSError` when the address is taken.
        """
        if self._listeners:
            raise RuntimeError("the gateway is already started")
        self._stopping = False
        if self._signer is None:
            self._signer = raw_signer(self._server_key)
            if self._signer.backend != "libcrypto":
                logger.warning(
                    "no usable libcrypto: handshakes are signed in pure Python (~20x slower)",
                    reason=self._signer.reason,
                )
        self._listeners = await _listen(self._host, self._port, self._backlog, reuse_port=self._reuse_port)
        self._bound_port = int(self._listeners[0].getsockname()[1])
        self._accepting = [
            asyncio.create_task(self._accept_loop(listener), name=f"device-gateway-accept-{n}")
            for n, listener in enumerate(self._listeners)
        ]
        if self._udp is not None:
            await self._udp.start()
        logger.info(
            "device gateway listening",
            host=self._host or "*",
            port=self.port,
            handshake_slots=self._admission.slots,
            listen_backlog=self._backlog,
        )

    async def stop_accepting(self) -> None:
        """
        Close the listening sockets and keep the links (a draining worker: with SO_REUSEPORT the kernel sends
        new connections to the other processes on the port from now on). `stop` closes the links after.
        """
        self._stopping = True
        accepting, self._accepting = self._accepting, []
        for task in accepting:
            task.cancel()
        await asyncio.gather(*accepting, return_exceptions=True)
        for listener in self._listeners:
            listener.close()  # connections still in its backlog are reset: their devices retry elsewhere

    async def stop(self) -> None:
        """
        Stop listening, close every link (each reports its device offline) and wait for their tasks.
        """
        listeners, self._listeners = self._listeners, []
        if not listeners:
            return
        self._stopping = True
        accepting, self._accepting = self._accepting, []
        for task in accepting:
            task.cancel()
        await asyncio.gather(*accepting, return_exceptions=True)
        for listener in listeners:
            listener.close()  # connections still in the backlog are reset
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._udp is not None:
            await self._udp.stop()
        await self.updates.stop()
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
            handshake_slots=self._admission.slots,
            handshakes_in_progress=self._admission.in_progress,
            handshakes_in_progress_peak=self._admission.peak,
            handshakes_queued=_queued(self._listeners),
            proxy_headers_refused=c.proxy_headers_refused,
        )

    def link(self, device_id: str) -> Link | None:
        """
        The device's current link, if it is connected here.
        """
        return self._registry.get(device_id)

    def owner_changed(self, device_id: str) -> None:
        """
        A device changed hands (on any node): if it is connected here, its subscriptions are opened again
        under the new owner's visibility.
        """
        link = self._registry.get(device_id)
        if link is not None:
            link.resubscribe()

    async def wait_online(self, device_id: str) -> None:
        """
        Return once the device has an established link here (at once if it has one).
        """
        await self._registry.wait_online(device_id)

    async def _accept_loop(self, listener: socket.socket) -> None:
        """
        Accept from one listening socket, one handshake slot per socket; without a slot, accept nothing.
        """
        loop = asyncio.get_running_loop()
        while True:
            await _readable(loop, listener)
            while True:  # take what the backlog holds while slots last
                slot = await self._admission.acquire()
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    slot.release()
                    break
                except OSError as exc:
                    slot.release()
                    if exc.errno not in _OUT_OF_RESOURCES:
                        continue  # that connection was reset before we took it: the next one
                    # Out of descriptors: the backlog keeps the rest; try again in a while, as asyncio does.
                    logger.error("cannot accept device sockets; pausing", error=os.strerror(exc.errno or 0))
                    await self._clock.sleep_until(self._clock.monotonic() + ACCEPT_RETRY_DELAY)
                    break
                self._admit(sock, slot)

    def _admit(self, sock: socket.socket, slot: HandshakeSlot) -> None:
        if self._stopping or len(self._tasks) >= self._max_links:
            slot.release()
            self._refuse(sock)
            return
        self._at_cap = False
        self._counters.accepted += 1
        task = asyncio.create_task(self._serve(sock, slot))
        self._tasks.add(task)  # now, not when the task starts: the cap counts it at once
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, slot: HandshakeSlot) -> None:
        """
        One admitted socket's task: its link from the nonce to the end; the slot is freed by then at last.
        """
        ip_address: str | None = None
        try:
            with contextlib.suppress(OSError):
                peer = sock.getpeername()
                ip_address = str(peer[0]) if isinstance(peer, tuple) else None
            try:
                sock.setblocking(False)
                stream = await open_link_stream(sock)
            except OSError:
                sock.close()  # reset before we got to it
                return
            if self._proxies and _is_from(ip_address, self._proxies):
                header = await self._proxy_header(stream, ip_address)
                if header is None:
                    stream.transport.abort()
                    return
                if header.source is not None:
                    ip_address = header.source[0]
            try:
                conn = Connection(
                    Role.CLOUD,
                    now=self._clock.monotonic(),  # the handshake deadline counts from admission
                    server_private_key=self._server_key,
                    raw_signer=self._signer,
                    timing=self._timing,
                    random_bytes=self._random_bytes,
                )
            except Exception:
                logger.exception("cannot start a device connection", ip=ip_address)
                stream.transport.abort()
                return
            await Link(self._ctx, conn, stream, stream, ip_address, on_online=slot.release).run()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # stop() cancelled us and the link has cleaned up: end normally.
        finally:
            slot.release()

    async def _proxy_header(self, reader: TcpLinkStream, proxy: str | None) -> ProxyHeader | None:
        """
        The PROXY protocol header a trusted proxy sends first, or ``None`` (counted and logged) when it is
        malformed, cut short or not whole within the timeout. Reads only the header's own bytes.
        """
        parser = ProxyHeaderReader()

        async def read() -> ProxyHeader | None:
            while True:
                header = parser.feed(await reader.readexactly(parser.wanted()))
                if header is not None:
                    return header

        reading = asyncio.ensure_future(read())
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            reading.cancel()

        timer = self._clock.call_at(self._clock.monotonic() + self._proxy_header_timeout, expire)
        problem: str
        try:
            return await reading
        except asyncio.CancelledError:
            if not expired or _cancelling():  # stop() cancelled us: not the header's fault
                raise
            problem = f"no whole PROXY protocol header within {self._proxy_header_timeout:g} s"
        except asyncio.IncompleteReadError:
            problem = "the proxy closed the connection before a whole PROXY protocol header"
        except ProxyHeaderError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"reading the PROXY protocol header failed: {exc}"
        finally:
            timer.cancel()
            reading.cancel()
        self._counters.proxy_headers_refused += 1
        self._counters.handshakes_failed += 1
        logger.warning("device socket from a trusted proxy closed", proxy=proxy, problem=problem)
        return None

    def _refuse(self, sock: socket.socket) -> None:
        self._counters.refused += 1
        if not self._at_cap and not self._stopping:
            self._at_cap = True  # one line per episode, not one per refused socket
            logger.warning("device link cap reached; refusing new sockets", max_links=self._max_links)
        sock.close()


async def _listen(
    host: str | None, port: int, backlog: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """
    Listening sockets on every address of ``host`` (``None`` = all interfaces), as asyncio's server makes
    them (SO_REUSEADDR, IPv6 sockets IPv6-only; SO_REUSEPORT when asked, so the workers of one machine
    share the port and the kernel spreads connections over them); raises `OSError` when an address is taken.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {address!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """
    Return once ``sock`` has something to read (for a listener: a connection waits in its backlog).
    """
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _is_from(
    address: str | None, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Whether ``address`` (a peer's, as text) is in one of ``networks`` (IPv4-mapped IPv6 counts as IPv4)."""
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (not only a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _queued(listeners: list[socket.socket]) -> int | None:
    """
    Connections waiting in the listeners' backlogs, from Linux's TCP_INFO; ``None`` where it is not known.
    """
    if not hasattr(socket, "TCP_INFO"):
        return None
    total = 0
    for sock in listeners:
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except OSError:
            return None
        if len(info) < _TCP_INFO_QUEUED_AT + _TCP_INFO_QUEUED.size:
            return None
        total += _TCP_INFO_QUEUED.unpack_from(info, _TCP_INFO_QUEUED_AT)[0]
    return total
