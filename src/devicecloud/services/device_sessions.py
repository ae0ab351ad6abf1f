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
- ``spark/status`` is published after the presence changed there, so whoever hears it reads the new state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo
from devicecloud.services.device_presence import DevicePresenceBook

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.store.interfaces import Store

logger = structlog.get_logger("devicecloud.devices")


class StatusHook(Protocol):
    """
    Publishes ``spark/status`` (`EventService.publish_status`); ``owner_id`` is the owner as just read.
    """

    async def __call__(
        self, device_id: str, online: bool, *, owner_id: int | Literal["unread"] | None = "unread"
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

    def __init__(self, *, store: Store, clock: Clock, policy: SessionPolicy) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        # Devices whose record has a name (names are never removed, records never deleted): filled from the
        # key check that precedes every connection; the others get one generated at connect.
        self._named: set[str] = set()
        # The owner each device had at its latest key check: its online status goes to that owner without
        # reading the record again (one entry per device id, like _named).
        self._owners: dict[str, int | None] = {}
        #: What this process's links learned; `DeviceService` reads through it, the store gets it behind.
        self.presence = DevicePresenceBook(
            store=store, clock=clock, flush_interval=policy.presence_flush_interval
        )
        # Set by the runtime to the events service: spark/status once the record says online/offline.
        self.on_status: StatusHook | None = None
        # Set by the runtime to the diagnostics service: vitals a device sent unasked (kept, written behind).
        self.on_vitals: Callable[[str, Mapping[str, Any]], None] | None = None

    async def check_device_key(
        self, device_id: str, offered_public_key_der: bytes, ip_address: str | None
    ) -> bytes | None:
        made_here = self.presence.first_connect_key(device_id)  # a first-connect record not written yet
        if made_here is not None:
            return self._known_key(device_id, made_here, offered_public_key_der, ip_address)
        try:
            async with asyncio.timeout(self._policy.key_check_timeout):
                known = await self._store.lookup_device(device_id)  # one point read (ADR 0010)
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
            if known.name is not None:
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
            known = await self._store.lookup_device(device_id)
            if known is None:
                self.presence.first_connect(device_id, None)
            elif known.name is not None:
                self._named.add(device_id)
            self._owners[device_id] = known.owner_id if known is not None else None
        product_id = hello.product_id if hello.product_id not in (None, 0, 0xFFFF) else None
        self.presence.connected(device_id, ip_address, platform_id=hello.platform_id, product_id=product_id)
        if device_id not in self._named and self.presence.name(device_id) is None:
            self.presence.give_name(device_id, self._owners[device_id])  # written behind, checked there
        logger.info("device online", device_id=device_id, ip=ip_address, platform_id=hello.platform_id)
        if self.on_status is not None:
            await self.on_status(device_id, True, owner_id=self._owners.get(device_id))

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
        logger.info("device offline", device_id=device_id)
        if known and self.on_status is not None:
            await self.on_status(device_id, False)

    async def close(self) -> None:
        """
        Write the presence still in memory (call after the gateway stopped, before the store closes).
        """
        await self.presence.close()

    async def reset_online_state(self) -> int:
        """
        At start-up no link exists yet: devices left online by a stopped process are offline.
        """
        async with self._store.transaction() as tx:
            return await tx.devices.set_all_offline(self._clock.now())
