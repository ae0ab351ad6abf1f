"""
What the links of one gateway share: collaborators, settings and running totals.

Kept apart from `link` so that module stays about the loop, and the server can build this without
touching it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devicecloud.protocol import EventPublished

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.gateway.link import Link
    from devicecloud.gateway.registry import LinkRegistry
    from devicecloud.services.ports import DeviceSessions

__all__ = ["EventHook", "LinkContext", "LinkCounters"]

#: Called (awaited, in order) for every event a device publishes: ``(device_id, event)``.
EventHook = Callable[[str, EventPublished], Awaitable[None]]


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
