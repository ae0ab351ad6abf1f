"""
Devices as their owners use them: list, look up, call, read, ping, signal, rename, notes, claim, unclaim.

Rules kept here:
- `access_device` is the one ownership check. A device that does not exist and a device of someone else
  give the same `PermissionDenied`, so ids cannot be probed. A product device also answers to its
  product's team, by role (issue 11 section 3; only then is a role read); a quarantined one only to reads.
  A product's customer (issue 11 section 6) reaches only the admitted product devices it claimed with its
  claim codes (``product_devices.customer_id``), with `CUSTOMER_ACTIONS`; such a device has no user owner
  and cannot be claimed by id or by another code until the team releases it or the customer is deleted.
- A function or variable the device's stored Describe lacks is asked for again once (Device OS 0.x may
  have answered before its application registered anything) and refused only if it is still missing; an
  offline device is not asked, and a device is asked at most once per `REDESCRIBE_INTERVAL` (calls naming
  functions that do not exist must not turn into a Describe round trip each).
- Requests to the device go through `ports.DeviceControl` (the gateway); this module never sees a socket.
- Every device it returns shows the presence this process knows (`device_presence`: the gateway's links
  report it there before it is written to the store).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from devicecloud.domain.access import ProductPrincipal, Resource, Role, can
from devicecloud.domain.devices import (
    WIFI_PLATFORMS,
    Device,
    DeviceDescription,
    VariableReading,
    normalise_device_id,
)
from devicecloud.errors import DomainError, InvalidInput, NotFound, PermissionDenied
from devicecloud.services.device_names import free_name, is_valid_name
from devicecloud.services.secrets import hash_secret

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.accounts import User
    from devicecloud.services.device_presence import DevicePresenceBook
    from devicecloud.services.ports import DeviceControl
    from devicecloud.services.usage import UsageBook
    from devicecloud.store.interfaces import Store, UnitOfWork

MAX_FUNCTION_ARGUMENT = 622  # bytes; Device OS ≥ 0.8 (older firmware took 63 and refuses longer itself)
MAX_NOTES = 4096
CLAIM_CODE_LIFETIME = timedelta(hours=24)
CLAIM_CODE_EVENT = "spark/device/claim/code"  # what Device OS publishes with the code the setup app gave it


def _most_recently_connected_first(device: Device) -> tuple[bool, float, str]:
    at = device.last_handshake_at
    return at is None, -at.timestamp() if at is not None else 0.0, device.id


def denied() -> PermissionDenied:
    return PermissionDenied("Permission Denied: not a device of yours", code="Permission Denied")


def _customer_resource(device: Device) -> Resource:
    # A customer reaches a device of its product that it claimed; quarantined and denied ones never.
    membership = device.membership
    if membership is None or membership.quarantined or membership.denied:
        return Resource("device")
    return Resource("device", product_id=membership.product_id, customer_id=membership.customer_id)


def _resource(device: Device) -> Resource:
    # The user path: a device is its owner's. A product device also answers to its product's team
    # (`_product_allows`); the product routes decide in `product_devices.ProductDeviceService`.
    return Resource("device", user_id=device.owner_id)


def _product_allows(user: User, action: str, device: Device, role: Role | None) -> bool:
    """
    Whether the device's product lets ``user`` (a team member, ``role`` in the device's product) do
    ``action`` to it: a product device answers to its product's roles as well as to its owner. Quarantined
    and denied devices can only be read.
    """
    membership = device.membership
    if membership is None or role is None:
        return False
    if (membership.quarantined or membership.denied) and action != "devices:get":
        return False
    return can(user, action, Resource("device", product_id=membership.product_id), role)


COUNTS_TTL = 10.0  # seconds the Wi-Fi/cellular device counts of `GET /v1/user` may be stale
REDESCRIBE_INTERVAL = 10.0  # seconds between Describes asked for because a call named something unknown


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    request_timeout: float = 20.0


class DeviceService:
    """
    The devices API's business rules.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        control: DeviceControl,
        policy: DevicePolicy,
        presence: DevicePresenceBook | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._control = control
        self._policy = policy
        self._presence = presence
        self._redescribed: dict[str, float] = {}  # device id → monotonic time it was last asked again
        # user id → (valid until, wifi, cellular); dropped whenever a device changes hands
        self._counts: dict[int, tuple[float, int, int]] = {}
        self._owner_listeners: list[Callable[[str], None]] = []
        #: Set by the runtime: function calls and variable reads a device answered are counted there.
        self.usage: UsageBook | None = None

    def _present(self, device: Device) -> Device:
        return self._presence.overlay(device) if self._presence is not None else device

    def present(self, device: Device) -> Device:
        """
        ``device`` with the presence this process knows (for product device reads).
        """
        return self._present(device)

    async def settle(self, device_id: str) -> None:
        """
        Write what the presence book still holds of the device (a join, a record) before reading it.
        """
        await self._settle(device_id)

    def on_owner_change(self, listener: Callable[[str], None]) -> None:
        """
        Call ``listener(device_id)`` after a device changes hands (caches of owners listen).
        """
        self._owner_listeners.append(listener)

    def _owner_changed(self, device_id: str) -> None:
        self._counts.clear()
        for listener in self._owner_listeners:
            listener(device_id)

    def changed_hands(self, device_ids: Iterable[str]) -> None:
        """
        Devices changed hands outside this service (a deleted customer's devices, now nobody's): the owner
        listeners (the events' caches, on every node) forget them.
        """
        for device_id in device_ids:
            self._owner_changed(device_id)

    # ------------------------------------------------------------------ reading

    async def owned_counts(self, user: User) -> tuple[int, int]:
        """
        (Wi-Fi, cellular) devices the user owns, for ``GET /v1/user``. Cached per user for `COUNTS_TTL`
        on the clock: that request otherwise reads nothing but its token (ADR 0005), and a platform
        reported by a new Hello may show a few seconds late.
        """
        now = self._clock.monotonic()
        cached = self._counts.get(user.id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        devices = await self.list_devices(user)
        wifi = sum(device.platform_id in WIFI_PLATFORMS for device in devices)
        cellular = sum(device.cellular for device in devices)
        if len(self._counts) >= 10_000:  # bounded: only recent readers matter
            self._counts.clear()
        self._counts[user.id] = (now + COUNTS_TTL, wifi, cellular)
        return wifi, cellular

    async def list_devices(self, user: User | ProductPrincipal) -> list[Device]:
        """
        The user's (or the customer's) devices, most recently connected first.
        """
        async with self._store.transaction(readonly=True) as tx:
            if isinstance(user, ProductPrincipal):
                found = await self._customer_devices(tx, user)
            else:
                found = list(await tx.devices.list_for_owner(user.id))
            listed = [self._present(device) for device in found]
        if self._presence is not None:  # presence may be newer than the order the store gave
            listed.sort(key=_most_recently_connected_first)
        return listed

    async def _customer_devices(self, tx: UnitOfWork, customer: ProductPrincipal) -> list[Device]:
        if customer.customer_id is None:
            return []
        found = await tx.customers.devices(customer.customer_id)
        return [device for device in found if can(customer, "devices:list", _customer_resource(device))]

    async def access_device(
        self, user: User | ProductPrincipal, ref: str, action: str = "devices:get"
    ) -> Device:
        """
        The caller's device named by id or by name, if ``can`` lets it do ``action`` (decision 0016: the one
        access check of devices). Raises `PermissionDenied` for missing and foreign alike.

        An id names the device it is when the caller owns it or its product's team role allows ``action``
        (decision 0020): one read brings the device and that role, so the product path costs what the owner's
        does. Only then is ``ref`` looked for among the names of the caller's own devices.
        """
        device_id = normalise_device_id(ref)
        if isinstance(user, ProductPrincipal):  # a customer: only the product devices it claimed
            by_id = await self._store.lookup_device(device_id) if device_id else None
            if by_id is not None and can(user, action, _customer_resource(by_id)):
                return self._present(by_id)
            async with self._store.transaction(readonly=True) as tx:
                named = [d for d in await self._customer_devices(tx, user) if d.name == ref]
            if len(named) == 1 and can(user, action, _customer_resource(named[0])):
                return self._present(named[0])
            raise denied()
        found = await self._store.lookup_device_for(device_id, user.id) if device_id else None
        if found is not None:
            by_id, role = found
            if can(user, action, _resource(by_id)) or _product_allows(user, action, by_id, role):
                return self._present(by_id)
        async with self._store.transaction(readonly=True) as tx:
            device = await tx.devices.get_by_name(user.id, ref)
        if device is not None and can(user, action, _resource(device)):
            return self._present(device)
        raise denied()

    def is_online(self, device: Device) -> bool:
        return self._control.is_online(device.id)

    # ------------------------------------------------------------------ talking to the device

    async def call_function(
        self, user: User | ProductPrincipal, ref: str, name: str, argument: str
    ) -> tuple[Device, int]:
        device = await self.access_device(user, ref, "devices.function:call")
        return await self.call_function_on(device, name, argument)

    async def call_function_on(self, device: Device, name: str, argument: str) -> tuple[Device, int]:
        """
        Call a function of a device whose access the caller has decided (user path above, product path in
        `product_devices`).
        """
        if len(argument.encode("utf-8")) > MAX_FUNCTION_ARGUMENT:
            raise InvalidInput(
                f"The argument is longer than {MAX_FUNCTION_ARGUMENT} bytes", code="Argument too long"
            )
        if "functions" in device.describe and name not in device.functions:
            described = await self._describe_again(device)
            if described is None or name not in (described.functions or ()):
                raise NotFound(f"Function {name} not found", code="Function not found")
        result = await self._control.call_function(
            device.id, name, argument, timeout=self._policy.request_timeout
        )
        if self.usage is not None:  # a device message: the name, the argument and the 32-bit result
            self.usage.call(device.id, len(name.encode()) + len(argument.encode()) + 4)
        return device, result

    async def read_variable(
        self, user: User | ProductPrincipal, ref: str, name: str
    ) -> tuple[Device, VariableReading]:
        device = await self.access_device(user, ref, "devices.variable:get")
        return await self.read_variable_on(device, name)

    async def read_variable_on(self, device: Device, name: str) -> tuple[Device, VariableReading]:
        var_type = device.variables.get(name)
        if "variables" in device.describe and var_type is None:
            described = await self._describe_again(device)
            var_type = (described.variables or {}).get(name) if described is not None else None
            if var_type is None:
                raise NotFound(f"Variable {name} not found", code="Variable not found")
        reading = await self._control.read_variable(
            device.id, name, var_type, timeout=self._policy.request_timeout
        )
        if self.usage is not None:  # a device message: the name and the value as sent
            self.usage.read(device.id, len(name.encode()) + _value_size(reading.value))
        return device, reading

    async def _describe_again(self, device: Device) -> DeviceDescription | None:
        """
        The device's Describe, asked afresh (the gateway stores it too); ``None`` when it cannot tell now.
        """
        if not self._control.is_online(device.id) or not self._may_redescribe(device.id):
            return None
        try:
            return await self._control.refresh_describe(device.id, timeout=self._policy.request_timeout)
        except DomainError:  # offline meanwhile, timed out, refused: the stored Describe stands
            return None

    def _may_redescribe(self, device_id: str) -> bool:
        now = self._clock.monotonic()
        last = self._redescribed.get(device_id)
        if last is not None and now - last < REDESCRIBE_INTERVAL:
            return False
        if len(self._redescribed) > 10_000:  # keep the book small: only recent entries matter
            self._redescribed = {
                key: at for key, at in self._redescribed.items() if now - at < REDESCRIBE_INTERVAL
            }
        self._redescribed[device_id] = now
        return True

    async def ping(self, user: User | ProductPrincipal, ref: str) -> bool:
        device = await self.access_device(user, ref, "devices:ping")
        return await self.ping_device(device)

    async def ping_device(self, device: Device) -> bool:
        return await self._control.ping(device.id, timeout=self._policy.request_timeout)

    async def signal(self, user: User, ref: str, on: bool) -> Device:
        device = await self.access_device(user, ref, "devices:update")
        return await self.signal_device(device, on)

    async def signal_device(self, device: Device, on: bool) -> Device:
        await self._control.signal(device.id, on, timeout=self._policy.request_timeout)
        return device

    # ------------------------------------------------------------------ changing the record

    async def rename(self, user: User, ref: str, name: Any) -> Device:
        device = await self.access_device(user, ref, "devices:update")
        return await self.rename_device(device, name)

    async def rename_device(self, device: Device, name: Any) -> Device:
        if not isinstance(name, str) or not is_valid_name(name):
            raise InvalidInput(
                "name must be 1-63 letters, digits, underscores or dashes", code="invalid_name"
            )
        async with self._store.transaction() as tx:
            renamed = await tx.devices.update(device.id, name=name, updated_at=self._clock.now())
        return self._present(renamed)

    async def set_notes(self, user: User, ref: str, notes: Any) -> Device:
        device = await self.access_device(user, ref, "devices:update")
        return await self.set_device_notes(device, notes)

    async def set_device_notes(self, device: Device, notes: Any) -> Device:
        if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_NOTES):
            raise InvalidInput(f"notes must be a string of at most {MAX_NOTES} characters")
        async with self._store.transaction() as tx:
            noted = await tx.devices.update(device.id, notes=notes or None, updated_at=self._clock.now())
        return self._present(noted)

    # ------------------------------------------------------------------ ownership

    async def claim(self, user: User, device_ref: Any, *, request_transfer: bool = False) -> Device:
        """
        Make a known, unowned device the caller's. Claiming your own device again succeeds.
        """
        device_id = normalise_device_id(device_ref) if isinstance(device_ref, str) else None
        if device_id is None:
            raise InvalidInput("id must be a 24-character hexadecimal device id")
        await self._settle(device_id)
        async with self._store.transaction() as tx:
            device = await tx.devices.get(device_id)
            if device is None:
                raise NotFound("device not found: it has never connected nor had its key registered")
            if device.owner_id == user.id:
                return self._present(device)
            if device.owner_id is not None:
                if request_transfer:
                    raise InvalidInput(
                        "Ownership transfers are not supported by this server; ask the owner to unclaim it",
                        code="transfer_unsupported",
                    )
                raise PermissionDenied(
                    "You cannot claim a device owned by someone else", code="Permission Denied"
                )
            membership = device.membership
            if membership is not None and membership.customer_id is not None:
                raise PermissionDenied(
                    "You cannot claim a device owned by someone else", code="Permission Denied"
                )
            if membership is not None and await tx.products.role_of(membership.product_id, user.id) is None:
                # An imported id is a record nobody owns: only the product's team may claim it by id.
                raise PermissionDenied(
                    "This device belongs to a product: only its team can claim it", code="Permission Denied"
                )
            claimed = await self._take_ownership(tx, device, user.id)
        self._owner_changed(device_id)
        return self._present(claimed)

    async def unclaim(self, user: User, ref: str) -> None:
        device = await self.access_device(user, ref, "devices:release")
        await self.release_device(device)

    async def release_device(self, device: Device) -> None:
        """
        Make a device whose access the caller has decided unowned again.
        """
        async with self._store.transaction() as tx:
            await tx.devices.update(device.id, owner_id=None, notes=None, updated_at=self._clock.now())
            if device.membership is not None and device.membership.customer_id is not None:
                await tx.customers.give_device(device.id, None)  # a customer's device: nobody's now
        self._owner_changed(device.id)
        # Its event subscriptions were made for the old owner; a fresh link subscribes under the new rules.
        await self._control.disconnect(device.id)

    async def create_claim_code(self, user: User) -> tuple[str, list[str]]:
        """
        A one-time code a device can present (event ``spark/device/claim/code``) to become the user's.
        """
        code = secrets.token_urlsafe(47)[:63]
        async with self._store.transaction() as tx:
            await tx.claim_codes.add(hash_secret(code), user.id, self._clock.now() + CLAIM_CODE_LIFETIME)
            owned = [d.id for d in await tx.devices.list_for_owner(user.id)]
        return code, owned

    async def create_customer_claim_code(self, customer: ProductPrincipal) -> tuple[str, list[str]]:
        """
        A one-time code for a product's customer: a device of that product presenting it becomes the
        customer's (issue 11 section 6).
        """
        code = secrets.token_urlsafe(47)[:63]
        async with self._store.transaction() as tx:
            await tx.claim_codes.add(
                hash_secret(code),
                None,
                self._clock.now() + CLAIM_CODE_LIFETIME,
                customer_id=customer.customer_id,
            )
            owned = [d.id for d in await self._customer_devices(tx, customer)]
        return code, owned

    async def handle_device_event(self, device_id: str, name: str, data: str | None) -> None:
        """
        Events from devices that concern the device record (more arrive with the events bus).
        """
        if name == CLAIM_CODE_EVENT and data:
            await self.claim_with_code(device_id, data)

    async def claim_with_code(self, device_id: str, code: str) -> bool:
        """
        A device presented a claim code: give it to the code's user if the device is unowned. A customer's
        code is taken only by an unowned, admitted device of the customer's product.
        """
        await self._settle(device_id)
        async with self._store.transaction() as tx:
            taken = await tx.claim_codes.take(hash_secret(code.strip()))
            device = await tx.devices.get(device_id)
            if (
                taken is None
                or taken.expires_at <= self._clock.now()
                or device is None
                or device.owner_id is not None
                or (device.membership is not None and device.membership.customer_id is not None)
            ):
                return False
            if taken.customer_id is not None:
                customer = await tx.customers.get(taken.customer_id)
                membership = device.membership
                if (
                    customer is None
                    or membership is None
                    or membership.product_id != customer.product_id
                    or membership.quarantined
                    or membership.denied
                ):
                    return False
                await tx.customers.give_device(device.id, customer.id)
            elif taken.user_id is not None:
                await self._take_ownership(tx, device, taken.user_id)
            else:
                return False
        self._owner_changed(device_id)
        return True

    async def _settle(self, device_id: str) -> None:
        # A first-connect record or generated name still only in the presence book: write it first.
        if self._presence is not None:
            await self._presence.settle(device_id)

    async def _take_ownership(self, tx: UnitOfWork, device: Device, user_id: int) -> Device:
        name = device.name
        if name is None or await tx.devices.name_taken(user_id, name):
            name = await free_name(lambda candidate: tx.devices.name_taken(user_id, candidate))
        return await tx.devices.update(device.id, owner_id=user_id, name=name, updated_at=self._clock.now())


def _value_size(value: bool | int | float | str | None) -> int:
    """The bytes a variable's value takes on the wire (booleans 1, integers 4, doubles 8, strings as sent)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 4
    return 8 if isinstance(value, float) else 0
