"""
Events: publish from the API and from devices, subscribe (streams and device subscriptions), special events.

Rules kept here:
- names are 1–64 characters without control characters, data at most 1,024 bytes, both valid text, for the
  API and devices alike (`check_event`; a device's bytes must be strict UTF-8); the API publishes with the
  caller as owner and ``coreid`` "api"; a device publishes as its owner, with its id as ``coreid``;
- nothing that cannot be encoded reaches the bus, whoever made it: such an event is dropped, logged and
  counted (``statistics()["dropped"]``), so no stream, device link or webhook ever has to choke on it;
- who sees what is `EventFilter`'s business: an owner sees everything of theirs, others only public events;
  ``/v1/devices/events`` shows only the caller's own; a product's streams see every event of its devices
  (and those published for it), whoever owns them;
- a product device's events carry its product (``productID``), and the product's customer that owns the
  device if one does: the device → (product, customer) membership is cached like the owner, read once per
  device and connection, never per event; the product-device doors call `forget_product` when membership
  changes, and claims, releases and customer deletions `forget_device` (on every node, through the bus's
  ``owner`` note);
- a product's customer streams only the events of its own devices in that product (`EventFilter.customer_id`),
  on ``/v1/devices/events``, ``/v1/devices/:id/events`` and ``/v1/events/:prefix`` alike: never another
  customer's, the product's other devices', nor other accounts' public events (decision 0032);
- devices are sent ordinary events under the same rules, but a system event (``spark…``, ``particle…``)
  only when the cloud addresses it to that device (`publish_to_device`; `DeviceFilter`, decision 0012):
  ``spark/status`` and a device's own system events go to streams and webhooks, never to its siblings. A
  device's feed is lossy (NON by protocol): past ``max_pending`` events it loses them, never its link;
- a device may publish 1 event/s on average with bursts of 4 (a token bucket per device, on the injected
  clock); what exceeds is refused, never queued;
- events go to the bus after the change that caused them is committed (``spark/status`` after the device
  record says online/offline).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import structlog

from devicecloud.domain.access import CUSTOMER_ACTIONS, ProductPrincipal
from devicecloud.domain.events import (
    API_COREID,
    DEFAULT_TTL,
    INTERNAL_COREID,
    MAX_DATA_LENGTH,
    MAX_NAME_LENGTH,
    AllEvents,
    AnyFilter,
    CloudEvent,
    DeviceFilter,
    EventFilter,
    Filter,
    loggable,
)
from devicecloud.domain.text import is_valid_text
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied
from devicecloud.services.product_access import access_product

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import EventBus, IntakeSubscription, Subscription
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.accounts import User
    from devicecloud.domain.devices import ProductMembership
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.usage import UsageBook
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.events")

StreamScope = Literal["all", "mine", "device"]
Membership = tuple[int, int | None, int | None]  # (product id, product firmware version, customer id)
STATUS_EVENT = "spark/status"
MAX_TTL = 16_777_215  # what the protocol's Max-Age option (3 bytes) can carry


@dataclass(frozen=True, slots=True)
class EventPolicy:
    device_rate: float = 1.0
    device_burst: int = 4
    max_pending: int = 1000


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")
_DEVICE_ID = re.compile(r"^[0-9a-f]{24}$")


def check_event(name: Any, data: Any, ttl: Any) -> tuple[str, str | None, int]:
    """
    A valid (name, data, ttl) triple, or `InvalidInput` in the API's words.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput("The event name is required", code="Event name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"Event names are at most {MAX_NAME_LENGTH} characters", code="Event name too long"
        )
    if _CONTROL_CHARACTER.search(name):
        raise InvalidInput("Event names may not contain control characters", code="Invalid event name")
    if not is_valid_text(name):
        raise InvalidInput("The event name is not valid Unicode text", code="Invalid event name")
    if data is not None and not isinstance(data, str):
        data = str(data)
    if data is not None:
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate
            message = "The event data is not valid Unicode text"
            raise InvalidInput(message, code="Invalid event data") from None
        if size > MAX_DATA_LENGTH:
            raise InvalidInput(f"Event data is at most {MAX_DATA_LENGTH} bytes", code="Event data too long")
    if ttl in (None, ""):
        ttl = DEFAULT_TTL
    try:
        ttl = int(ttl)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("ttl must be a whole number of seconds", code="invalid_ttl") from exc
    if not 0 <= ttl <= MAX_TTL:
        raise InvalidInput(f"ttl must be between 0 and {MAX_TTL}", code="invalid_ttl")
    return name, data, ttl


def is_private(value: Any) -> bool:
    """
    The API's reading of ``private``: truthy unless empty, false, 0 or absent.
    """
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "off")
    return bool(value)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class EventService:
    """
    The event rules; the bus only carries.
    """

    def __init__(
        self, *, store: Store, clock: Clock, bus: EventBus, devices: DeviceService, policy: EventPolicy
    ) -> None:
        self._store = store
        self._clock = clock
        self._bus = bus
        self._devices = devices
        self._policy = policy
        self._buckets: dict[str, _Bucket] = {}
        self._owners: dict[str, int | None] = {}
        self._products: dict[str, Membership | None] = {}
        self._dropped = 0
        #: Set by the runtime: events devices publish are counted there (decision 0026).
        self.usage: UsageBook | None = None

    # ------------------------------------------------------------------ publishing

    async def publish_from_api(self, user: User, name: Any, data: Any, private: Any, ttl: Any) -> CloudEvent:
        """
        ``POST /v1/devices/events``.
        """
        event = self._api_event(name, data, private, ttl, owner_id=user.id)
        await self._emit(event)
        return event

    def _api_event(
        self,
        name: Any,
        data: Any,
        private: Any,
        ttl: Any,
        *,
        owner_id: int | None,
        product_id: int | None = None,
    ) -> CloudEvent:
        """A checked event published through the API (``coreid`` = the API's), for an owner or a product."""
        name, data, ttl = check_event(name, data, ttl)
        return CloudEvent(
            name=name,
            data=data,
            ttl=ttl,
            published_at=self._clock.now(),
            coreid=API_COREID,
            public=not is_private(private),
            owner_id=owner_id,
            product_id=product_id,
        )

    async def publish_for_product(
        self, principal: AnyPrincipal, product_ref: str, name: Any, data: Any, private: Any, ttl: Any
    ) -> CloudEvent:
        """
        ``POST /v1/products/:p/events``: an event of the product (no owner), seen by its streams.
        """
        async with self._store.transaction(readonly=True) as tx:
            found = await access_product(tx, principal, product_ref, "events:send", "event")
        event = self._api_event(name, data, private, ttl, owner_id=None, product_id=found.product.id)
        await self._emit(event)
        return event

    async def publish_for_product_internal(self, product_id: int, name: str, data: str) -> CloudEvent | None:
        """
        An event the cloud makes about a product itself (``particle/firmware/create``, ``…/release``):
        private, no owner, ``coreid`` "api" as the hosted cloud sends them; the product's streams see it.
        """
        event = CloudEvent(
            name=name,
            data=data,
            ttl=DEFAULT_TTL,
            published_at=self._clock.now(),
            coreid=API_COREID,
            public=False,
            owner_id=None,
            product_id=product_id,
        )
        return event if await self._emit(event) else None

    async def publish_from_device(
        self, device_id: str, name: str, data: bytes | str | None, *, private: bool, ttl: int
    ) -> CloudEvent | None:
        """
        A device's event, under the API's rules (`check_event`; ``bytes`` data must be strict UTF-8).

        Returns:
            The event, or ``None`` (and nothing published) past the device's rate limit.

        Raises:
            InvalidInput: the event breaks the rules (the gateway refuses it to the device).
        """
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("The event data is not UTF-8", code="Invalid event data") from exc
        # Max-Age may carry more than the API allows; a long ttl is no reason to refuse an event.
        name, data, ttl = check_event(name, data, min(ttl, MAX_TTL))
        if not self._take_token(device_id):
            return None
        product, version, customer = await self.membership_of(device_id)
        event = CloudEvent(
            name=name,
            data=data,
            ttl=ttl,
            published_at=self._clock.now(),
            coreid=device_id,
            public=not private,
            owner_id=await self.owner_of(device_id),
            device_id=device_id,
            product_id=product,
            product_version=version,
            customer_id=customer,
        )
        if await self._emit(event) and self.usage is not None:
            self.usage.event(device_id, len(name.encode()) + len((data or "").encode()))
        return event

    async def publish_status(
        self,
        device_id: str,
        online: bool,
        *,
        owner_id: int | Literal["unread"] | None = "unread",
        membership: ProductMembership | Literal["unread"] | None = "unread",
    ) -> None:
        """
        ``spark/status`` online/offline, private to the device's owner, after the presence changed.

        Args:
            device_id: the device.
            online: which of the two.
            owner_id: the owner as the caller just read it for this connection (the gateway's key check
                reads the record anyway); it replaces the cached owner. ``"unread"``: online reads the
                owner afresh; offline uses the owner the connection's events went to (the cache, which
                claims and unclaims here clear).
            membership: the product membership likewise (``None``: in no product); it replaces the cached
                one, so a connection costs one read, the key check's. ``"unread"``: as for the owner.
        """
        if owner_id != "unread":
            self._owners[device_id] = owner_id
        elif online:
            self.forget_owner(device_id)
        if membership != "unread":
            self._products[device_id] = _membership_key(membership)
        elif online:  # a connection reads membership afresh: another process may have changed it
            self.forget_product(device_id)
        owner = await self.owner_of(device_id)
        product, version, customer = await self.membership_of(device_id)
        await self._emit(
            CloudEvent(
                name=STATUS_EVENT,
                data="online" if online else "offline",
                ttl=DEFAULT_TTL,
                published_at=self._clock.now(),
                coreid=device_id,
                public=False,
                owner_id=owner,
                device_id=device_id,
                product_id=product,
                product_version=version,
                customer_id=customer,
            )
        )

    async def publish_device_system(
        self, device_id: str, name: str, data: str, *, owner_id: int | None, product_id: int | None = None
    ) -> None:
        """
        A system event in the device's name that the cloud produced for it (the vitals' update event after
        the cloud asked for them): ``coreid`` is the device, private to ``owner_id`` (and seen by the streams
        of ``product_id``), outside the device's publish limit (the device did not spend it).
        """
        await self._emit(
            CloudEvent(
                name=name,
                data=data,
                ttl=DEFAULT_TTL,
                published_at=self._clock.now(),
                coreid=device_id,
                public=False,
                owner_id=owner_id,
                device_id=device_id,
                product_id=product_id,
            )
        )

    async def publish_internal(
        self,
        name: str,
        data: str | None,
        *,
        owner_id: int | None,
        device_id: str | None = None,
        public: bool = False,
        product_id: int | None = None,
        to_device: str | None = None,
    ) -> CloudEvent | None:
        """
        An event the cloud itself makes (``spark/flash/status``, ``hook-sent/…``, ``hook-response/…``):
        ``coreid`` is "particle-internal", as the catalogue gives it; it belongs to ``owner_id`` (and to
        ``product_id``: a product hook's events reach the product's streams).

        Returns:
            The event, or ``None`` when its text cannot be encoded (dropped and logged, see `_emit`).
        """
        event = CloudEvent(
            name=name,
            data=data,
            ttl=DEFAULT_TTL,
            published_at=self._clock.now(),
            coreid=INTERNAL_COREID,
            public=public,
            owner_id=owner_id,
            device_id=device_id,
            product_id=product_id,
            to_device=to_device,
        )
        return event if await self._emit(event) else None

    async def publish_to_device(
        self, device_id: str, name: str, data: str | None, *, ttl: int = DEFAULT_TTL
    ) -> CloudEvent | None:
        """
        An event the cloud addresses to one device (``particle/device/updates/pending``, a claim
        acknowledgement, an answer to the device's own request): of all device subscriptions only that
        device's receive it, if their prefix matches (system names included); its owner's streams and
        webhooks see it as a private event of the device, ``coreid`` "particle-internal".

        Returns:
            The event, or ``None`` when its text cannot be encoded (dropped and logged, see `_emit`).
        """
        event = CloudEvent(
            name=name,
            data=data,
            ttl=ttl,
            published_at=self._clock.now(),
            coreid=INTERNAL_COREID,
            public=False,
            owner_id=await self.owner_of(device_id),
            device_id=device_id,
            to_device=device_id,
            product_id=(await self.product_of(device_id))[0],
        )  # `_emit` adds the device's customer
        return event if await self._emit(event) else None

    async def _emit(self, event: CloudEvent) -> bool:
        """
        The one way onto the bus. An event whose name or data cannot be encoded would break every stream
        and device link it matches; it is dropped here instead (False), with a log line and a count.

        An event about a device, of that device's product (its vitals, a flash status, a product hook's
        answer...), is its customer's too: the device's customer, if it has one, is filled in here.
        """
        if event.device_id is not None and event.product_id is not None and event.customer_id is None:
            product, _, customer = await self.membership_of(event.device_id)
            if customer is not None and product == event.product_id:
                event = replace(event, customer_id=customer)
        if is_valid_text(event.name) and (event.data is None or is_valid_text(event.data)):
            await self._bus.publish(event)
            return True
        self._dropped += 1
        logger.warning(
            "event dropped: its text cannot be encoded",
            event_name=loggable(event.name),
            coreid=event.coreid,
            owner_id=event.owner_id,
        )
        return False

    def statistics(self) -> dict[str, int]:
        """
        Running totals: ``dropped`` = events refused at the bus because their text cannot be encoded.
        """
        return {"dropped": self._dropped}

    def _take_token(self, device_id: str) -> bool:
        now = self._clock.monotonic()
        bucket = self._buckets.get(device_id)
        burst = float(self._policy.device_burst)
        if bucket is None:
            bucket = self._buckets[device_id] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * self._policy.device_rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    # ------------------------------------------------------------------ owners (cached: read on every event)

    async def owner_of(self, device_id: str) -> int | None:
        if device_id in self._owners:
            return self._owners[device_id]
        device = await self._store.lookup_device(device_id)  # the one-statement hot path, not a unit of work
        owner = device.owner_id if device is not None else None
        self._owners[device_id] = owner
        return owner

    def forget_owner(self, device_id: str) -> None:
        """
        Drop the cached owner (claims, unclaims and reconnects call this).
        """
        self._owners.pop(device_id, None)  # rate-limit buckets survive reconnects on purpose

    async def product_of(self, device_id: str) -> tuple[int | None, int | None]:
        """
        (product id, product firmware version) of a product device, (None, None) for others; cached.
        """
        product, version, _ = await self.membership_of(device_id)
        return product, version

    async def membership_of(self, device_id: str) -> tuple[int | None, int | None, int | None]:
        """
        (product id, product firmware version, customer id) of a product device, (None, None, None) for
        others; cached.
        """
        if device_id in self._products:
            found = self._products[device_id]
        else:
            found = await self._store.lookup_membership(device_id)  # one point read, as for the owner
            self._products[device_id] = found
        return found if found is not None else (None, None, None)

    def forget_product(self, device_id: str) -> None:
        """
        Drop the cached product membership (product-device import, removal and connects call this).
        """
        self._products.pop(device_id, None)

    def forget_device(self, device_id: str) -> None:
        """
        Drop the cached owner and membership (with its customer): a device changed hands (a claim, a
        release, a customer's deletion), on this node or, through the bus's ``owner`` note, another.
        """
        self.forget_owner(device_id)
        self.forget_product(device_id)

    # ------------------------------------------------------------------ subscribing

    async def stream(
        self, user: User | ProductPrincipal, scope: StreamScope, prefix: str, device_ref: str | None = None
    ) -> Subscription:
        """
        A subscription for an SSE stream. ``device`` scope checks the device is the caller's. A product's
        customer (``user`` a customer's `ProductPrincipal`) sees its own devices' events on every scope.
        """
        if scope == "all" and not prefix:
            raise InvalidInput(
                "An event name prefix is required on /v1/events", code="event prefix filter is required"
            )
        if isinstance(user, ProductPrincipal):
            event_filter = await self._customer_filter(
                user, prefix, device_ref if scope == "device" else None
            )
        elif scope == "all":
            event_filter = EventFilter(prefix=prefix, owner_id=user.id, include_public=True)
        elif scope == "mine":
            event_filter = EventFilter(prefix=prefix, owner_id=user.id)
        else:
            if device_ref is None:
                raise PermissionDenied("Permission Denied", code="Permission Denied")
            device = await self._devices.access_device(user, device_ref, "events:get")
            if device.owner_id != user.id and device.membership is not None:
                # A product device reached through the caller's team: its events, as the product's stream
                # has them (the owner filter would leave the stream empty).
                event_filter = EventFilter(
                    prefix=prefix, product_id=device.membership.product_id, device_id=device.id
                )
            else:
                event_filter = EventFilter(prefix=prefix, owner_id=user.id, device_id=device.id)
        subscription = self._bus.subscribe(event_filter, max_pending=self._policy.max_pending)
        await self._bus.subscribed()  # a publish through another node right after the stream opens arrives
        return subscription

    async def _customer_filter(
        self, customer: ProductPrincipal, prefix: str, device_ref: str | None
    ) -> EventFilter:
        """
        A customer's stream: the events of the devices it owns in its product (one of them, by id or name,
        for ``device_ref``; `PermissionDenied` for any other, as on the customer's other device routes).
        Other accounts' public events are not a customer's: it is a person of the product's app, not a
        user of the cloud (decision 0032).
        """
        if (
            customer.kind != "customer"
            or customer.customer_id is None
            or "events:get" not in CUSTOMER_ACTIONS
        ):
            raise PermissionDenied("API users are not allowed to call this endpoint", code="unauthorized")
        device_id = None
        if device_ref is not None:
            device_id = (await self._devices.access_device(customer, device_ref, "events:get")).id
        return EventFilter(
            prefix=prefix,
            product_id=customer.product_id,
            customer_id=customer.customer_id,
            device_id=device_id,
        )

    async def product_stream(
        self, principal: AnyPrincipal, product_ref: str, prefix: str, device_ref: str | None = None
    ) -> Subscription:
        """
        ``GET /v1/products/:p/events[/:prefix]``: every event of the product's devices and of the product;
        ``/v1/products/:p/devices/:id/events[/:prefix]``: one product device's (by id; `NotFound` for a device
        that is not the product's, as for one that does not exist).
        """
        async with self._store.transaction(readonly=True) as tx:
            found = await access_product(tx, principal, product_ref, "events:get", "event")
        device_id = None
        if device_ref is not None:
            device_id = device_ref.lower()
            membership = (
                await self._store.lookup_membership(device_id) if _DEVICE_ID.match(device_id) else None
            )
            if membership is None or membership[0] != found.product.id:
                raise NotFound("Device not found", code="Not Found")
        event_filter = EventFilter(prefix=prefix, product_id=found.product.id, device_id=device_id)
        subscription = self._bus.subscribe(event_filter, max_pending=self._policy.max_pending)
        await self._bus.subscribed()
        return subscription

    def everything(self, *, max_pending: int, exclude: str = "hook-") -> IntakeSubscription:
        """
        All events of every owner but those named ``exclude…``: for the cloud's own consumers (webhooks),
        never for a user's stream. Across nodes each event reaches one node's intake (`EventBus.intake`).
        """
        return self._bus.intake(AllEvents(exclude=exclude), max_pending=max_pending)

    async def device_feed(
        self, device_id: str, wanted: Sequence[tuple[str, StreamScope, str | None]]
    ) -> Subscription | None:
        """
        One subscription for all of a device's Subscribe messages (``(prefix, scope, from_device)`` each),
        under the same visibility rules as `device_subscription`. It is lossy: a device that falls
        ``max_pending`` events behind loses events, not its feed. Subscribing is the last step, with no
        await after it: the gateway swaps an old feed for the new one on that promise.
        """
        owner = await self.owner_of(device_id)
        product, _, customer = await self.membership_of(device_id)
        parts = tuple(
            self._device_filter(device_id, owner, prefix, scope, from_device, product, customer)
            for prefix, scope, from_device in wanted
        )
        if not parts:
            return None
        event_filter: Filter = parts[0] if len(parts) == 1 else AnyFilter(parts)
        return self._bus.subscribe(event_filter, max_pending=self._policy.max_pending, lossy=True)

    @staticmethod
    def _device_filter(
        device_id: str,
        owner: int | None,
        prefix: str,
        scope: StreamScope,
        from_device: str | None,
        product: int | None = None,
        customer: int | None = None,
    ) -> DeviceFilter:
        # An unowned device's "mine" covers nobody's ordinary events, only those addressed to it; a product
        # device's covers what its product publishes, and a customer's device its customer's devices' events.
        visible = EventFilter(
            prefix=prefix,
            owner_id=owner,
            include_public=scope != "mine",
            device_id=from_device if scope == "device" else None,
        )
        return DeviceFilter(recipient=device_id, visible=visible, product_id=product, customer_id=customer)

    async def device_subscription(
        self, device_id: str, prefix: str, scope: StreamScope, from_device: str | None = None
    ) -> Subscription | None:
        """
        What a device receives for its Subscribe: ``all`` = public events plus its owner's, ``mine`` = its
        owner's, ``device`` = that one device's (if visible). A device nobody owns sees public events only.
        System events (``spark…``, ``particle…``) only when addressed to the device, whatever the scope.
        """
        return await self.device_feed(device_id, [(prefix, scope, from_device)])


def _membership_key(membership: ProductMembership | None) -> Membership | None:
    """What `membership_of` keeps of a device's product membership (what `Store.lookup_membership` reads)."""
    if membership is None:
        return None
    return membership.product_id, membership.firmware_version, membership.customer_id
