"""
What the gateway reports about device links, written down: keys, online state, last heard, describe.

Implements `services.ports.DeviceSessions`. Rules kept here:
- a device is accepted only with the key registered for it; an unknown device's offered key is recorded for
  an operator (``devicecloud keys pending|approve``), and accepted at once only when the server is set to
  accept unknown devices;
- a device gets a generated name on its first connection;
- nothing on a device's path writes to the database: presence, last heard (on every message), Describes,
  generated names, first-connect records and offered keys go to `presence`, which this process reads
  first and the store gets written behind in batches (see `device_presence`). The one database access of a
  connection is the key check's read (ADR 0010), bounded by ``key_check_timeout``: a database that does
  not answer in time refuses that handshake (the device retries) rather than failing the link;
- ``spark/status`` is published after the presence changed there, so whoever hears it reads the new state;
- products (issue 11 section 3): a device denied by its product is refused at the key check (its membership
  comes with that same read); a Hello naming a product (not its platform) makes a device that is in no
  product join it — quarantined when the product's ``settings.quarantine`` is on — and records its product
  firmware version, written behind like the rest. The product's setting comes from a small cache
  (`PRODUCT_CACHE_TTL`), so a connection reads a product at most once per interval;
- a product device that is neither quarantined nor denied is handed, once its status is out, to the
  `watcher` (the firmware rollout, which decides about its firmware later, off this path), and so is its
  disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo, ProductMembership
from devicecloud.domain.product_devices import ProductReport
from devicecloud.services.device_presence import DevicePresenceBook

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.services.usage import UsageBook
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.devices")

PRODUCT_CACHE_TTL = 5.0  # seconds a product's quarantine setting is reused by connecting devices


class LinkWatcher(Protocol):
    """
    Told of product devices' links in memory, without I/O (the firmware rollout, decision 0025).
    """

    def connected(
        self, device_id: str, product_id: int, firmware_version: int | None, *, joined: bool
    ) -> None:
        """
        ``joined``: the device joined the product with this Hello (its row may not be written yet).
        """
        ...

    def disconnected(self, device_id: str) -> None: ...


class StatusHook(Protocol):
    """
    Publishes ``spark/status`` (`EventService.publish_status`); ``owner_id`` and ``membership`` are the
    owner and product membership as just read.
    """

    async def __call__(
        self,
        device_id: str,
        online: bool,
        *,
        owner_id: int | Literal["unread"] | None = "unread",
        membership: ProductMembership | Literal["unread"] | None = "unread",
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    accept_unknown_devices: bool = False
    # Seconds from a change (presence, heard, Describe, name, record) to the batched write that stores it.
    presence_flush_interval: float = 1.0
    # Seconds the key check waits for the database before it refuses the handshake (the device retries).
    key_check_timeout: float = 30.0


class DeviceSessionService:
    """
    The store side of device links (see `services.ports.DeviceSessions`).
    """

    def __init__(
        self, *, store: Store, clock: Clock, policy: SessionPolicy, node_id: str | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        # Devices whose record has a name (names are never removed, records never deleted): filled from the
        # key check that precedes every connection; the others get one generated at connect.
        self._named: set[str] = set()
        # The owner each device had at its latest key check: its online status goes to that owner without
        # reading the record again (one entry per device id, like _named).
        self._owners: dict[str, int | None] = {}
        # The session epoch each device's record had at its key check, until its Hello: its link's is later.
        self._epochs: dict[str, int] = {}
        # The product membership each device had at its latest key check (None: in no product).
        self._members: dict[str, ProductMembership | None] = {}
        # product id → (valid until, its quarantine setting; None: no such product)
        self._products: dict[int, tuple[float, bool | None]] = {}
        self._reading: dict[int, asyncio.Future[bool | None]] = {}  # product reads in flight
        #: What this process's links learned; `DeviceService` reads through it, the store gets it behind.
        self.presence = DevicePresenceBook(
            store=store, clock=clock, flush_interval=policy.presence_flush_interval, node_id=node_id
        )
        # Set by the runtime to the events service: spark/status once the record says online/offline.
        self.on_status: StatusHook | None = None
        # Set by the runtime to the diagnostics service: vitals a device sent unasked (kept, written behind).
        self.on_vitals: Callable[[str, Mapping[str, Any]], None] | None = None
        # Set by the runtime to the firmware rollout: product devices' links, after their status is out.
        self.watcher: LinkWatcher | None = None
        # Set by the runtime to the usage book: a connection counts the device for its accounts' day.
        self.usage: UsageBook | None = None

    async def check_device_key(
        self, device_id: str, offered_public_key_der: bytes, ip_address: str | None
    ) -> bytes | None:
        made_here = self.presence.first_connect_key(device_id)  # a first-connect record not written yet
        if made_here is not None:
            return self._known_key(device_id, made_here, offered_public_key_der, ip_address)
        try:  # one point read (ADR 0010)
            known = await self._store.lookup_device_key(device_id, timeout=self._policy.key_check_timeout)
        except Exception:
            logger.warning(
                "device key check failed: the database did not answer; the device will retry",
                device_id=device_id,
                ip=ip_address,
                exc_info=True,
            )
            return None
        if known is not None:
            self._owners[device_id] = known.owner_id
            self.presence.stored_describe(device_id, known.describe, known.system_firmware_version)
            if known.session_epoch is not None:
                self._epochs[device_id] = known.session_epoch
            self._members[device_id] = known.membership
            if known.membership is not None and known.membership.denied:
                logger.warning("device refused: its product denied it", device_id=device_id, ip=ip_address)
                return None
            if known.named:
                self._named.add(device_id)
            if known.public_key_der:
                return self._known_key(device_id, known.public_key_der, offered_public_key_der, ip_address)
        else:
            self._owners[device_id] = None
        if self._policy.accept_unknown_devices:
            self.presence.first_connect(device_id, offered_public_key_der)
            logger.info("accepted unknown device on first handshake", device_id=device_id, ip=ip_address)
            return offered_public_key_der
        self.presence.offered_key(device_id, offered_public_key_der, ip_address)
        logger.warning(
            "unknown device refused; its key awaits approval (devicecloud keys pending)",
            device_id=device_id,
            ip=ip_address,
        )
        return None

    @staticmethod
    def _known_key(device_id: str, known: bytes, offered: bytes, ip_address: str | None) -> bytes:
        if known != offered:
            logger.warning("device offered a different key", device_id=device_id, ip=ip_address)
        return known

    async def device_connected(self, device_id: str, ip_address: str | None, hello: DeviceHelloInfo) -> None:
        if device_id not in self._owners:  # no key check in this process (a direct report): read it once
            known = await self._store.lookup_device_key(device_id)
            if known is None:
                self.presence.first_connect(device_id, None)
            else:
                if known.named:
                    self._named.add(device_id)
                if known.session_epoch is not None:
                    self._epochs[device_id] = known.session_epoch
            self._owners[device_id] = known.owner_id if known is not None else None
            self._members[device_id] = known.membership if known is not None else None
        product_id = hello.product_id if hello.product_id not in (None, 0, 0xFFFF) else None
        self.presence.connected(
            device_id,
            ip_address,
            platform_id=hello.platform_id,
            product_id=product_id,
            after_epoch=self._epochs.pop(device_id, None),
        )
        version = hello.product_firmware_version
        running = None if version in (None, 0xFFFF) or product_id in (None, hello.platform_id) else version
        was_member = self._members.get(device_id) is not None
        if product_id is not None and product_id != hello.platform_id:  # product firmware names its product
            await self._report_product(device_id, product_id, running)
        if device_id not in self._named and self.presence.name(device_id) is None:
            self.presence.give_name(device_id, self._owners[device_id])  # written behind, checked there
        if self.usage is not None:
            self.usage.connected(device_id)
        logger.info("device online", device_id=device_id, ip=ip_address, platform_id=hello.platform_id)
        membership = self._members.get(device_id)
        if self.on_status is not None:
            await self.on_status(device_id, True, owner_id=self._owners.get(device_id), membership=membership)
        takes_firmware = membership is not None and not (membership.quarantined or membership.denied)
        if self.watcher is not None and membership is not None and takes_firmware:
            self.watcher.connected(device_id, membership.product_id, running, joined=not was_member)

    async def _report_product(self, device_id: str, product_id: int, firmware_version: int | None) -> None:
        membership = self._members.get(device_id)
        if membership is not None and membership.product_id != product_id:
            return  # a device of another product: its product decides, not its firmware
        quarantined = False
        if membership is None:
            quarantine = await self._quarantine_setting(product_id)
            if quarantine is None:
                return  # no such product here
            quarantined = quarantine
            self._members[device_id] = ProductMembership(
                product_id, firmware_version, quarantined=quarantined
            )
            logger.info(
                "device joins its product",
                device_id=device_id,
                product_id=product_id,
                quarantined=quarantined,
            )
        elif membership.firmware_version == firmware_version:
            return
        else:  # what the device runs now, for its status event (the row is written behind)
            self._members[device_id] = replace(membership, firmware_version=firmware_version)
        self.presence.product_reported(ProductReport(device_id, product_id, firmware_version, quarantined))

    async def _quarantine_setting(self, product_id: int) -> bool | None:
        """
        The product's ``settings.quarantine`` (None: no such product), cached for `PRODUCT_CACHE_TTL`; the
        devices of a product that connect together share one read.
        """
        cached = self._products.get(product_id)
        if cached is not None and cached[0] > self._clock.monotonic():
            return cached[1]
        reading = self._reading.get(product_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_quarantine(product_id))
            self._reading[product_id] = reading
            reading.add_done_callback(lambda _done: self._reading.pop(product_id, None))
        return await asyncio.shield(reading)

    async def _read_quarantine(self, product_id: int) -> bool | None:
        try:
            async with asyncio.timeout(self._policy.key_check_timeout):
                async with self._store.transaction(readonly=True) as tx:
                    product = await tx.products.get(product_id)
        except Exception:
            logger.warning("product lookup failed; the device joins it on a later connection", exc_info=True)
            return None
        quarantine = product.quarantine if product is not None else None
        if len(self._products) >= 10_000:
            self._products.clear()
        self._products[product_id] = (self._clock.monotonic() + PRODUCT_CACHE_TTL, quarantine)
        return quarantine

    def forget_product(self, product_id: int) -> None:
        """
        A product's settings changed (or it was made): the next connection reads them again.
        """
        self._products.pop(product_id, None)

    async def device_described(self, device_id: str, description: DeviceDescription) -> None:
        self.presence.described(device_id, description)

    def device_heard(self, device_id: str) -> None:
        # In memory on every message, written by the next flush: a keep-alive sends no statement.
        self.presence.heard(device_id)

    def device_vitals(self, device_id: str, vitals: Mapping[str, Any]) -> None:
        if self.on_vitals is not None:
            self.on_vitals(device_id, vitals)

    async def device_disconnected(self, device_id: str) -> None:
        known = self.presence.disconnected(device_id)
        if self.watcher is not None:
            self.watcher.disconnected(device_id)
        logger.info("device offline", device_id=device_id)
        if known and self.on_status is not None:
            await self.on_status(device_id, False)

    async def close(self) -> None:
        """
        Write the presence still in memory (call after the gateway stopped, before the store closes).
        """
        await self.presence.close()
