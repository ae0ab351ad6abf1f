"""
The event bus contract: publish events, subscribe with a filter, bounded queues per subscriber.

Rules every backend keeps:
- ``publish`` never waits for subscribers; it returns once the event is handed to the bus;
- publishing costs work in proportion to the subscribers an event can match, not to all subscribers: a
  filter's ``routes()`` (audience, name prefix) and the event's ``audiences`` say who can match (in
  memory: dict look-ups; over NATS: subjects);
- each subscription has a bounded queue: a subscriber that falls that far behind is closed (its iterator
  ends and ``closed_reason`` says why) and the drop is logged; nobody else notices. A ``lossy``
  subscription (events to devices: NON by protocol) instead loses the events that do not fit, counts them
  (``dropped``, ``statistics()["dropped_events"]``) and stays open;
- a healthy subscriber receives every matching event, in publish order per publisher;
- ``intake`` is the cloud's own consumer of every event (webhooks): with several nodes each event reaches
  ONE node's intake, which ``acknowledge``s it once it has made it durable (the outbox); a backend that
  keeps events (JetStream) hands an unacknowledged event to another node when this one dies;
- ``settle()`` returns once every event this process published before the call has reached this
  process's subscriptions (immediate in one process; a round trip through NATS).

Backends: `memory.MemoryBus` (the default, one process), `nats.NatsBus` (``bus_url = nats://…``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from devicecloud.domain.events import AllEvents, CloudEvent, Filter


class Subscription(Protocol):
    """
    An async iterator of matching events; ``close()`` ends it (idempotent).
    """

    def __aiter__(self) -> AsyncIterator[CloudEvent]: ...

    async def __anext__(self) -> CloudEvent: ...

    @property
    def closed_reason(self) -> str | None: ...

    @property
    def dropped(self) -> int:
        """Events lost so far because the queue was full (only a ``lossy`` subscription loses any)."""
        ...

    def close(self, reason: str = "closed") -> None: ...

    def listen(self, on_event: Callable[[CloudEvent], None], on_end: Callable[[str], None]) -> bool:
        """
        Hand matching events to ``on_event`` on the event loop, in order, instead of through iteration, and
        tell ``on_end`` the reason when the bus ends the subscription (not when ``close`` is called). No
        queue and no task: the callback paces itself (a device link drops what its socket cannot take).
        False when this subscription cannot, or already has events queued: the caller iterates instead.
        """
        ...


class IntakeSubscription(Subscription, Protocol):
    """
    A share of the cluster's intake: ``acknowledge`` events once they are durable elsewhere.
    """

    async def acknowledge(self, events: Sequence[CloudEvent]) -> None: ...


class EventBus(Protocol):
    async def start(self) -> None:
        """
        Connect (a no-op in one process). Subscribing before is allowed; publishing is not.
        """
        ...

    async def publish(self, event: CloudEvent) -> None: ...

    async def settle(self) -> None: ...

    async def subscribed(self) -> None:
        """
        Return once the subscriptions made so far get every event published from now on, by any process (an
        event stream says ``:ok`` only then: a client may publish through another node at once).
        """
        ...

    async def ping(self) -> None:
        """
        Raise when the bus cannot carry events now (readiness).
        """
        ...

    def intake(self, event_filter: AllEvents, *, max_pending: int) -> IntakeSubscription: ...

    def broadcast(self, topic: str, key: str) -> None:
        """
        Tell every process on the bus, this one included, that ``topic``/``key`` changed (caches forget it);
        returns at once, never fails (a lost note costs a stale cache, as before buses).
        """
        ...

    def on_broadcast(self, listener: Callable[[str, str], None]) -> None:
        """
        Call ``listener(topic, key)`` for each broadcast (from any process).
        """
        ...

    def subscribe(
        self, event_filter: Filter, *, max_pending: int | None = None, lossy: bool = False
    ) -> Subscription: ...

    def statistics(self) -> dict[str, int]:
        """
        Running totals; every backend has ``subscriptions``, ``published``, ``delivered``,
        ``dropped_subscribers``, ``dropped_events`` and ``evaluated`` (filters it evaluated: its work).
        """
        ...

    async def close(self) -> None: ...


class DeviceCommands(Protocol):
    """
    Request/reply between nodes for device commands (`nats.NatsBus`; one process needs none): a node serves
    the devices whose link it holds, any node may ask.
    """

    #: Answers a request payload for a device held here; None to stay silent (not held here after all).
    command_handler: Callable[[bytes], Awaitable[bytes | None]] | None

    def serve_device(self, device_id: str) -> None: ...

    def stop_serving_device(self, device_id: str) -> None: ...

    async def request_device(self, device_id: str, payload: bytes, *, timeout: float) -> bytes:
        """
        The holder's answer. Raises LookupError when no node holds the device (at once), TimeoutError when
        no answer comes within ``timeout`` seconds.
        """
        ...
