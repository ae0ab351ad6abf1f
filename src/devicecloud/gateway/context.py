"""
What the links of one gateway share: collaborators, settings and running totals.

Kept apart from `link` so that module stays about the loop, and the server can build this without
touching it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from devicecloud.protocol import EventPublished

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.events import CloudEvent
    from devicecloud.gateway.link import Link
    from devicecloud.gateway.registry import LinkRegistry
    from devicecloud.services.ports import DeviceSessions

__all__ = [
    "DeviceSubscription",
    "EventFeed",
    "EventHook",
    "LinkContext",
    "LinkCounters",
    "LinkReader",
    "LinkTransport",
    "LinkWriter",
    "SubscribeHook",
    "SubscriptionScopeName",
]


class LinkReader(Protocol):
    """What a link reads from: asyncio's ``StreamReader`` (TCP) or a UDP session's datagram queue."""

    async def read(self, n: int = -1) -> bytes:
        """The next bytes (TCP) or the next datagram (UDP); ``b""`` once the peer or transport is gone."""
        ...


class LinkTransport(Protocol):
    """The write side of a link's transport (asyncio's stream transport, or one UDP peer)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class LinkWriter(Protocol):
    """What a link writes to: asyncio's ``StreamWriter`` (TCP) or a UDP session's writer."""

    @property
    def transport(self) -> LinkTransport: ...

    async def drain(self) -> None: ...

    async def wait_closed(self) -> None: ...


#: Called (awaited, in order) for every event a device publishes: ``(device_id, event)``. True = accepted;
#: False = refused (over the device's publish limit); raising `errors.InvalidInput` = refused as against
#: the rules (too long, not UTF-8, …). A refused CON event gets ACK 4.00, a refused NON one is dropped.
EventHook = Callable[[str, EventPublished], Awaitable[bool]]

#: Whose events a device subscription covers: everyone's public ones plus its owner's (``all``), its
#: owner's only (``mine``, Uri-Query ``u``), or one device's (``device``).
SubscriptionScopeName = Literal["all", "mine", "device"]


@dataclass(frozen=True, slots=True)
class DeviceSubscription:
    """
    One Subscribe message as plain values: a name prefix, a scope and, for ``device``, that device's id.
    """

    prefix: str
    scope: SubscriptionScopeName
    device_id: str | None = None


class EventFeed(Protocol):
    """
    The events one link forwards to its device, in order (a bus subscription fits); ``close()`` ends it.
    """

    def __aiter__(self) -> AsyncIterator[CloudEvent]: ...

    async def __anext__(self) -> CloudEvent: ...

    @property
    def closed_reason(self) -> str | None: ...

    @property
    def dropped(self) -> int:
        """Events lost so far because the link fell behind (a lossy feed: events to devices are NON)."""
        ...

    def close(self, reason: str = "closed") -> None: ...

    def listen(self, on_event: Callable[[CloudEvent], None], on_end: Callable[[str], None]) -> bool:
        """Events handed to ``on_event`` on the loop instead of iterated; False: iterate (the bus's rules)."""
        ...


#: Opens ONE feed for all of a device's distinct subscriptions: ``(device_id, subscriptions)`` → the feed
#: (``None`` = nothing to deliver). Called again with the longer tuple when a new subscription arrives; the
#: link then closes the old feed. Who may see what is the provider's business (services' visibility rules).
#: The provider should subscribe as its last step (no await after it), so the swap loses and repeats nothing.
SubscribeHook = Callable[[str, tuple[DeviceSubscription, ...]], Awaitable[EventFeed | None]]


@dataclass(slots=True)
class LinkCounters:
    """
    Running totals shared by the links of one gateway (see `DeviceGateway.statistics`).
    """

    accepted: int = 0
    refused: int = 0
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    replaced: int = 0
    protocol_errors: int = 0
    requests: int = 0
    requests_timed_out: int = 0
    events_received: int = 0
    events_refused: int = 0
    events_invalid: int = 0
    events_sent: int = 0
    events_undeliverable: int = 0
    events_dropped: int = 0
    proxy_headers_refused: int = 0


@dataclass(frozen=True, slots=True)
class LinkContext:
    """
    What every link of one gateway shares.
    """

    sessions: DeviceSessions
    registry: LinkRegistry[Link]
    clock: Clock
    counters: LinkCounters
    describe_on_connect: bool
    on_event: EventHook | None
    on_subscribe: SubscribeHook | None = None
