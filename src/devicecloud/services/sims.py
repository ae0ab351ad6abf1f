"""
The SIM card registry (catalogue §8, decision 0022): SIMs owned by a user or a product, their carrier
actions, and their daily data usage.

Rules kept here:
- one access function per path: a user's SIM is found through `can` with ``Resource("sim", user_id=…)``
  (missing and foreign SIMs alike are "SIM card not found"); a product's through `access_product` with the
  catalogue scope;
- every state change goes through the `Carrier` first and records which carrier handled it; the default
  carrier, `RecordingCarrier` ("none"), talks to no network and only lets the change be recorded;
- activating an ICCID nobody has registered registers it to the caller (as activating a new SIM adds it to
  an account); an ICCID another owner holds is refused, and only ``HEAD`` and activation say so;
- usage is only what was recorded (imported by an operator, or reported by devices): never estimated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from devicecloud.domain.access import Resource, can
from devicecloud.domain.sims import (
    Sim,
    SimAction,
    SimQuery,
    SimStatus,
    UsageDay,
    UsageRow,
    check_iccid,
    parse_action,
    parse_iccids,
    transition,
)
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied
from devicecloud.services.product_access import access_product

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.accounts import User
    from devicecloud.services.device_presence import DevicePresenceBook
    from devicecloud.store.interfaces import Store, UnitOfWork

MAX_PER_PAGE = 100
MAX_FILTER = 64


@dataclass(frozen=True, slots=True)
class CarrierResult:
    """
    What a carrier did: its name, shown in the API as the SIM's ``carrier``.
    """

    carrier: str


class Carrier(Protocol):
    """
    The one way to a cellular carrier: activate, deactivate, reactivate or release one SIM. Raising a
    `DomainError` refuses the change; nothing is recorded then.
    """

    async def change(self, iccid: str, action: SimAction) -> CarrierResult: ...


class RecordingCarrier:
    """
    The default: no carrier is configured, so nothing is sent anywhere and the change is only recorded.
    """

    name = "none"

    async def change(self, iccid: str, action: SimAction) -> CarrierResult:
        return CarrierResult(self.name)


@dataclass(frozen=True, slots=True)
class ProductRef:
    """
    A product SIM route's caller and the ``:productIdOrSlug`` it named.
    """

    principal: AnyPrincipal
    ref: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: Sequence[str]
    already_imported: Sequence[str]
    unavailable: Sequence[str]


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """
    A SIM's network status as far as this server knows it: from its last device's link (``None``: no
    device known), the carrier's network view being absent.
    """

    connected: bool | None
    data_connection: bool | None
    gsm_connection: bool | None


@dataclass(frozen=True, slots=True)
class FleetUsage:
    days: Sequence[UsageDay]
    active_sims: int


def _not_found() -> NotFound:
    return NotFound("SIM card not found", code="Not Found")


def _text_filter(params: dict[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_FILTER:
        raise InvalidInput(f"{name} must be text of at most {MAX_FILTER} characters")
    return value


def _positive(value: Any, name: str, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= maximum:
        raise InvalidInput(f"{name} must be a whole number from 1 to {maximum}")
    return int(text)


def parse_query(params: dict[str, Any]) -> SimQuery:
    """
    The product list's filters and page (``perPage`` as documented, ``per_page`` as particle-api-js sends).
    """
    per_page = params.get("per_page", params.get("perPage"))
    return SimQuery(
        iccid=_text_filter(params, "iccid"),
        device_id=_text_filter(params, "deviceId"),
        device_name=_text_filter(params, "deviceName"),
        page=_positive(params.get("page"), "page", 1, 1_000_000),
        per_page=_positive(per_page, "perPage", 25, MAX_PER_PAGE),
    )


def _flag(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    raise InvalidInput(f"{name} must be true or false")


class SimService:
    """
    SIM cards of users and products.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        carrier: Carrier | None = None,
        presence: DevicePresenceBook | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._carrier: Carrier = carrier or RecordingCarrier()
        self._presence = presence  # the links this process knows: newer than the stored presence

    # -- access ------------------------------------------------------------------------------------------

    async def _open(self, tx: UnitOfWork, owner: User | ProductRef, iccid: str, action: str) -> Sim:
        checked = check_iccid(iccid)
        if isinstance(owner, ProductRef):
            product = (await access_product(tx, owner.principal, owner.ref, action, "sim")).product
            sim = await tx.sims.get(checked)
            if sim is None or sim.product_id != product.id:
                raise _not_found()
            return sim
        sim = await tx.sims.get(checked)
        if sim is None or sim.user_id is None or not can(owner, action, Resource("sim", user_id=sim.user_id)):
            raise _not_found()
        return sim

    # -- reads -------------------------------------------------------------------------------------------

    async def list_for_user(self, user: User) -> Sequence[Sim]:
        async with self._store.transaction(readonly=True) as tx:
            return await tx.sims.list_for_user(user.id)

    async def list_for_product(
        self, principal: AnyPrincipal, ref: str, params: dict[str, Any]
    ) -> tuple[Sequence[Sim], int, SimQuery]:
        """
        One page of a product's SIMs, how many match in all, and the query as understood.
        """
        query = parse_query(params)
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "sims:list", "sim")).product
            found, total = await tx.sims.list_for_product(product.id, query)
        return found, total, query

    async def get(self, owner: User | ProductRef, iccid: str) -> Sim:
        async with self._store.transaction(readonly=True) as tx:
            return await self._open(tx, owner, iccid, "sims:get")

    async def check(self, user: User, iccid: str) -> int:
        """
        ``HEAD /v1/sims/:iccid``: 204 the caller's, 403 another owner's, 404 unregistered (or no ICCID).
        204, not 200: particle-api-js's checkSIM reads the body of any other success as JSON, and a HEAD
        reply has none.
        """
        if not isinstance(iccid, str) or check_iccid_or_none(iccid) is None:
            return 404
        async with self._store.transaction(readonly=True) as tx:
            sim = await tx.sims.get(iccid.strip())
        if sim is None:
            return 404
        return 204 if can(user, "sims:get", Resource("sim", user_id=sim.user_id)) else 403

    async def usage(self, owner: User | ProductRef, iccid: str) -> tuple[str, Sequence[UsageDay]]:
        """
        Bytes used per day in the current billing period (the calendar month, UTC) as recorded.
        """
        today = self._clock.now().date()
        async with self._store.transaction(readonly=True) as tx:
            sim = await self._open(tx, owner, iccid, "sims.usage:get")
            return sim.iccid, await tx.sims.usage(today.replace(day=1), today, iccid=sim.iccid)

    async def fleet_usage(self, principal: AnyPrincipal, ref: str) -> FleetUsage:
        today = self._clock.now().date()
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "sims.usage:get", "sim")).product
            days = await tx.sims.usage(today.replace(day=1), today, product_id=product.id)
            return FleetUsage(days, await tx.sims.count_active(product.id))

    async def status(self, owner: User | ProductRef, iccid: str) -> tuple[Sim, NetworkStatus]:
        async with self._store.transaction(readonly=True) as tx:
            sim = await self._open(tx, owner, iccid, "sims.status:get")
            device = await tx.devices.get(sim.last_device_id) if sim.last_device_id else None
        if device is not None and self._presence is not None:
            device = self._presence.overlay(device)
        online = device.online if device is not None else None
        connected = online if sim.status is SimStatus.ACTIVE else False
        return sim, NetworkStatus(connected=connected, data_connection=connected, gsm_connection=None)

    # -- changes -----------------------------------------------------------------------------------------

    async def import_sims(self, owner: User | ProductRef, values: Any) -> ImportResult:
        """
        Register and activate ICCIDs for a user or a product. A malformed list changes nothing; ICCIDs
        already the owner's are left alone, and those another owner holds are reported, not taken.
        """
        iccids = parse_iccids(values)
        async with self._store.transaction() as tx:
            user_id, product_id = await self._owner_ids(tx, owner, "sims:import")
            taken = {sim.iccid: sim for sim in await tx.sims.existing(iccids)}
            mine = [
                i
                for i in iccids
                if i in taken and (taken[i].user_id, taken[i].product_id) == (user_id, product_id)
            ]
            others = [i for i in iccids if i in taken and i not in mine]
            fresh = [i for i in iccids if i not in taken]
            new = [await self._activated(i, user_id, product_id, via="import") for i in fresh]
            await tx.sims.add(new)
        return ImportResult(imported=fresh, already_imported=mine, unavailable=others)

    async def _owner_ids(
        self, tx: UnitOfWork, owner: User | ProductRef, action: str
    ) -> tuple[int | None, int | None]:
        if isinstance(owner, ProductRef):
            product = (await access_product(tx, owner.principal, owner.ref, action, "sim")).product
            return None, product.id
        return owner.id, None

    async def _activated(self, iccid: str, user_id: int | None, product_id: int | None, via: str) -> Sim:
        done = await self._carrier.change(iccid, SimAction.ACTIVATE)
        now = self._clock.now()
        return Sim(
            iccid=iccid,
            user_id=user_id,
            product_id=product_id,
            status=SimStatus.ACTIVE,
            activations_count=1,
            deactivations_count=0,
            first_activated_on=now,
            last_activated_on=now,
            last_activated_via=via,
            last_status_change_action=SimAction.ACTIVATE.value,
            last_status_change_action_error=False,
            carrier=done.carrier,
            last_device_id=None,
            created_at=now,
            updated_at=now,
        )

    async def change(
        self,
        owner: User | ProductRef,
        iccid: str,
        action: Any,
        *,
        mb_limit: Any = None,
        run_async: Any = None,
    ) -> Sim:
        """
        ``PUT /v1/sims/:iccid``: activate, deactivate or reactivate through the carrier.
        """
        if mb_limit is not None:
            raise InvalidInput(
                "Data limits (mb_limit) are not supported by this server: no carrier meters the SIM's traffic"
            )
        _flag(run_async, "async")
        wanted = parse_action(action)
        checked = check_iccid(iccid)
        async with self._store.transaction() as tx:
            if wanted is SimAction.ACTIVATE:
                if isinstance(owner, ProductRef):
                    raise InvalidInput(
                        "A product's SIM cards are activated when imported; use action=reactivate"
                    )
                claimed = await self._claim(tx, owner, checked)
                if claimed is not None:
                    return claimed
            sim = await self._open(tx, owner, checked, "sims:update")
            return await self._apply(tx, sim, wanted)

    async def _claim(self, tx: UnitOfWork, user: User, iccid: str) -> Sim | None:
        """
        Activating an unregistered ICCID registers it to ``user``; None when it is already registered.
        """
        sim = await tx.sims.get(iccid)
        if sim is None:
            new = await self._activated(iccid, user.id, None, via="api")
            await tx.sims.add([new])
            return replace(new, owner_username=user.username)
        if sim.user_id != user.id:
            raise PermissionDenied("This SIM card is owned by another account", code="Permission Denied")
        return None

    async def _apply(self, tx: UnitOfWork, sim: Sim, action: SimAction) -> Sim:
        step = transition(sim.status, action, sim.activations_count)
        done = await self._carrier.change(sim.iccid, action)
        now = self._clock.now()
        changes: dict[str, Any] = {
            "status": step.status,
            "last_status_change_action": action.value,
            "last_status_change_action_error": False,
            "carrier": done.carrier,
            "updated_at": now,
        }
        if step.activation:
            changes |= {
                "activations_count": sim.activations_count + 1,
                "first_activated_on": sim.first_activated_on or now,
                "last_activated_on": now,
                "last_activated_via": "api",
            }
        if step.deactivation:
            changes["deactivations_count"] = sim.deactivations_count + 1
        await tx.sims.update(sim.iccid, **changes)
        return replace(sim, **changes)

    async def release(self, owner: User | ProductRef, iccid: str) -> None:
        """
        Give a SIM up (deactivated first when active) so another account or product can register it.
        """
        async with self._store.transaction() as tx:
            sim = await self._open(tx, owner, iccid, "sims:remove")
            if sim.status is SimStatus.ACTIVE:
                await self._carrier.change(sim.iccid, SimAction.DEACTIVATE)
            await self._carrier.change(sim.iccid, SimAction.RELEASE)
            await tx.sims.delete(sim.iccid)

    # -- operators ---------------------------------------------------------------------------------------

    async def import_usage(self, rows: Sequence[UsageRow]) -> int:
        """
        Store an operator's usage readings (`devicecloud sims import-usage`); returns how many were stored
        (rows of unregistered ICCIDs are skipped).
        """
        async with self._store.transaction() as tx:
            return await tx.sims.record_usage(rows)


def check_iccid_or_none(value: str) -> str | None:
    try:
        return check_iccid(value)
    except InvalidInput:
        return None
