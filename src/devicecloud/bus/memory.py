"""
The in-process event bus: the default backend, for one server process.

Publishing walks the subscriptions and puts the event on each matching queue without awaiting, so a
publisher is never held up; a full queue closes its subscription (the consumer is too slow) instead of
growing or blocking. Subscriptions are indexed by nothing more than a list: filters are cheap, and the
fan-out cost is linear in subscribers, which the fan-out benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from devicecloud.domain.events import CloudEvent, Filter

logger = structlog.get_logger("devicecloud.bus")
DEFAULT_MAX_PENDING = 1000
_CLOSED = object()


class MemorySubscription:
    def __init__(self, bus: MemoryBus, event_filter: Filter, max_pending: int) -> None:
        self._bus = bus
        self.filter = event_filter
        # One slot more than the bound, so the close mark always fits.
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_pending + 1)
        self._max_pending = max_pending
        self._closed_reason: str | None = None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def deliver(self, event: CloudEvent) -> None:
        if self._closed_reason is not None:
            return
        if self._queue.qsize() >= self._max_pending:
            logger.warning("slow subscriber dropped", prefix=self.filter.prefix, pending=self._max_pending)
            self.close("too slow: more than %d events pending" % self._max_pending)  # noqa: UP031
            return
        self._queue.put_nowait(event)

    def close(self, reason: str = "closed") -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._bus.forget(self)
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> AsyncIterator[CloudEvent]:
        return self

    async def __anext__(self) -> CloudEvent:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # later calls end too
            raise StopAsyncIteration
        assert isinstance(item, CloudEvent)
        return item

    def pending(self) -> int:
        return self._queue.qsize()


class MemoryBus:
    """
    `bus.interfaces.EventBus` within one process.
    """

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._max_pending = max_pending
        self._subscriptions: list[MemorySubscription] = []
        self._published = 0
        self._delivered = 0
        self._dropped_subscribers = 0

    async def publish(self, event: CloudEvent) -> None:
        self.publish_nowait(event)

    def publish_nowait(self, event: CloudEvent) -> None:
        self._published += 1
        for subscription in list(self._subscriptions):
            if subscription.filter.matches(event):
                subscription.deliver(event)
                if subscription.closed_reason is None:
                    self._delivered += 1
                else:
                    self._dropped_subscribers += 1

    def subscribe(self, event_filter: Filter, *, max_pending: int | None = None) -> MemorySubscription:
        subscription = MemorySubscription(self, event_filter, max_pending or self._max_pending)
        self._subscriptions.append(subscription)
        return subscription

    def forget(self, subscription: MemorySubscription) -> None:
        with contextlib.suppress(ValueError):  # already forgotten
            self._subscriptions.remove(subscription)

    def statistics(self) -> dict[str, int]:
        return {
            "subscriptions": len(self._subscriptions),
            "published": self._published,
            "delivered": self._delivered,
            "dropped_subscribers": self._dropped_subscribers,
        }

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close("bus closed")
