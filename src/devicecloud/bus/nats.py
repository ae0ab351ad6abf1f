"""
The NATS event bus: the same `EventBus` contract as the in-process bus, across the nodes of a cluster.

Theory of operation:
    - publishing encodes the event once (`wire.encode`) and sends that payload to one subject per audience
      of the event (a few, `domain.events.audiences`); subjects spell the name one token per character, so
      the NATS server does the owner and prefix filtering (`wire`);
    - this node subscribes each route (audience, prefix) that its subscriptions use ONCE, counted, and hands
      what arrives to the in-process bus it extends (`MemoryBus`): its index picks the local subscriptions,
      with the same bounded queues as in one process (lossy where that is lossy, counted). An event arrives
      once per matching route of this node; its id (publisher's random prefix and a counter) drops the
      copies after the first;
    - messages are handled as the connection reads them, in its order, on the reading task: nats-py's
      per-subscription queue is replaced by a hand-off (`_HandOff`), so events of one publisher reach a local
      subscription in publish order whichever routes brought them, and a node costs no task per route;
    - the webhook intake is a JetStream work queue instead (`intake`): the stream keeps the ``all`` copy of
      every event until one node's intake has written it to the outbox and acknowledged it; a node that
      dies leaves its unacknowledged events to the others once ``INTAKE_ACK_WAIT`` runs out;
    - `settle()` sends a marker through the server to this node and returns once it came back: everything
      this node published before has been handed to its subscriptions by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import nats
import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api
from nats.js.errors import BadRequestError

from devicecloud.bus import wire
from devicecloud.bus.memory import MemoryBus, MemorySubscription
from devicecloud.domain.events import EVERYONE, AllEvents, CloudEvent, Filter, Route, audiences, loggable

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsSubscription
    from nats.js import JetStreamContext

logger = structlog.get_logger("devicecloud.bus")
CommandHandler = Callable[[bytes], Awaitable[bytes | None]]

DEFAULT_ROOT = "devicecloud"
INTAKE_ACK_WAIT = 60.0  # seconds an intake has to write and acknowledge an event before another node gets it
INTAKE_MAX_AGE = 24 * 3600.0  # events no intake took (webhooks off everywhere) are dropped after this,
INTAKE_MAX_BYTES = 1 << 30  # or once they fill this much, oldest first
_SEEN = 8192  # event ids remembered to drop later copies (copies of one publish arrive together)


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """
    What a ``nats://`` bus URL names: the servers, and the subject root (its path; ``devicecloud`` without).
    """

    servers: tuple[str, ...]
    root: str

    @classmethod
    def parse(cls, url: str) -> NatsTarget:
        servers, root = [], DEFAULT_ROOT
        for part in url.split(","):
            split = urlsplit(part.strip())
            if split.scheme not in ("nats", "tls") or not split.netloc:
                raise ValueError(f"not a NATS server URL: {part!r}")
            if split.path.strip("/"):
                root = split.path.strip("/")
            servers.append(urlunsplit((split.scheme, split.netloc, "", "", "")))
        if not root.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"the subject root must be letters, digits, - and _: {root!r}")
        return cls(tuple(servers), root)


def _reraise_cancellation() -> None:
    """
    Raise CancelledError when the current task is being cancelled (nats-py sometimes answers a cancellation
    with another exception, which would otherwise be taken for a failure and the cancellation lost).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _HandOff:
    """
    Stands in for a nats-py subscription's pending queue (the client puts each message it reads there):
    the message is handled at once, in the connection's order, instead of by a task per subscription.
    """

    def __init__(self, bus: NatsBus, route: Route) -> None:
        self._bus = bus
        self._route = route
        self.subscription: NatsSubscription | None = None

    def put_nowait(self, msg: Msg) -> None:
        if self.subscription is not None:
            self.subscription._pending_size -= len(msg.data)
        self._bus.received(msg.data)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True


class _CommandHandOff:
    """
    `_HandOff` for a device's command subject: each request is answered by a task of its own.
    """

    def __init__(self, bus: NatsBus) -> None:
        self._bus = bus
        self.subscription: NatsSubscription | None = None

    def put_nowait(self, msg: Msg) -> None:
        if self.subscription is not None:
            self.subscription._pending_size -= len(msg.data)
        self._bus.command(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True


class NatsBus(MemoryBus):
    """
    `bus.interfaces.EventBus` over NATS (see the module docstring).
    """

    def __init__(
        self,
        url: str,
        *,
        max_pending: int = 1000,
        name: str = "devicecloud",
        intake_ack_wait: float = INTAKE_ACK_WAIT,
    ) -> None:
        super().__init__(max_pending=max_pending)
        self.intake_ack_wait = intake_ack_wait
        self.target = NatsTarget.parse(url)
        self._name = name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._routes: dict[Route, int] = {}
        self._nats_subs: dict[Route, _HandOff] = {}
        self._subscribing: set[asyncio.Task[None]] = set()
        self._prefix = secrets.token_hex(4) + ":"
        self._ids = itertools.count()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._sent = 0
        self._received = 0
        self._duplicates = 0
        self._undecodable = 0
        self._unstored = 0
        self._lag_us = 0
        self._notes = 0
        self._intakes: list[JetStreamIntake] = []
        self._served: dict[str, _CommandHandOff] = {}
        self._answering: set[asyncio.Task[None]] = set()
        #: Answers a command payload for a device held here (None: stay silent). Set by the runtime.
        self.command_handler: CommandHandler | None = None

    @property
    def stream_name(self) -> str:
        return f"{self.target.root}_events".upper().replace("-", "_")

    async def start(self) -> None:
        if self._nc is not None:
            return
        self._nc = await nats.connect(
            servers=list(self.target.servers),
            name=self._name,
            max_reconnect_attempts=-1,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream()
        config = js_api.StreamConfig(
            name=self.stream_name,
            subjects=[f"{self.target.root}.ev.all.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            storage=js_api.StorageType.FILE,
            max_age=INTAKE_MAX_AGE,
            max_bytes=INTAKE_MAX_BYTES,
            discard=js_api.DiscardPolicy.OLD,
        )
        try:
            await self._js.add_stream(config)
        except BadRequestError:  # made by another node with other limits: take it as it is
            await self._js.update_stream(config)
        await self._nc.subscribe(f"{self.target.root}.sync.{self._prefix[:-1]}", cb=self._on_marker)
        await self._nc.subscribe(f"{self.target.root}.ctl", cb=self._on_note)
        for route in list(self._routes):
            self._open(route)

    async def ping(self) -> None:
        """
        A round trip to the server (readiness); raises when it is not reachable.
        """
        if self._nc is None or not self._nc.is_connected:
            raise ConnectionError("not connected to NATS")
        await self._nc.flush(timeout=2)

    # ------------------------------------------------------------------ publishing

    async def publish(self, event: CloudEvent) -> None:
        nc = self._connection()
        if self._subscribing:
            await asyncio.wait(set(self._subscribing))  # our SUBs before our PUBs (cancelling us: not them)
        payload = wire.encode(event, f"{self._prefix}{next(self._ids)}")
        root, name = self.target.root, event.name
        self._sent += 1
        for audience in audiences(event)[1:]:
            await nc.publish(wire.event_subject(root, audience, name), payload)
        # The "all" copy last, through JetStream: the server has it stored once this returns.
        try:
            await self._jetstream().publish(wire.event_subject(root, EVERYONE, name), payload, timeout=5)
        except Exception:
            _reraise_cancellation()  # nats-py may turn a cancellation into a timeout: keep it one
            self._unstored += 1
            logger.exception("event not stored in JetStream: webhooks miss it", event_name=loggable(name))
        _reraise_cancellation()  # ... or swallow it whole

    async def subscribed(self) -> None:
        """
        The routes being opened are open, and the server has them (a PING after the SUBs answered): an event
        published anywhere from now on reaches them. Without the server the stream opens anyway.
        """
        if self._subscribing:
            await asyncio.wait(set(self._subscribing))
        try:
            await self._connection().flush(timeout=2)
        except Exception:  # not connected, or slow: events reach the stream once the bus is back
            logger.warning("NATS did not confirm a subscription", exc_info=True)

    async def settle(self) -> None:
        nc = self._connection()
        if self._subscribing:
            await asyncio.wait(set(self._subscribing))
        marker = f"{next(self._ids)}"
        arrived = asyncio.get_running_loop().create_future()
        self._markers[marker] = arrived
        try:
            await nc.publish(f"{self.target.root}.sync.{self._prefix[:-1]}", marker.encode())
            await asyncio.wait_for(arrived, 10)
        finally:
            self._markers.pop(marker, None)

    async def _on_marker(self, msg: Msg) -> None:
        arrived = self._markers.get(msg.data.decode())
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    # ------------------------------------------------------------------ receiving

    def received(self, payload: bytes) -> None:
        """
        An event from the server: to the local subscriptions, unless a copy of it came first.
        """
        self._received += 1
        try:
            event_id, event = wire.decode(payload)
        except (ValueError, TypeError, KeyError):
            self._undecodable += 1
            logger.warning("undecodable message on the event bus dropped", size=len(payload))
            return
        if event_id in self._seen:
            self._duplicates += 1
            return
        # Publication to arrival, by the two nodes' clocks (a skew shows here, never below zero).
        self._lag_us += max(0, int((time.time() - event.published_at.timestamp()) * 1_000_000))
        self._seen[event_id] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        self.publish_nowait(event)

    # ------------------------------------------------------------------ subscribing

    def subscribe(
        self, event_filter: Filter, *, max_pending: int | None = None, lossy: bool = False
    ) -> MemorySubscription:
        subscription = super().subscribe(event_filter, max_pending=max_pending, lossy=lossy)
        for route in subscription.routes:
            self._routes[route] = self._routes.get(route, 0) + 1
            if self._routes[route] == 1 and self._nc is not None:
                self._open(route)
        return subscription

    def forget(self, subscription: MemorySubscription) -> None:
        known = subscription in self._subscriptions
        super().forget(subscription)
        if not known:
            return
        for route in subscription.routes:
            self._routes[route] -= 1
            if not self._routes[route]:
                del self._routes[route]
                self._close(route)

    def _open(self, route: Route) -> None:
        handoff = _HandOff(self, route)
        self._nats_subs[route] = handoff
        task = asyncio.get_running_loop().create_task(self._subscribe_route(route, handoff))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _subscribe_route(self, route: Route, handoff: _HandOff) -> None:
        subject = wire.route_subject(self.target.root, route[0], route[1])
        sub = await self._connection().subscribe(subject)
        sub._pending_queue = handoff  # type: ignore[assignment]
        handoff.subscription = sub
        if self._nats_subs.get(route) is not handoff:  # closed while subscribing
            await sub.unsubscribe()

    def _close(self, route: Route) -> None:
        handoff = self._nats_subs.pop(route, None)
        if handoff is not None and handoff.subscription is not None and self._nc is not None:
            task = asyncio.get_running_loop().create_task(handoff.subscription.unsubscribe())
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    # ------------------------------------------------------------------ cache notes

    def broadcast(self, topic: str, key: str) -> None:
        if self._nc is None:
            return
        note = json.dumps([topic, key]).encode()
        task = asyncio.get_running_loop().create_task(self._nc.publish(f"{self.target.root}.ctl", note))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _on_note(self, msg: Msg) -> None:
        try:
            topic, key = json.loads(msg.data)
        except (ValueError, TypeError):
            return
        self._notes += 1
        for listener in self._listeners:
            try:
                listener(str(topic), str(key))
            except Exception:
                logger.exception("a cache note listener failed", topic=topic)

    # ------------------------------------------------------------------ device commands (request/reply)

    def serve_device(self, device_id: str) -> None:
        """
        This node holds ``device_id``'s link: answer requests for it (``command_handler``). Idempotent.
        """
        if device_id in self._served or self._nc is None:
            return
        handoff = _CommandHandOff(self)
        self._served[device_id] = handoff
        task = asyncio.get_running_loop().create_task(self._subscribe_commands(device_id, handoff))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    def stop_serving_device(self, device_id: str) -> None:
        handoff = self._served.pop(device_id, None)
        if handoff is not None and handoff.subscription is not None and self._nc is not None:
            task = asyncio.get_running_loop().create_task(handoff.subscription.unsubscribe())
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    async def request_device(self, device_id: str, payload: bytes, *, timeout: float) -> bytes:
        """
        Ask the node holding ``device_id`` and return its answer.

        Raises:
            LookupError: no node holds it (the server says so at once: no responders).
            TimeoutError: no answer within ``timeout`` seconds.
        """
        nc = self._connection()
        try:
            reply = await nc.request(self._command_subject(device_id), payload, timeout=timeout)
        except NoRespondersError as exc:
            raise LookupError(device_id) from exc
        except NatsTimeoutError as exc:
            raise TimeoutError(device_id) from exc
        return reply.data

    def _command_subject(self, device_id: str) -> str:
        return f"{self.target.root}.cmd.{wire.id_token(device_id)}"

    async def _subscribe_commands(self, device_id: str, handoff: _CommandHandOff) -> None:
        sub = await self._connection().subscribe(self._command_subject(device_id))
        sub._pending_queue = handoff  # type: ignore[assignment]
        handoff.subscription = sub
        if self._served.get(device_id) is not handoff:  # released while subscribing
            await sub.unsubscribe()

    def command(self, msg: Msg) -> None:
        if self.command_handler is None or not msg.reply:
            return
        task = asyncio.get_running_loop().create_task(self._answer(msg, self.command_handler))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg, handler: CommandHandler) -> None:
        try:
            reply = await handler(msg.data)
            if reply is not None:  # None: not held here after all, another node may answer
                await msg.respond(reply)
        except Exception:
            logger.exception("answering a device command failed")

    # ------------------------------------------------------------------ the webhook intake

    def intake(self, event_filter: AllEvents, *, max_pending: int) -> JetStreamIntake:
        intake = JetStreamIntake(self, event_filter, max_pending)
        self._intakes.append(intake)
        return intake

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise ConnectionError("the NATS bus is not started")
        return self._js

    # ------------------------------------------------------------------ the rest

    def statistics(self) -> dict[str, int]:
        counts = super().statistics()
        counts["published"] = self._sent
        counts["received"] = self._received
        counts["duplicates"] = self._duplicates
        counts["undecodable"] = self._undecodable
        counts["unstored"] = self._unstored
        counts["lag_microseconds"] = self._lag_us
        counts["notes"] = self._notes
        counts["routes"] = len(self._routes)
        counts["intake_pending"] = sum(intake.pending() for intake in self._intakes)
        return counts

    async def close(self) -> None:
        for intake in list(self._intakes):
            intake.close("bus closed")
            await intake.stopped()
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)
        await super().close()
        if self._subscribing:
            await asyncio.gather(*self._subscribing, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=2)  # what this node published reaches the server first
            await nc.close()

    def _connection(self) -> Client:
        if self._nc is None:
            raise ConnectionError("the NATS bus is not started")
        return self._nc

    async def _on_error(self, exc: Exception) -> None:
        logger.warning("NATS error", error=str(exc))

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not while closing
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        logger.warning("reconnected to NATS")


class JetStreamIntake:
    """
    A share of the cluster's webhook intake: events from the JetStream work queue, each to one node only,
    acknowledged once written (`acknowledge`). It never falls behind: it fetches only what fits.
    """

    def __init__(self, bus: NatsBus, event_filter: AllEvents, max_pending: int) -> None:
        self._bus = bus
        self._filter = event_filter
        self._max_pending = max_pending
        self._queue: asyncio.Queue[CloudEvent | None] = asyncio.Queue()
        self._unacked: dict[int, Msg] = {}
        self._closed_reason: str | None = None
        self._acks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.get_running_loop().create_task(self._fetch(), name="webhook-intake-fetch")

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def dropped(self) -> int:
        return 0

    def pending(self) -> int:
        return len(self._unacked)

    def close(self, reason: str = "closed") -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._task.cancel()
        self._queue.put_nowait(None)

    def _closing(self) -> bool:
        return self._closed_reason is not None

    def listen(self, on_event: Callable[[CloudEvent], None], on_end: Callable[[str], None]) -> bool:
        return False  # each event must be acknowledged after it is durable: iterate, and acknowledge

    async def stopped(self) -> None:
        await asyncio.wait({self._task}, timeout=5)  # a fetch ends within its own 1 s timeout

    def __aiter__(self) -> AsyncIterator[CloudEvent]:
        return self

    async def __anext__(self) -> CloudEvent:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    async def acknowledge(self, events: Sequence[CloudEvent]) -> None:
        for event in events:
            msg = self._unacked.pop(id(event), None)
            if msg is not None:
                await msg.ack()
                _reraise_cancellation()
        if len(self._unacked) < self._max_pending:
            self._room.set()

    async def _fetch(self) -> None:
        durable = "webhook-intake"
        psub: Any = None
        while psub is None:
            try:
                psub = await self._bus._jetstream().pull_subscribe(
                    f"{self._bus.target.root}.ev.all.>",
                    durable=durable,
                    stream=self._bus.stream_name,
                    config=js_api.ConsumerConfig(ack_wait=self._bus.intake_ack_wait, max_ack_pending=-1),
                )
            except Exception:
                logger.warning("webhook intake cannot reach JetStream; retrying", exc_info=True)
                await asyncio.sleep(1)
        try:
            await self._take_while_open(psub)
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _take_while_open(self, psub: Any) -> None:
        # nats-py's fetch can swallow a cancellation (it treats it as a timeout): the loop checks for close.
        while not self._closing():
            await self._room.wait()
            room = self._max_pending - len(self._unacked)
            if room <= 0:
                self._room.clear()
                continue
            try:
                messages = await psub.fetch(min(room, 256), timeout=1)
            except TimeoutError:
                _reraise_cancellation()
                continue
            except Exception:
                _reraise_cancellation()
                logger.warning("webhook intake fetch failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if self._closing():
                return  # fetched while closing: never acknowledged, so another node gets them
            for msg in messages:
                self._take(msg)

    def _take(self, msg: Msg) -> None:
        try:
            _, event = wire.decode(msg.data)
        except (ValueError, TypeError, KeyError):
            logger.warning("undecodable event in the webhook intake dropped", size=len(msg.data))
            self._ack_soon(msg)
            return
        if not self._filter.matches(event):
            self._ack_soon(msg)
            return
        self._unacked[id(event)] = msg
        self._queue.put_nowait(event)

    def _ack_soon(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(msg.ack())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
