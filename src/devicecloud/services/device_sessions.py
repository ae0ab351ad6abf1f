"""
What the gateway reports about device links, written down: keys, online state, last heard, describe.

Implements `services.ports.DeviceSessions`. Rules kept here:
- a device is accepted only with the key registered for it; an unknown device's offered key is recorded for
  an operator (``devicecloud keys pending|approve``), and accepted at once only when the server is set to
  accept unknown devices;
- a device gets a generated name on its first connection;
- presence (online, last IP address, last handshake, last heard) goes to `presence`, which this process
  reads first and the store gets written behind in batches (see `device_presence`): the handshake path
  makes no database write once a device has a name. ``spark/status`` is published after the presence
  changed there, so whoever hears it reads the new state;
- ``last_heard`` is kept on every message and written at most once per ``heard_interval`` seconds per
  device (and when it disconnects), so neither a chatty device nor keep-alives turn every message into a
  write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo
from devicecloud.services.device_names import free_name, generate_name
from devicecloud.services.device_presence import DevicePresenceBook

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.store.interfaces import Store, UnitOfWork

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
    # How stale last_heard may get in the database while a device is connected (exact at disconnect).
    heard_interval: float = 300.0
    # Seconds from a presence change to the batched write that takes it to the database.
    presence_flush_interval: float = 1.0


class DeviceSessionService:
    """
    The store side of device links (see `services.ports.DeviceSessions`).
    """

    def __init__(self, *, store: Store, clock: Clock, policy: SessionPolicy) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._last_heard_write: dict[str, float] = {}
        # Devices whose record exists with a name (names are never removed, records never deleted): their
        # connection needs no transaction. Filled from the key check that precedes every connection.
        self._named: set[str] = set()
        # The owner each device had at its latest key check: its online status goes to that owner without
        # reading the record again (one entry per device id, like _named).
        self._owners: dict[str, int | None] = {}
        #: This process's view of its devices' presence; `DeviceService` reads through it.
        self.presence = DevicePresenceBook(
            store=store, clock=clock, flush_interval=policy.presence_flush_interval
        )
        # Set by the runtime to the events service: spark/status once the record says online/offline.
        self.on_status: StatusHook | None = None

    async def check_device_key(
        self, device_id: str, offered_public_key_der: bytes, ip_address: str | None
    ) -> bytes | None:
        known = await self._store.lookup_device(device_id)  # the common case, on the one-statement path
        if known is not None and known.name is not None:
            self._named.add(device_id)
        if known is not None:
            self._owners[device_id] = known.owner_id
        if known is not None and known.public_key_der:
            if known.public_key_der != offered_public_key_der:
                logger.warning("device offered a different key", device_id=device_id, ip=ip_address)
            return known.public_key_der
        now = self._clock.now()
        async with self._store.transaction() as tx:
            device = await tx.devices.get(device_id)
            if device is not None and device.public_key_der:
                if device.public_key_der != offered_public_key_der:
                    logger.warning("device offered a different key", device_id=device_id, ip=ip_address)
                return device.public_key_der
            if self._policy.accept_unknown_devices:
                if device is None:
                    await tx.devices.add(device_id, now=now, public_key=offered_public_key_der)
                else:
                    await tx.devices.update(device_id, public_key=offered_public_key_der, updated_at=now)
                await tx.pending_keys.delete(device_id)
                logger.info("accepted unknown device on first handshake", device_id=device_id, ip=ip_address)
                return offered_public_key_der
            await tx.pending_keys.record(device_id, offered_public_key_der, ip_address, now)
        logger.warning(
            "unknown device refused; its key awaits approval (devicecloud keys pending)",
            device_id=device_id,
            ip=ip_address,
        )
        return None

    async def device_connected(self, device_id: str, ip_address: str | None, hello: DeviceHelloInfo) -> None:
        if device_id not in self._named or device_id not in self._owners:  # first connection: name it
            now = self._clock.now()
            async with self._store.transaction() as tx:
                device = await tx.devices.get(device_id)
                if device is None:
                    device = await tx.devices.add(device_id, now=now)
                if device.name is None:
                    name = await self._free_name(tx, device.owner_id)
                    await tx.devices.update(device_id, name=name, updated_at=now)
            self._named.add(device_id)
            self._owners[device_id] = device.owner_id
        product_id = hello.product_id if hello.product_id not in (None, 0, 0xFFFF) else None
        self.presence.connected(device_id, ip_address, platform_id=hello.platform_id, product_id=product_id)
        self._last_heard_write[device_id] = self._clock.monotonic()
        logger.info("device online", device_id=device_id, ip=ip_address, platform_id=hello.platform_id)
        if self.on_status is not None:
            await self.on_status(device_id, True, owner_id=self._owners.get(device_id))

    async def device_described(self, device_id: str, description: DeviceDescription) -> None:
        async with self._store.transaction() as tx:
            device = await tx.devices.get(device_id)
            if device is None:
                return
            describe = dict(device.describe)
            if description.functions is not None:
                describe["functions"] = list(description.functions)
            if description.variables is not None:
                describe["variables"] = dict(description.variables)
            if description.modules is not None:
                describe["modules"] = description.modules
            changes: dict[str, Any] = {"describe": describe, "updated_at": self._clock.now()}
            if description.system_firmware_version is not None:
                changes["system_firmware_version"] = description.system_firmware_version
            await tx.devices.update(device_id, **changes)

    async def device_heard(self, device_id: str) -> None:
        # Kept in memory on every message; written at most once per heard_interval and at disconnect.
        # (Writing on every keep-alive cost ~2 ms of CPU per device and ping: 10,000 idle devices saturated
        # a core.)
        moment = self._clock.monotonic()
        last = self._last_heard_write.get(device_id)
        write = last is None or moment - last >= self._policy.heard_interval
        if write:
            self._last_heard_write[device_id] = moment
        self.presence.heard(device_id, write=write)

    async def device_disconnected(self, device_id: str) -> None:
        self._last_heard_write.pop(device_id, None)
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

    @staticmethod
    async def _free_name(tx: UnitOfWork, owner_id: int | None) -> str:
        if owner_id is None:  # names are unique per owner; an unowned device takes any
            return generate_name()
        return await free_name(lambda candidate: tx.devices.name_taken(owner_id, candidate))
