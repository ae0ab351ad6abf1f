"""
The device gateway's UDP side (port 5684): one datagram socket, one `Link` per DTLS session.

Theory of operation:
    `UdpGateway` is the asyncio ``DatagramProtocol`` of one socket. Each datagram goes to a session found by
    the Connection ID of a 25/253 record (`dtls.peek_cid`, whatever address it came from), else by its
    source address. A session is a `UdpPeer`: the reader and writer a `Link` needs (a bounded queue of
    datagrams; ``sendto`` to the peer's current address) around a cloud-role `protocol.udp.UdpSession`. The
    link is the same loop as over TCP: key check at the Hello, registry, control, events, subscriptions.

    A datagram that finds no session is judged by the stateless cookie gate (`dtls.check_client_hello`):
    a ClientHello without a valid cookie costs one HMAC and one HelloVerifyRequest of about its own size;
    only a ClientHello that returns a valid cookie from the same address creates a session. Before that,
    every such datagram spends one unit of its source address's `DatagramBudget` (a token bucket per IP,
    bounded in the addresses it tracks), so a flood of spoofed ClientHellos is answered at most ``rate`` times
    a second per address and costs cookies only. Handshakes per address are capped too
    (``handshakes_per_address``), and sessions in total (``max_sessions``).

    NAT rebinding: when a datagram found its session by CID from a new address and the session then
    authenticated a record (``UdpSession.authenticated`` went up), the session moves to that address:
    replies go there and the address index follows. A datagram that does not authenticate moves nothing.

    Kept sessions: a link that ends while its DTLS association stands leaves its session in the
    `kept_sessions.SessionStore`; a 25/253 (by CID) or 254 (by device id) datagram with no live session
    takes it, and only if the datagram authenticates does a link start (after the store reserved the
    session's send sequence numbers); otherwise the session goes back untouched. Every ``flush_interval``
    the live sessions' reservations are renewed and the store written. On shutdown nothing is sent (no
    close_notify): the devices keep their sessions for the next process.

    A datagram larger than `MAX_DATAGRAM` or empty is dropped on arrival; a malformed one reaches at most the
    session it names and is dropped by its DTLS layer; neither closes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections import Counter, OrderedDict
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from devicecloud.gateway.kept_sessions import SEQUENCE_BLOCK, MemorySessionStore, SessionStore, StoredSession
from devicecloud.gateway.link import Link
from devicecloud.protocol import ConnectionState, RemoteProtocolError, Role
from devicecloud.protocol.dtls import (
    HANDSHAKE_TIMED_OUT,
    DtlsServer,
    DtlsState,
    HelloCheck,
    ServerConfig,
    Timers,
    check_client_hello,
    ecdsa_signer,
    peek_cid,
    peek_device_id,
)
from devicecloud.protocol.udp import ResumedSession, UdpSession

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    from devicecloud.gateway.context import LinkContext, LinkTransport
    from devicecloud.protocol import RandomBytes

__all__ = [
    "DatagramBudget",
    "UdpGateway",
    "UdpPeer",
    "UdpStatistics",
    "UdpTotals",
]

logger = structlog.get_logger("devicecloud.gateway")

#: Larger datagrams are dropped unread (Device OS records hold at most 1152 bytes of plaintext).
MAX_DATAGRAM = 2048
#: Datagrams queued for one session's link; more are dropped (UDP: the device retransmits).
PEER_QUEUE = 64
#: Why a datagram was dropped on arrival (`UdpStatistics.drops`).
DROP_REASONS = ("invalid", "unknown_session", "queue_full", "stopping")
Address = tuple[str, int]


def _starts_over(data: bytes) -> bool:
    """A ClientHello (epoch-0 handshake record whose first message is type 1)."""
    return len(data) > 13 and data[0] == 22 and data[3:5] == b"\x00\x00" and data[13] == 1


def _address_bytes(address: Address) -> bytes:
    return f"{address[0]}|{address[1]}".encode()


@dataclass(slots=True)
class UdpStatistics:
    """
    Running totals of the UDP side.

    Attributes:
        sessions: DTLS sessions now (handshaking or established).
        datagrams: datagrams received.
        cookies_sent: HelloVerifyRequests sent (no state kept).
        over_budget: datagrams without a session dropped because their address spent its budget.
        dropped: datagrams dropped on arrival (empty, too large, not a ClientHello, unknown CID, queue full).
        refused: valid ClientHellos refused (session cap, handshakes per address).
        moved: sessions moved to a new address by their CID.
        resumed: stored sessions a device continued without a handshake.
        datagrams_sent: datagrams sent (cookies, flights, records).
        online: devices whose UDP link is up (Hello accepted, or session resumed) now.
        drops: ``dropped`` by reason (``invalid``, ``unknown_session``, ``queue_full``, ``stopping``).
        ended: totals of the sessions that ended (`UdpTotals` adds the live ones): ``handshakes`` (full
            ones completed), ``bad_records`` (dropped by the DTLS layer or not CoAP),
            ``dtls_retransmissions``, ``coap_retransmissions``, and ``failed_<reason>`` for handshakes that
            failed (``timeout``, ``error``; ``device``: the DTLS handshake finished but the device's Hello
            was never accepted).
    """

    sessions: int = 0
    datagrams: int = 0
    cookies_sent: int = 0
    over_budget: int = 0
    dropped: int = 0
    refused: int = 0
    moved: int = 0
    resumed: int = 0
    datagrams_sent: int = 0
    online: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drops[reason] += 1


@dataclass(frozen=True, slots=True)
class UdpTotals:
    """
    A snapshot of the UDP side for metrics: `UdpStatistics` plus what the live sessions counted so far.

    Attributes:
        handshakes: DTLS sessions established: ``full`` handshakes, ``resumed`` stored sessions.
        handshakes_failed: by reason: ``timeout`` (the device went silent), ``error`` (a bad message, key or
            signature, or a fatal alert from the device), ``refused`` (over the session or per-address cap),
            ``device`` (the handshake finished but the device was not accepted at its Hello).
        datagrams_dropped: by reason: ``budget``, ``invalid``, ``unknown_session``, ``queue_full``,
            ``stopping``, ``bad_record`` (reached a session, did not authenticate or was not CoAP).
        retransmissions: ``dtls`` (handshake flights), ``coap`` (confirmable messages).
    """

    sessions: int
    online: int
    kept: int
    datagrams_in: int
    datagrams_out: int
    cookies_sent: int
    moved: int
    handshakes: dict[str, int]
    handshakes_failed: dict[str, int]
    datagrams_dropped: dict[str, int]
    retransmissions: dict[str, int]


class DatagramBudget:
    """
    A token bucket per source IP: ``rate`` datagrams a second, bursts of ``burst``; at most ``tracked``
    addresses are remembered (the oldest forgotten first, which only gives it a fresh bucket).
    """

    def __init__(self, rate: float, burst: float, tracked: int = 65_536) -> None:
        self.rate, self.burst, self.tracked = rate, burst, tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, ip: str, now: float) -> bool:
        """Spend one unit of ``ip``'s budget; False when it has none left."""
        tokens, at = self._buckets.pop(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[ip] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.tracked:
            self._buckets.popitem(last=False)
        return ok


class _PeerTransport:
    """The write side of one UDP peer, shaped as the link expects a transport."""

    def __init__(self, peer: UdpPeer) -> None:
        self._peer = peer

    def write(self, data: bytes) -> None:
        self._peer.send(data)

    def get_write_buffer_size(self) -> int:
        return 0  # datagrams are never queued here: the kernel takes or drops them

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def is_closing(self) -> bool:
        return self._peer.closed

    def close(self) -> None:
        self._peer.close()

    def abort(self) -> None:
        self._peer.close()


class UdpPeer:
    """One DTLS session's I/O: its datagram queue (the link's reader) and its writer."""

    def __init__(self, gateway: UdpGateway, session: UdpSession, address: Address) -> None:
        self.session = session
        self.address = address
        self.closed = False
        self._gateway = gateway
        # A list and a future made only while the link waits, not a deque and an Event: ~1.5 KB less per idle
        # device (issue 13's ≤ 20 KB of server RSS per device).
        self._queue: list[tuple[bytes, Address]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._source = address
        self._authenticated = session.authenticated
        self._transport = _PeerTransport(self)
        #: The send sequence number the session store has reserved up to (None: not yet).
        self.reserved: int | None = None
        #: The session was taken from the store (no handshake on this link).
        self.resumed = False

    # reader
    async def read(self, n: int = -1) -> bytes:
        self._follow()
        while not self._queue:
            if self.closed:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data, self._source = self._queue.pop(0)
        return data

    # writer
    @property
    def transport(self) -> LinkTransport:
        return self._transport

    async def drain(self) -> None:
        return None

    async def wait_closed(self) -> None:
        return None

    def feed(self, data: bytes, source: Address) -> bool:
        """Queue a datagram for the link; False (dropped) when the queue is full or the peer closed."""
        if self.closed or len(self._queue) >= PEER_QUEUE:
            return False
        self._queue.append((data, source))
        self._wake()
        return True

    def send(self, datagram: bytes) -> None:
        if self.closed:
            return
        self._follow()
        self._gateway.sendto(datagram, self.address)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _follow(self) -> None:
        """Move to the last datagram's source once the session authenticated a record from it."""
        count = self.session.authenticated
        if count != self._authenticated:
            self._authenticated = count
            if self._source != self.address:
                old, self.address = self.address, self._source
                self._gateway.moved(self, old)


class UdpGateway(asyncio.DatagramProtocol):
    """
    The UDP/DTLS listener beside the TCP one; shares the links' context (registry, services, counters).

    Args:
        ctx: what every link of the gateway shares.
        server_key: the server's EC P-256 key (pinned on the devices).
        host, port: where to listen (port 0 = a free one; read `port` back).
        max_sessions: the most DTLS sessions at once.
        rate, burst: the datagram budget per source IP for datagrams without a session.
        handshakes_per_address: DTLS handshakes in progress from one IP at most.
        random_bytes: DTLS randomness (server random, ephemeral key, CID) and CoAP ids.
        sessions: where sessions wait between links (default: in memory; `PersistentSessionStore` keeps them
            across restarts).
        flush_interval: seconds between two writes of the session store (live sessions' reservations).
    """

    def __init__(
        self,
        ctx: LinkContext,
        server_key: EllipticCurvePrivateKey,
        *,
        host: str | None = None,
        port: int = 5684,
        max_sessions: int = 10_000,
        rate: float = 10.0,
        burst: float = 20.0,
        handshakes_per_address: int = 16,
        handshake_timeout: float = 30.0,
        random_bytes: RandomBytes = os.urandom,
        sessions: SessionStore | None = None,
        flush_interval: float = 1.0,
    ) -> None:
        self._ctx = ctx
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()
        self._host, self._port = host, port
        self._max_sessions = max_sessions
        self._per_address = handshakes_per_address
        self._random = random_bytes
        self._config = ServerConfig(
            signer=ecdsa_signer(server_key),
            key_check=lambda spki: "",  # every P-256 key passes here; the Hello's device id is checked later
            cookie_secrets=(secrets.token_bytes(32),),
            timers=Timers(handshake_timeout=handshake_timeout),
        )
        self.budget = DatagramBudget(rate, burst)
        self.stats = UdpStatistics()
        self._transport: asyncio.DatagramTransport | None = None
        self._by_address: dict[Address, UdpPeer] = {}
        self._by_cid: dict[bytes, UdpPeer] = {}
        self._handshaking: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._peers: set[UdpPeer] = set()
        self._flusher: asyncio.Task[None] | None = None
        self.flush_interval = flush_interval

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError("the UDP gateway is not listening")
        return int(self._transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        kept = await self.sessions.load()
        self._flusher = asyncio.create_task(self._flush_loop(), name="device-udp-sessions")
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self._host or "0.0.0.0", self._port))  # noqa: S104 - None = all, as TCP
        logger.info("device gateway listening for UDP", host=self._host or "*", port=self.port, kept=kept)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.sessions.flush()  # the sessions the links just left
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ------------------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP socket error", error=str(exc))  # ICMP unreachable and the like: nothing to do

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        address: Address = (str(addr[0]), int(addr[1]))
        self.stats.datagrams += 1
        if not data or len(data) > MAX_DATAGRAM or self._stopping:
            self.stats.drop("stopping" if self._stopping else "invalid")
            return
        peer: UdpPeer | None = None
        cid: bytes | None = None
        if data[0] in (25, 253):
            cid = peek_cid(data)
            peer = self._by_cid.get(cid) if cid is not None else None
        if peer is None:
            peer = self._by_address.get(address)
            if (
                peer is not None
                and _starts_over(data)
                and peer.session.endpoint.state is DtlsState.ESTABLISHED
            ):
                peer = None  # a device that lost its session shakes hands again from the same address
        if peer is not None:
            if not peer.feed(data, address):
                self.stats.drop("queue_full")
            return
        if data[0] in (25, 253, 254):
            if not self.budget.take(address[0], self._ctx.clock.monotonic()):
                self.stats.over_budget += 1
            elif not self._resume(data, address, cid):
                self.stats.drop("unknown_session")  # no such session, or the datagram did not authenticate
            return
        if data[0] != 22:  # only a handshake record can start a session
            self.stats.drop("invalid")
            return
        if not self.budget.take(address[0], self._ctx.clock.monotonic()):
            self.stats.over_budget += 1
            return
        check = check_client_hello(data, _address_bytes(address), self._config.cookie_secrets)
        if check.reply is not None:
            self.stats.cookies_sent += 1
            self.sendto(check.reply, address)
            return
        if not check.accept:
            self.stats.drop("invalid")
            return
        busy = self._handshaking.get(address[0], 0) >= self._per_address
        if busy or len(self._by_address) >= self._max_sessions:
            self.stats.refused += 1
            return
        self._start(check, address)

    # ------------------------------------------------------------------------------------------ sessions

    def sendto(self, datagram: bytes, address: Address) -> None:
        if self._stopping:
            return  # no close_notify on shutdown: the devices keep their sessions for the next process
        if self._transport is not None and not self._transport.is_closing():
            self.stats.datagrams_sent += 1
            self._transport.sendto(datagram, address)

    def moved(self, peer: UdpPeer, old: Address) -> None:
        if self._by_address.get(old) is peer:
            del self._by_address[old]
        self._by_address[peer.address] = peer
        self.stats.moved += 1
        logger.debug("device session moved to a new address", device_id=peer.session.device_id)

    def _resume(self, data: bytes, address: Address, cid: bytes | None) -> bool:
        """
        Continue a stored session from a 25/253/254 datagram if it authenticates; nothing is kept otherwise.
        """
        if cid is not None:
            stored = self.sessions.take_by_cid(cid)
        else:
            raw_id = peek_device_id(data)
            stored = self.sessions.take_by_device(raw_id.hex()) if raw_id is not None else None
        if stored is None:
            return False
        now = self._ctx.clock.monotonic()
        server = DtlsServer.resume(self._config, stored.state, _address_bytes(address), now=now)
        session = UdpSession(
            Role.CLOUD, endpoint=server, now=now, random_bytes=self._random, resumed=stored.coap
        )
        with contextlib.suppress(RemoteProtocolError):
            session.receive_data(data, now)
        if session.authenticated == 0 or session.state is ConnectionState.CLOSED:
            self.sessions.put_back(stored)
            return False
        self.stats.resumed += 1
        self._start_peer(server, session, address, handshaking=False, resumed=stored)
        return True

    def _start(self, check: HelloCheck, address: Address) -> None:
        now = self._ctx.clock.monotonic()
        server = DtlsServer.accept(
            self._config,
            check,
            _address_bytes(address),
            now=now,
            random_bytes=self._random,
        )
        session = UdpSession(Role.CLOUD, endpoint=server, now=now, random_bytes=self._random)
        self._start_peer(server, session, address, handshaking=True)

    def _start_peer(
        self,
        server: DtlsServer,
        session: UdpSession,
        address: Address,
        *,
        handshaking: bool,
        resumed: StoredSession | None = None,
    ) -> None:
        peer = UdpPeer(self, session, address)
        peer.resumed = resumed is not None
        self._by_address[address] = peer
        if server.cid is not None:
            self._by_cid[server.cid] = peer
        ip = address[0]
        if handshaking:
            self._handshaking[ip] = self._handshaking.get(ip, 0) + 1
        self.stats.sessions = len(self._by_address)
        task = asyncio.create_task(
            self._serve(peer, server.cid, ip, handshaking, resumed), name=f"device-udp-{ip}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, peer: UdpPeer, cid: bytes | None, ip: str, handshaking: bool, resumed: StoredSession | None
    ) -> None:

        accepted = False

        def online() -> None:
            nonlocal handshaking
            if handshaking:
                handshaking = False
                self._release(ip)

        def accept() -> None:
            nonlocal accepted
            accepted = True
            self.stats.online += 1
            online()

        self._peers.add(peer)
        try:
            if resumed is not None:  # nothing was sent yet: reserve its sequence numbers durably first
                reserved = resumed.state.write_sequence + SEQUENCE_BLOCK
                try:
                    await self.sessions.reserve(resumed, reserved)
                except Exception:
                    logger.warning("cannot keep a resumed session; the device will retry", exc_info=True)
                    peer.close()
                    self.sessions.put_back(resumed)
                    return
                peer.reserved = reserved
            link = Link(self._ctx, peer.session, peer, peer, ip, on_online=accept)
            await link.run()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        finally:
            self._peers.discard(peer)
            peer.close()
            online()
            self._count_ended(peer.session, resumed is not None, accepted)
            if resumed is None or peer.reserved is not None:
                self._keep(peer.session)
            if self._by_address.get(peer.address) is peer:
                del self._by_address[peer.address]
            if cid is not None and self._by_cid.get(cid) is peer:
                del self._by_cid[cid]
            self.stats.sessions = len(self._by_address)

    def _count_ended(self, session: UdpSession, resumed: bool, accepted: bool) -> None:
        ended = self.stats.ended
        if accepted:
            self.stats.online -= 1
        for name, value in _session_counts(session, resumed).items():
            ended[name] += value
        if resumed or accepted:
            return
        endpoint = session.endpoint
        if endpoint.session is not None:
            ended["failed_device"] += 1  # the handshake finished; the Hello never came or was refused
        elif endpoint.failure is None or endpoint.failure == HANDSHAKE_TIMED_OUT:
            ended["failed_timeout"] += 1  # the device went silent (or the link's deadline came first)
        else:
            ended["failed_error"] += 1

    def totals(self) -> UdpTotals:
        """The UDP side's counters for metrics: the ended sessions' totals plus the live ones' so far."""
        s = self.stats
        counts = Counter(s.ended)
        for peer in self._peers:
            counts.update(_session_counts(peer.session, peer.resumed))
        return UdpTotals(
            sessions=s.sessions,
            online=s.online,
            kept=len(self.sessions) if isinstance(self.sessions, Sized) else 0,
            datagrams_in=s.datagrams,
            datagrams_out=s.datagrams_sent,
            cookies_sent=s.cookies_sent,
            moved=s.moved,
            handshakes={"full": counts["handshakes"], "resumed": s.resumed},
            handshakes_failed={
                **{reason: counts[f"failed_{reason}"] for reason in ("timeout", "error", "device")},
                "refused": s.refused,
            },
            datagrams_dropped={
                "budget": s.over_budget,
                **{reason: s.drops[reason] for reason in DROP_REASONS},
                "bad_record": counts["bad_records"],
            },
            retransmissions={"dtls": counts["dtls_retransmissions"], "coap": counts["coap_retransmissions"]},
        )

    def _keep(self, session: UdpSession) -> None:
        """Store the session of a link that ended while its DTLS association stands (sleep, silence)."""
        endpoint = session.endpoint
        if endpoint.session is None or session.device_id is None or not session.hello_payload:
            return  # no handshake finished, or the device was never accepted
        if session.closed_by_peer:
            return  # close_notify or a fatal alert: the device discarded it
        state = endpoint.export_session()
        self.sessions.save(StoredSession(state, ResumedSession(session.device_id, session.hello_payload)))

    async def _flush_loop(self) -> None:
        """Every ``flush_interval``: renew the reservations of live sessions, then write the store."""
        clock = self._ctx.clock
        while True:
            await clock.sleep_until(clock.monotonic() + self.flush_interval)
            try:
                for peer in list(self._peers):
                    self._renew(peer)
                await self.sessions.flush()
            except Exception:
                logger.exception("keeping UDP sessions failed")

    def _renew(self, peer: UdpPeer) -> None:
        session = peer.session
        endpoint = session.endpoint
        if endpoint.session is None or session.device_id is None or not session.hello_payload:
            return
        state = endpoint.export_session()
        if peer.reserved is not None and state.write_sequence < peer.reserved - SEQUENCE_BLOCK // 2:
            return
        peer.reserved = state.write_sequence + SEQUENCE_BLOCK
        kept = StoredSession(state, ResumedSession(session.device_id, session.hello_payload))
        self.sessions.keep_live(kept, peer.reserved)

    def _release(self, ip: str) -> None:
        left = self._handshaking.get(ip, 0) - 1
        if left > 0:
            self._handshaking[ip] = left
        else:
            self._handshaking.pop(ip, None)


def _session_counts(session: UdpSession, resumed: bool) -> dict[str, int]:
    """What one session counted: a full handshake (done, not resumed), bad records, retransmissions."""
    endpoint = session.endpoint
    return {
        "handshakes": int(not resumed and endpoint.session is not None),
        "bad_records": session.dropped,
        "dtls_retransmissions": endpoint.retransmissions,
        "coap_retransmissions": session.retransmissions,
    }
