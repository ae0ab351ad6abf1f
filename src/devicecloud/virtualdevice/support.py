"""
Small value types around :class:`~devicecloud.virtualdevice.VirtualDevice`: errors, reconnect backoff,
subscriptions and statistics.

Theory of operation:
    Kept apart from the device so the device module holds only behaviour. Everything here is plain data
    with at most a pure method (``Backoff.delay``, ``Subscription.matches``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from devicecloud.protocol import SubscriptionScope

__all__ = [
    "Backoff",
    "Counters",
    "DeviceStatistics",
    "EventHandler",
    "NotConnectedError",
    "RequestError",
    "Subscription",
    "VirtualDeviceError",
]

#: ``handler(event_name, data)``: what a subscription calls for each matching event (sync or async).
EventHandler = Callable[[str, str | None], Awaitable[None] | None]


class VirtualDeviceError(Exception):
    """Base class of the virtual device's errors."""


class NotConnectedError(VirtualDeviceError, ConnectionError):
    """The device has no established session with the cloud right now."""


class RequestError(VirtualDeviceError):
    """
    The cloud refused or did not answer a request (CON publish, subscribe, ping, time).

    Attributes:
        code: the CoAP code of the refusal, or ``None`` (timeout, reset, link lost).
        reason: a readable reason.
    """

    def __init__(self, what: str, code: int | None, reason: str) -> None:
        shown = f" ({code >> 5}.{code & 0x1F:02d})" if code is not None else ""  # CoAP c.dd
        super().__init__(f"{what}: {reason}{shown}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Backoff:
    """
    Reconnect delays: ``initial × factor^attempt``, capped at ``maximum``, each scaled by a random 50–100 %
    so a fleet of virtual devices does not reconnect in lock-step after a server restart.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """
        The wait before reconnect attempt ``attempt`` (0 = right after a link that had worked).

        Returns:
            Seconds.
        """
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        if not self.jitter:
            return base
        return base * (0.5 + secrets.randbelow(501) / 1000)


@dataclass(frozen=True)
class Subscription:
    """
    A subscription: events whose name starts with ``prefix`` from the given scope go to ``handler``.

    Attributes:
        prefix: the event name prefix ("" = everything the scope allows).
        scope: all devices' public events, my devices' events, or one device's.
        device_id: the device, for ``SubscriptionScope.DEVICE``.
        handler: ``handler(name, data)``.
    """

    prefix: str
    scope: SubscriptionScope
    device_id: str | None
    handler: EventHandler

    def matches(self, name: str) -> bool:
        """Whether an event name falls under this subscription (a plain prefix match, like the firmware)."""
        return name.startswith(self.prefix)


@dataclass
class Counters:
    """
    What a virtual device has done since it was created; :class:`DeviceStatistics` adds the live state.

    Attributes:
        connects: sessions established (handshake + Hello).
        disconnects: sessions or connection attempts that ended.
        function_calls: functions run (unknown ones not counted).
        variable_reads: variables read (unknown ones not counted).
        rejected_requests: requests answered with an error (unknown name, argument too long, failures).
        describes: Describe answers and 2.x device-initiated Describes sent.
        events_published: events published.
        events_received: events delivered by the cloud (matching a subscription or not).
        signals: signal on/off requests.
        pings_received: pings from the cloud.
        bytes_sent: bytes written to sockets.
        bytes_received: bytes read from sockets.
    """

    connects: int = 0
    disconnects: int = 0
    function_calls: int = 0
    variable_reads: int = 0
    rejected_requests: int = 0
    describes: int = 0
    events_published: int = 0
    events_received: int = 0
    signals: int = 0
    pings_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(frozen=True)
class DeviceStatistics:
    """
    A snapshot of a virtual device's state and :class:`Counters` (trio-style ``statistics()``).

    Attributes:
        connected: a session is established now.
        signaling: the rainbow LED is on.
        last_disconnect_reason: why the last session or attempt ended.
        (the rest): as in :class:`Counters`.
    """

    connected: bool
    signaling: bool
    last_disconnect_reason: str | None
    connects: int
    disconnects: int
    function_calls: int
    variable_reads: int
    rejected_requests: int
    describes: int
    events_published: int
    events_received: int
    signals: int
    pings_received: int
    bytes_sent: int
    bytes_received: int
