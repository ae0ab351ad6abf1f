"""
The in-process event bus: the default backend, for one server process.

Publishing puts the event on each matching subscription's queue without awaiting, so a publisher is never
held up; a full queue closes its subscription (the consumer is too slow) instead of growing or blocking,
or, for a ``lossy`` one (a device's feed), loses that event and counts it.

Subscriptions are indexed by route: ``(audience, name prefix)`` → subscriptions (see
`domain.events.audiences`). Publishing looks up each of the event's few audiences under each prefix length
some route uses (a name has at most 64 characters), and evaluates only the filters found there. So a
``spark/status`` costs the same with 10,000 device feeds connected as with none (device feeds never share
an audience with it), and an ordinary event costs its owner's matching feeds plus public-event subscribers
of its prefixes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

import structlog

from devicecloud.bus.interfaces import IntakeSubscription
from devicecloud.domain.events import AllEvents, CloudEvent, Filter, Route, audiences

logger = structlog.get_logger("devicecloud.bus")
DEFAULT_MAX_PENDING = 1000
_CLOSED = object()


class MemorySubscription:
    def __init__(self, bus: MemoryBus, event_filter: Filter, max_pending: int, *, lossy: bool) -> None:
        self._bus = bus
        self.filter = event_filter
        self.routes: tuple[Route, ...] = event_filter.routes()
        # Made when first needed: a listened feed (every device link's) never needs one, and an empty
        # asyncio.Queue is ~2.5 KB (four deques) per subscribed device.
        self._queue: asyncio.Queue[object] | None = None
        self._max_pending = max_pending
        self._lossy = lossy
        self._closed_reason: str | None = None
        self._dropped = 0
        self._listener: tuple[Callable[[CloudEvent], None], Callable[[str], None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[CloudEvent] = []  # a listener's events until the drain (bounded as the queue)

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def dropped(self) -> int:
        return self._dropped

    def deliver(self, event: CloudEvent) -> bool:
        """
        Queue ``event``; False when it was not (closed, or full: lost if lossy, else the subscription ends).
        """
        if self._closed_reason is not None:
            return False
        loop = self._loop if self._listener is not None else None
        if (len(self._waiting) if loop is not None else self.pending()) >= self._max_pending:
            if self._lossy:
                self._dropped += 1
                return False
            logger.warning("slow subscriber dropped", prefix=self.filter.prefix, pending=self._max_pending)
            self.end("too slow: more than %d events pending" % self._max_pending)  # noqa: UP031
            return False
        if loop is None:
            self._the_queue().put_nowait(event)
            return True
        # A listener: never inside the publisher's call (a link that publishes may be one that receives);
        # one drain per loop turn hands over what arrived.
        self._waiting.append(event)
        if len(self._waiting) == 1:
            loop.call_soon(self._drain)
        return True

    def _drain(self) -> None:
        waiting, self._waiting = self._waiting, []
        listener = self._listener
        if listener is not None:
            for event in waiting:  # also after close(): what was handed before it still arrives, in order
                listener[0](event)
        if self._closed_reason is not None:
            self._listener = None

    def close(self, reason: str = "closed") -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        if not self._waiting:
            self._listener = None
        self._bus.forget(self)
        if self._queue is not None:  # one is waited on, or holds events: end it after them
            self._queue.put_nowait(_CLOSED)

    def end(self, reason: str) -> None:
        """
        The bus ends the subscription (it closes, or the subscriber fell too far behind): a listener hears it.
        """
        listener, loop = self._listener, self._loop
        self.close(reason)
        if listener is not None and loop is not None:
            loop.call_soon(listener[1], reason)  # after the drain of what was handed before

    def listen(self, on_event: Callable[[CloudEvent], None], on_end: Callable[[str], None]) -> bool:
        if self._closed_reason is not None or self._listener is not None or self.pending():
            return False
        self._listener, self._loop = (on_event, on_end), asyncio.get_running_loop()
        return True

    def __aiter__(self) -> AsyncIterator[CloudEvent]:
        return self

    async def __anext__(self) -> CloudEvent:
        if self._queue is None and self._closed_reason is not None:
            raise StopAsyncIteration  # closed before anything was queued or awaited
        queue = self._the_queue()
        item = await queue.get()
        if item is _CLOSED:
            queue.put_nowait(_CLOSED)  # later calls end too
            raise StopAsyncIteration
        assert isinstance(item, CloudEvent)
        return item

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _the_queue(self) -> asyncio.Queue[object]:
        if self._queue is None:
            # One slot more than the bound, so the close mark always fits.
            self._queue = asyncio.Queue(maxsize=self._max_pending + 1)
        return self._queue

    async def acknowledge(self, events: Sequence[CloudEvent]) -> None:
        """
        Nothing to do: in one process nobody else would take an event over.
        """


class MemoryBus:
    """
    `bus.interfaces.EventBus` within one process.
    """

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._max_pending = max_pending
        self._subscriptions: dict[MemorySubscription, None] = {}  # an ordered set
        self._index: dict[Route, dict[MemorySubscription, None]] = {}
        self._lengths: Counter[int] = Counter()  # prefix lengths of the routes in the index
        self._published = 0
        self._delivered = 0
        self._dropped_subscribers = 0
        self._dropped_events = 0
        self._evaluated = 0
        self._listeners: list[Callable[[str, str], None]] = []

    async def start(self) -> None:
        """
        Nothing to connect to.
        """

    async def publish(self, event: CloudEvent) -> None:
        self.publish_nowait(event)

    async def settle(self) -> None:
        """
        Publishing has delivered already.
        """

    async def subscribed(self) -> None:
        """
        In process a subscription is complete when it is made.
        """

    async def ping(self) -> None:
        """
        Always reachable.
        """

    def broadcast(self, topic: str, key: str) -> None:
        for listener in self._listeners:
            listener(topic, key)

    def on_broadcast(self, listener: Callable[[str, str], None]) -> None:
        self._listeners.append(listener)

    def intake(self, event_filter: AllEvents, *, max_pending: int) -> IntakeSubscription:
        """
        In one process the intake is a plain subscription.
        """
        return self.subscribe(event_filter, max_pending=max_pending)

    def publish_nowait(self, event: CloudEvent) -> None:
        self._published += 1
        name, index = event.name, self._index
        prefixes = [name[:length] for length in self._lengths if length <= len(name)]
        candidates: dict[MemorySubscription, None] = {}
        for audience in audiences(event):
            for prefix in prefixes:
                if found := index.get((audience, prefix)):
                    candidates.update(found)
        self._evaluated += len(candidates)
        for subscription in candidates:
            if not subscription.filter.matches(event):
                continue
            if subscription.deliver(event):
                self._delivered += 1
            elif subscription.closed_reason is None:
                self._dropped_events += 1
            else:
                self._dropped_subscribers += 1

    def subscribe(
        self, event_filter: Filter, *, max_pending: int | None = None, lossy: bool = False
    ) -> MemorySubscription:
        subscription = MemorySubscription(self, event_filter, max_pending or self._max_pending, lossy=lossy)
        self._subscriptions[subscription] = None
        for route in subscription.routes:
            self._index.setdefault(route, {})[subscription] = None
            self._lengths[len(route[1])] += 1
        return subscription

    def forget(self, subscription: MemorySubscription) -> None:
        if subscription not in self._subscriptions:
            return  # already forgotten
        del self._subscriptions[subscription]
        for route in subscription.routes:
            holders = self._index[route]
            del holders[subscription]
            if not holders:
                del self._index[route]
            length = len(route[1])
            self._lengths[length] -= 1
            if not self._lengths[length]:
                del self._lengths[length]

    def statistics(self) -> dict[str, int]:
        return {
            "subscriptions": len(self._subscriptions),
            "published": self._published,
            "delivered": self._delivered,
            "dropped_subscribers": self._dropped_subscribers,
            "dropped_events": self._dropped_events,
            "evaluated": self._evaluated,
        }

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.end("bus closed")
