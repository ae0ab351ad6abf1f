"""
Events as the cloud carries them: from devices, from the API, and from the cloud itself (special events).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime

# coreid of events that no device published (catalogue §9.3 uses this for cloud-made events).
INTERNAL_COREID = "particle-internal"
# coreid of events published through POST /v1/devices/events.
API_COREID = "api"
DEFAULT_TTL = 60
# The limits of an event, wherever it comes from (the API, a device): characters of name, bytes of data.
MAX_NAME_LENGTH = 64
MAX_DATA_LENGTH = 1024


# Names reserved for the cloud's own events (case-insensitive, as the Particle docs reserve them).
SYSTEM_PREFIXES = ("spark", "particle")


def is_system_name(name: str) -> bool:
    """
    True for ``spark…`` and ``particle…`` names (any case): the cloud's and Device OS's own events, which
    reach a device only when addressed to it (docs/decisions/0012-what-devices-receive.md).
    """
    return name[:8].lower().startswith(SYSTEM_PREFIXES)


def loggable(text: str, limit: int = MAX_NAME_LENGTH) -> str:
    """
    Text from outside for a log line: at most ``limit`` characters (with the full length when cut), lone
    surrogates escaped (``\\ud800``), since the log's own output would fail on them.
    """
    shown = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """
    One event. ``owner_id`` is the user it belongs to (the device's owner, or the API publisher); public
    events are visible to everyone, private ones only to their owner. ``product_id`` is the product it
    belongs to as well (a product device's, or published for the product), whose streams see it whatever
    its owner; ``product_version`` is that device's product firmware version. ``customer_id`` is the
    product's customer that owns the device (it claimed it with a claim code): that customer's streams see
    the event, no other customer's (decision 0032). ``to_device`` addresses it to one device: of all device
    subscriptions, only that device's receive it (streams see it as any other).
    """

    name: str
    data: str | None
    ttl: int
    published_at: datetime
    coreid: str
    public: bool
    owner_id: int | None
    device_id: str | None = None
    product_id: int | None = None
    to_device: str | None = None
    product_version: int | None = None
    customer_id: int | None = None


#: Who may receive an event, as a bus index key: ``("owner", id)``, ``("product", id)``, ``("customer", id)``
#: (a product customer's devices, decision 0032), ``("public", "")``, ``("all", "")`` for streams and the
#: cloud's consumers; ``("to", device_id)``, ``("owner-devices", id)``, ``("public-devices", "")``,
#: ``("product-devices", id)`` (what the product publishes, to its fleet) and ``("customer-devices", id)`` (a
#: customer's devices' events, to its other devices) for device subscriptions. A filter lists (audience,
#: prefix) routes; an event can only match a filter that shares an audience with it and whose route prefix
#: starts its name.
Audience = tuple[str, Hashable]
Route = tuple[Audience, str]
EVERYONE: Audience = ("all", "")
PUBLIC: Audience = ("public", "")
PUBLIC_TO_DEVICES: Audience = ("public-devices", "")


def audiences(event: CloudEvent) -> tuple[Audience, ...]:
    """
    The audiences of ``event``: a few, whatever the number of subscribers. A system event addressed to
    nobody has no device audience at all, so device subscriptions are never even candidates for it.
    """
    found: list[Audience] = [EVERYONE]
    if event.owner_id is not None:
        found.append(("owner", event.owner_id))
    if event.product_id is not None:
        found.append(("product", event.product_id))
        if event.customer_id is not None:
            found.append(("customer", event.customer_id))
    if event.public:
        found.append(PUBLIC)
    if event.to_device is not None:
        found.append(("to", event.to_device))
    elif not is_system_name(event.name):
        if event.owner_id is not None:
            found.append(("owner-devices", event.owner_id))
        if event.public:
            found.append(PUBLIC_TO_DEVICES)
        if event.product_id is not None and event.device_id is None:
            found.append(("product-devices", event.product_id))
        if event.customer_id is not None:
            found.append(("customer-devices", event.customer_id))
    return tuple(found)


def is_fleet_event(event: CloudEvent, product_id: int) -> bool:
    """
    An event ``product_id`` publishes itself (``POST /v1/products/:p/events``): its devices may subscribe
    to it, claimed or not, as the hosted cloud's fleet-wide publish reaches them.
    """
    return event.product_id == product_id and event.device_id is None and event.owner_id is None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """
    What a subscriber wants: a name prefix, and whose events.

    - ``owner_id`` set and ``include_public`` off: only that user's events (``/v1/devices/events``);
    - ``owner_id`` set and ``include_public`` on: that user's events plus everyone's public ones
      (``/v1/events``; a device's subscription to all devices, inside its `DeviceFilter`);
    - ``device_id`` set: only that device's events (still subject to the owner rule above);
    - ``product_id`` set: that product's events too, whoever owns them (``/v1/products/:p/events``);
    - ``customer_id`` set (with ``product_id``): only the events of that product's devices the customer owns,
      whatever else is set: a customer's ``/v1/devices/events`` and ``/v1/events/:prefix`` (decision 0032).
      It routes through the customer's own audience, so other customers' streams are never candidates.
    """

    prefix: str = ""
    owner_id: int | None = None
    include_public: bool = False
    device_id: str | None = None
    product_id: int | None = None
    customer_id: int | None = None

    def matches(self, event: CloudEvent) -> bool:
        """
        Whether this subscriber may and wants to see ``event``.
        """
        if not event.name.startswith(self.prefix):
            return False
        if self.device_id is not None and event.device_id != self.device_id:
            return False
        if self.customer_id is not None:
            return (
                event.customer_id == self.customer_id
                and event.product_id is not None
                and event.product_id == self.product_id
            )
        if self.owner_id is not None and event.owner_id == self.owner_id:
            return True
        if self.product_id is not None and event.product_id == self.product_id:
            return True
        return self.include_public and event.public

    def routes(self) -> tuple[Route, ...]:
        if self.customer_id is not None:
            return ((("customer", self.customer_id), self.prefix),)
        found: list[Route] = []
        if self.owner_id is not None:
            found.append((("owner", self.owner_id), self.prefix))
        if self.product_id is not None:
            found.append((("product", self.product_id), self.prefix))
        if self.include_public:
            found.append((PUBLIC, self.prefix))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """
    What one Subscribe of device ``recipient`` receives: events addressed to it (``to_device``) whose name
    starts with the prefix; and, addressed to no device, ordinary (not system) events that ``visible``
    (prefix, owner, public, device scope, as for streams) lets through. Never another device's system
    events, whatever the scope (docs/decisions/0012-what-devices-receive.md).
    """

    recipient: str
    visible: EventFilter
    #: The recipient's product and customer (a product device; a customer's device): what the product
    #: publishes reaches it, and so do the events of its customer's other devices, unless the subscription
    #: names one device.
    product_id: int | None = None
    customer_id: int | None = None

    @property
    def prefix(self) -> str:
        return self.visible.prefix

    def matches(self, event: CloudEvent) -> bool:
        if not event.name.startswith(self.visible.prefix):
            return False
        if event.to_device is not None:
            return event.to_device == self.recipient
        if is_system_name(event.name):
            return False
        if self.visible.matches(event):
            return True
        if self.visible.device_id is not None or self.product_id is None:
            return False
        if is_fleet_event(event, self.product_id):
            return True
        return self.customer_id is not None and event.customer_id == self.customer_id

    def routes(self) -> tuple[Route, ...]:
        prefix, owner = self.visible.prefix, self.visible.owner_id
        found: list[Route] = [(("to", self.recipient), prefix)]
        if not is_system_name(prefix):  # a "spark…" prefix can match no ordinary name
            if owner is not None:
                found.append((("owner-devices", owner), prefix))
            if self.visible.include_public:
                found.append((PUBLIC_TO_DEVICES, prefix))
            if self.product_id is not None and self.visible.device_id is None:
                found.append((("product-devices", self.product_id), prefix))
                if self.customer_id is not None:
                    found.append((("customer-devices", self.customer_id), prefix))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class AnyFilter:
    """
    The union of several filters: one bus subscription serves all of a device's Subscribe messages.
    """

    parts: tuple[EventFilter | DeviceFilter, ...]

    @property
    def prefix(self) -> str:
        return ",".join(part.prefix for part in self.parts)

    def matches(self, event: CloudEvent) -> bool:
        return any(part.matches(event) for part in self.parts)

    def routes(self) -> tuple[Route, ...]:
        return tuple(dict.fromkeys(route for part in self.parts for route in part.routes()))


@dataclass(frozen=True, slots=True)
class AllEvents:
    """
    Every event whatever its owner, except names starting with ``exclude`` (the cloud's own consumers,
    such as webhook delivery, subscribe with this; never a user-facing stream).
    """

    exclude: str = ""
    prefix: str = "*"

    def matches(self, event: CloudEvent) -> bool:
        return not (self.exclude and event.name.startswith(self.exclude))

    def routes(self) -> tuple[Route, ...]:
        return ((EVERYONE, ""),)


Filter = EventFilter | DeviceFilter | AnyFilter | AllEvents
