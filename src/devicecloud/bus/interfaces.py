"""
The event bus contract: publish events, subscribe with a filter, bounded queues per subscriber.

Rules every backend keeps:
- ``publish`` never waits for subscribers; it returns once the event is handed to the bus;
- each subscription has a bounded queue: a subscriber that falls that far behind is closed (its iterator
  ends and ``closed_reason`` says why) and the drop is logged; nobody else notices;
- a healthy subscriber receives every matching event, in publish order per publisher.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from devicecloud.domain.events import CloudEvent, Filter


class Subscription(Protocol):
    """
    An async iterator of matching events; ``close()`` ends it (idempotent).
    """

    def __aiter__(self) -> AsyncIterator[CloudEvent]: ...

    async def __anext__(self) -> CloudEvent: ...

    @property
    def closed_reason(self) -> str | None: ...

    def close(self, reason: str = "closed") -> None: ...


class EventBus(Protocol):
    async def publish(self, event: CloudEvent) -> None: ...

    def subscribe(self, event_filter: Filter, *, max_pending: int | None = None) -> Subscription: ...

    def statistics(self) -> dict[str, int]: ...

    async def close(self) -> None: ...
