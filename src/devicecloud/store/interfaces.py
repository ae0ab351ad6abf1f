"""
The storage contract services depend on: repositories grouped in a unit of work.

A unit of work is one database transaction: ``async with store.transaction() as tx`` commits when the block
ends normally and rolls back when it raises. Repositories return domain objects, never rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from devicecloud.domain.access import Role
from devicecloud.domain.accounts import AccessToken, Customer, OAuthClient, User
from devicecloud.domain.devices import (
    ClaimCode,
    Device,
    DeviceKeyRecord,
    DevicePresence,
    HeardRow,
    PendingKey,
)
from devicecloud.domain.diagnostics import VitalsRecord
from devicecloud.domain.libraries import (
    Library,
    LibraryMetadata,
    LibraryQuery,
    LibraryVersion,
    LibraryView,
    Visibility,
)
from devicecloud.domain.product_devices import DeviceListQuery, KnownDevice, ProductReport
from devicecloud.domain.product_firmware import FleetDevice, ProductFirmware, Release
from devicecloud.domain.products import ApiUser, DeviceGroup, Product, TeamMember
from devicecloud.domain.sims import Sim, SimQuery, UsageDay, UsageRow
from devicecloud.domain.usage import Account, CounterRow, DeviceDay, UsageNotification, UsageReport
from devicecloud.domain.webhooks import Delivery, DeliveryLog, HookEvent, UnreadableDelivery, Webhook


class UserRepository(Protocol):
    async def add(
        self, *, username: str, password_hash: str, account_info: dict[str, Any], now: datetime
    ) -> User:
        """
        Insert a user. Raises `errors.Conflict` when the username is taken.
        """
        ...

    async def get(self, user_id: int) -> User | None: ...

    async def get_by_username(self, username: str) -> User | None: ...

    async def list(self) -> Sequence[User]: ...

    async def count(self) -> int: ...

    async def update(self, user_id: int, **changes: Any) -> User:
        """
        Change columns (username, password_hash, account_info, mfa_*). Conflict on a taken username.
        """
        ...

    async def delete(self, user_id: int) -> None: ...


class TokenRepository(Protocol):
    async def add(
        self,
        *,
        token_hash: str,
        hint: str,
        user_id: int | None,
        client_id: str,
        scopes: Sequence[str],
        now: datetime,
        expires_at: datetime | None,
        refresh_token_hash: str | None,
        refresh_expires_at: datetime | None,
        product_id: int | None = None,
        api_user_id: int | None = None,
        customer_id: int | None = None,
    ) -> AccessToken: ...

    async def find_with_user(self, token_hash: str) -> tuple[AccessToken, User | None] | None:
        """
        The hot path of every request: one indexed lookup by hash, joined to its user.
        """
        ...

    async def existing_hashes(self, token_hashes: Sequence[str]) -> set[str]:
        """
        Which of these token hashes are still stored (any number of them).
        """
        ...

    async def get_by_refresh_hash(self, refresh_hash: str) -> AccessToken | None: ...

    async def list_for_user(self, user_id: int) -> Sequence[AccessToken]: ...

    async def delete(self, token_id: int) -> None: ...

    async def delete_for_user(self, user_id: int, *, except_token_id: int | None = None) -> int: ...

    async def delete_for_api_user(self, api_user_id: int) -> int: ...

    async def delete_for_client(self, client_id: str) -> int: ...


class ClientRepository(Protocol):
    async def add(self, client: OAuthClient, *, now: datetime) -> OAuthClient:
        """
        Insert a client. Raises `errors.Conflict` when the id is taken.
        """
        ...

    async def get(self, client_id: str) -> OAuthClient | None: ...

    async def list_for_owner(self, owner_id: int, product_id: int | None = None) -> Sequence[OAuthClient]: ...

    async def list_for_product(self, product_id: int) -> Sequence[OAuthClient]:
        """
        Every client of the product, whoever made it.
        """
        ...

    async def update(self, client_id: str, **changes: Any) -> OAuthClient: ...

    async def delete(self, client_id: str) -> None: ...


class OneTimeSecretRepository(Protocol):
    """
    Single-use secrets (password-reset tokens, MFA login and enrolment challenges), kept hashed.
    """

    async def add(
        self, *, kind: str, secret_hash: str, user_id: int, expires_at: datetime, payload: dict[str, Any]
    ) -> None: ...

    async def get(self, kind: str, secret_hash: str) -> tuple[int, datetime, dict[str, Any]] | None:
        """
        Returns (user_id, expires_at, payload) or None.
        """
        ...

    async def delete(self, kind: str, secret_hash: str) -> bool:
        """
        Remove it; True when it existed (so two racing uses cannot both succeed).
        """
        ...

    async def delete_for_user(self, user_id: int, kind: str | None = None) -> None: ...


class DeviceRepository(Protocol):
    async def get(self, device_id: str) -> Device | None: ...

    async def get_by_name(self, owner_id: int, name: str) -> Device | None: ...

    async def list_for_owner(self, owner_id: int) -> Sequence[Device]:
        """
        The owner's devices, most recently connected first.
        """
        ...

    async def name_taken(self, owner_id: int, name: str, *, except_id: str | None = None) -> bool: ...

    async def add(self, device_id: str, *, now: datetime, **values: Any) -> Device:
        """
        Insert a device record. Raises `errors.Conflict` when the id exists.
        """
        ...

    async def update(self, device_id: str, **changes: Any) -> Device:
        """
        Change columns. Raises `errors.Conflict` on a name clash within one owner, `NotFound` if absent.
        """
        ...

    async def set_offline_unless_held(
        self, now: datetime, *, live_since: datetime, stale: str | None
    ) -> list[str]:
        """
        Mark offline every online device whose latest link is not on a live node (one that renewed its lease
        at ``live_since`` or later, other than ``stale``), or whose record names no node; the ids changed.
        """
        ...

    async def write_presence(self, presence: Sequence[DevicePresence]) -> None:
        """
        Write each device's presence columns (online, last IP, last handshake, last heard, updated_at, and
        platform/product ids when not ``None``) in one statement; unknown device ids are skipped.
        """
        ...

    async def write_heard(self, heard: Sequence[HeardRow]) -> None:
        """
        Write each device's ``last_heard`` alone (the keep-alives since the last flush), in one statement,
        fenced like `write_presence` (an older link writes nothing); unknown device ids are skipped.
        """
        ...

    async def describes(self, device_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """
        The stored Describe of each of these devices that exists (any number of ids).
        """
        ...

    async def write_describes(self, rows: Sequence[tuple[str, dict[str, Any], str | None, datetime]]) -> None:
        """
        Write ``(device id, describe, system firmware version or None = keep, updated_at)`` rows in one
        statement; unknown device ids are skipped.
        """
        ...

    async def name_if_unnamed(self, device_id: str, name: str, *, now: datetime) -> bool:
        """
        Give the device ``name`` unless it has one (or does not exist): True when it was given. Raises
        `errors.Conflict` when another device of the same owner has that name.
        """
        ...

    async def delete(self, device_id: str) -> None: ...


class PendingKeyRepository(Protocol):
    async def record(
        self, device_id: str, public_key_der: bytes, ip_address: str | None, now: datetime
    ) -> None: ...

    async def get(self, device_id: str) -> PendingKey | None: ...

    async def list(self) -> Sequence[PendingKey]: ...

    async def delete(self, device_id: str) -> None: ...


class NodeRepository(Protocol):
    """
    The processes holding device links, each with a lease (``seen_at``) it renews.
    """

    async def register(self, node_id: str, now: datetime) -> None:
        """
        Add the node (or renew it, when a process with that id registered before).
        """
        ...

    async def renew(self, node_id: str, now: datetime) -> bool:
        """
        Renew the node's lease; False when it is not registered (another node found it expired).
        """
        ...

    async def expired(self, seen_before: datetime) -> Sequence[str]:
        """
        Nodes that last renewed before ``seen_before``.
        """
        ...

    async def remove(self, node_ids: Sequence[str]) -> None: ...

    async def remove_expired(self, seen_before: datetime) -> None: ...

    async def live(self) -> Sequence[str]: ...


class ClaimCodeRepository(Protocol):
    async def add(
        self, code_hash: str, user_id: int | None, expires_at: datetime, *, customer_id: int | None = None
    ) -> None:
        """
        A code for a user, or (``user_id`` None) for a product's customer.
        """
        ...

    async def take(self, code_hash: str) -> ClaimCode | None:
        """
        Use up a claim code: returns it once, then None.
        """
        ...


class CustomerRepository(Protocol):
    """
    A product's customers (issue 11 section 6). Usernames are unique per product.
    """

    async def add(self, product_id: int, username: str, password_hash: str | None, now: datetime) -> Customer:
        """
        Raises `errors.Conflict` when the product has a customer of that name.
        """
        ...

    async def get(self, customer_id: int) -> Customer | None: ...

    async def get_by_username(self, product_id: int, username: str) -> Customer | None: ...

    async def page(self, product_id: int, offset: int, limit: int) -> tuple[list[Customer], int]:
        """
        A page of the product's customers by id, and how many it has in all.
        """
        ...

    async def device_ids(self, customer_ids: Sequence[int]) -> dict[int, list[str]]:
        """
        The ids of the devices each of these customers claimed, in id order.
        """
        ...

    async def devices(self, customer_id: int) -> Sequence[Device]:
        """
        The customer's devices (with their owner and membership, like `DeviceRepository.get`).
        """
        ...

    async def set_password(self, customer_id: int, password_hash: str) -> None: ...

    async def delete(self, customer_id: int) -> None:
        """
        Delete the customer: its tokens and claim codes go with it, its devices become nobody's.
        """
        ...

    async def give_device(self, device_id: str, customer_id: int | None) -> None:
        """
        Make a product device the customer's (None: nobody's).
        """
        ...


class WebhookRepository(Protocol):
    async def add(self, hook: Webhook) -> Webhook: ...

    async def get(self, hook_id: str) -> Webhook | None: ...

    async def list_for_owner(self, owner_id: int) -> Sequence[Webhook]: ...

    async def list_for_product(self, product_id: int) -> Sequence[Webhook]: ...

    async def list_all(self) -> Sequence[Webhook]: ...

    async def replace(self, hook: Webhook) -> Webhook:
        """
        Store a new configuration for an existing hook. Raises `errors.NotFound`.
        """
        ...

    async def delete(self, hook_id: str) -> bool:
        """
        Remove the hook with its queued deliveries and logs; True when it existed.
        """
        ...

    async def logs(self, hook_id: str, limit: int) -> Sequence[DeliveryLog]:
        """
        The newest ``limit`` delivery logs, newest first.
        """
        ...

    async def add_logs(self, entries: Sequence[tuple[str, DeliveryLog]]) -> None: ...

    async def prune_logs(self, hook_ids: Iterable[str], keep: int) -> None:
        """
        Keep only the newest ``keep`` logs of each hook.
        """
        ...


class DeliveryRepository(Protocol):
    """
    The durable outbox of webhook deliveries.
    """

    async def enqueue(self, items: Sequence[tuple[Webhook, HookEvent, str]], now: datetime) -> None:
        """
        Queue ``(hook, event, target host)`` triples, due now; hooks deleted meanwhile are skipped.
        """
        ...

    async def claim_due(
        self, now: datetime, lease_until: datetime, limit: int, exclude_hosts: Collection[str] = ()
    ) -> Sequence[Delivery | UnreadableDelivery]:
        """
        Take up to ``limit`` due deliveries (oldest first) whose lease is free or ran out, leasing them
        until ``lease_until``; deliveries to ``exclude_hosts`` stay where they are. A row whose event cannot
        be read comes back as an `UnreadableDelivery`.
        """
        ...

    async def extend_leases(self, delivery_ids: Sequence[int], lease_until: datetime) -> None:
        """
        Keep holding deliveries still waiting or in flight in this process.
        """
        ...

    async def finish(self, delivery_ids: Sequence[int]) -> None:
        """
        Remove deliveries that are done (delivered or given up).
        """
        ...

    async def reschedule(self, items: Sequence[tuple[int, int, datetime]]) -> None: ...

    async def count(self) -> int: ...


class ProductRepository(Protocol):
    async def add(
        self,
        *,
        slug: str,
        name: str,
        description: str | None,
        platform_id: int,
        owner_id: int,
        settings: dict[str, Any],
        now: datetime,
    ) -> Product:
        """
        Insert a product. Raises `errors.Conflict` when the slug is taken.
        """
        ...

    async def get(self, product_id: int) -> Product | None: ...

    async def get_by_slug(self, slug: str) -> Product | None: ...

    async def with_role(self, ref: int | str, user_id: int | None) -> tuple[Product, Role | None] | None:
        """
        The product by id (an int) or slug (a str) and ``user_id``'s role in its team (None: not in it, or
        no user): one read.
        """
        ...

    async def with_role_and_groups(
        self, ref: int | str, user_id: int | None
    ) -> tuple[Product, Role | None, list[str]] | None:
        """
        `with_role` and the product's group names (by name), in the same one read.
        """
        ...

    async def slug_taken(self, slug: str) -> bool: ...

    async def list_for_member(self, user_id: int) -> Sequence[Product]:
        """
        The products whose team has this user, oldest first.
        """
        ...

    async def list_all(self) -> Sequence[Product]: ...

    async def update(self, product_id: int, **changes: Any) -> Product: ...

    async def role_of(self, product_id: int, user_id: int) -> Role | None:
        """
        The user's role in the product's team, or None: one read by primary key.
        """
        ...

    async def members(self, product_id: int) -> Sequence[TeamMember]: ...

    async def add_member(self, product_id: int, user_id: int, role: Role, now: datetime) -> None:
        """
        Raises `errors.Conflict` when the user is already in the team.
        """
        ...

    async def set_role(self, product_id: int, user_id: int, role: Role) -> None: ...

    async def remove_member(self, product_id: int, user_id: int) -> None: ...

    async def add_api_user(
        self, *, product_id: int, username: str, friendly_name: str, scopes: Sequence[str], now: datetime
    ) -> ApiUser: ...

    async def api_users(self, product_id: int) -> Sequence[ApiUser]: ...

    async def api_user_by_username(self, product_id: int, username: str) -> ApiUser | None: ...

    async def update_api_user(self, api_user_id: int, **changes: Any) -> ApiUser: ...

    async def delete_api_user(self, api_user_id: int) -> None:
        """
        Delete an API user; its tokens go with it (cascade).
        """
        ...

    async def add_device(
        self, product_id: int, device_id: str, *, firmware_version: int | None, now: datetime
    ) -> None: ...

    async def set_device_groups(self, device_id: str, group_ids: Sequence[int]) -> None:
        """
        The device's groups become exactly ``group_ids``.
        """
        ...


class ProductDeviceRepository(Protocol):
    """
    A product's devices (issue 11 section 3). Ids are canonical (24 lower-case hex).
    """

    async def known(self, ids: Sequence[str]) -> dict[str, KnownDevice]:
        """
        The ids that have a device record, with owner and product membership.
        """
        ...

    async def team_members_among(self, product_id: int, user_ids: Sequence[int]) -> set[int]: ...

    async def add(
        self, product_id: int, new_records: Sequence[str], members: Sequence[str], now: datetime
    ) -> None:
        """
        Bare records for ids never seen, then memberships: set-based, duplicates ignored.
        """
        ...

    async def approve(self, product_id: int, ids: Sequence[str]) -> None: ...

    async def report(self, reports: Sequence[ProductReport], now: datetime) -> None:
        """
        Hellos naming a product, written behind: joins of non-members, product firmware versions.
        """
        ...

    async def update(self, device_id: str, **changes: Any) -> None: ...

    async def remove(self, device_id: str) -> None: ...

    async def by_name(self, product_id: int, name: str) -> list[str]: ...

    async def ordered(self, product_id: int, query: DeviceListQuery) -> str:
        """
        The ids of the product's devices that match the query's filters, in its order, concatenated (each
        24 characters); the page and the total are the caller's to take from it.
        """
        ...

    async def records(self, ids: Sequence[str]) -> list[Device]:
        """
        The device records of ``ids`` that exist, in the order given.
        """
        ...

    async def groups_of(self, device_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """
        Each device's groups as (group id, name), by name.
        """
        ...

    async def records_with_groups(self, ids: Sequence[str]) -> list[tuple[Device, list[tuple[int, str]]]]:
        """
        `records` and each one's `groups_of` in one read (a page of a list).
        """
        ...

    async def members_among(self, product_id: int, ids: Sequence[str]) -> list[str]: ...

    async def add_to_groups(self, device_ids: Sequence[str], group_ids: Sequence[int]) -> None: ...

    async def remove_from_groups(self, device_ids: Sequence[str], group_ids: Sequence[int]) -> None: ...


class SimRepository(Protocol):
    async def get(self, iccid: str) -> Sim | None:
        """
        A SIM by ICCID, with its owner's email and its last device's name.
        """
        ...

    async def existing(self, iccids: Sequence[str]) -> Sequence[Sim]:
        """
        The SIMs of ``iccids`` that are already registered, whoever owns them.
        """
        ...

    async def add(self, sims: Sequence[Sim]) -> None:
        """
        Register new SIMs (`errors.Conflict` if one is registered meanwhile).
        """
        ...

    async def update(self, iccid: str, **changes: Any) -> None: ...

    async def delete(self, iccid: str) -> None:
        """
        Forget a SIM and its usage (released: the next owner does not see the previous one's figures).
        """
        ...

    async def list_for_user(self, user_id: int) -> Sequence[Sim]: ...

    async def list_for_product(self, product_id: int, query: SimQuery) -> tuple[Sequence[Sim], int]:
        """
        One page of a product's SIMs (by ICCID) matching ``query``, and how many match in all.
        """
        ...

    async def count_active(self, product_id: int) -> int: ...

    async def usage(
        self, since: date, until: date, *, iccid: str | None = None, product_id: int | None = None
    ) -> Sequence[UsageDay]:
        """
        Bytes used per day from ``since`` to ``until`` (dates, inclusive), for one SIM or a product's SIMs.
        """
        ...

    async def record_usage(self, rows: Sequence[UsageRow]) -> int:
        """
        Store each reading, replacing an earlier one of the same SIM and day; a row naming a device makes it
        the SIM's last device. Rows of unregistered ICCIDs are skipped; returns how many were stored.
        """
        ...


class GroupRepository(Protocol):
    async def list_for_product(
        self, product_id: int, name_contains: str | None = None
    ) -> Sequence[DeviceGroup]:
        """
        The product's groups by name, with their device counts; ``name_contains`` filters literally.
        """
        ...

    async def names_by_product(self, product_ids: Sequence[int]) -> dict[int, list[str]]: ...

    async def get(self, product_id: int, name: str) -> DeviceGroup | None: ...

    async def add(
        self, product_id: int, *, name: str, description: str | None, color: str, now: datetime
    ) -> DeviceGroup:
        """
        Raises `errors.Conflict` when the product has a group of that name.
        """
        ...

    async def update(self, group: DeviceGroup, **changes: Any) -> DeviceGroup: ...

    async def delete(self, group: DeviceGroup) -> None: ...

    async def count(self, product_id: int) -> int: ...


class ProductFirmwareRepository(Protocol):
    """
    A product's firmware versions and their releases (decision 0025).
    """

    async def list_for_product(self, product_id: int) -> list[ProductFirmware]:
        """
        Newest version first, with the groups each is released to.
        """
        ...

    async def get(self, product_id: int, version: int) -> ProductFirmware | None: ...

    async def add(self, values: dict[str, Any]) -> None:
        """
        Raises `errors.Conflict` when the product has that version already.
        """
        ...

    async def update(self, firmware_id: int, **changes: Any) -> None: ...

    async def delete(self, firmware_id: int) -> None: ...

    async def release(
        self,
        firmware: ProductFirmware,
        *,
        product_default: bool | None,
        group_ids: Sequence[int] | None,
        intelligent: bool,
        now: datetime,
    ) -> None: ...

    async def releases(self, product_id: int) -> list[Release]: ...

    async def fleet(self, product_id: int, device_ids: Sequence[str] | None = None) -> list[FleetDevice]: ...

    async def device_counts(self, product_id: int) -> dict[int, int]: ...


@dataclass(frozen=True, slots=True)
class DtlsSessionRow:
    """
    One kept DTLS session of the UDP gateway (ADR 0027): ``state`` is `SessionState.to_dict()` as JSON text
    (the store does not read it), ``reserved`` the send sequence number it may have reached.
    """

    device_id: str
    cid: bytes | None
    state: str
    hello: bytes
    reserved: int


class DtlsSessionRepository(Protocol):
    """The UDP gateway's kept sessions, one per device."""

    async def all(self) -> Sequence[DtlsSessionRow]: ...

    async def put_many(self, rows: Sequence[DtlsSessionRow], at: datetime) -> None:
        """Insert or replace the rows (one per device)."""
        ...

    async def remove(self, device_ids: Sequence[str]) -> None: ...


class VitalsRepository(Protocol):
    """
    Device vitals reports, each kept under the owner and/or product the device had when it reported; reports
    of past hours are compacted (`compact`) into one row per device and hour. Reads take a scope: a user
    (reports made under that owner) or a product (reports made in that product).
    """

    async def add(
        self,
        device_id: str,
        owner_id: int | None,
        product_id: int | None,
        at: datetime,
        payload: dict[str, Any],
    ) -> None: ...

    async def add_many(
        self, rows: Sequence[tuple[str, int | None, int | None, datetime, dict[str, Any]]]
    ) -> None:
        """
        Insert (device id, owner id, product id, at, payload) rows in one statement (executemany).
        """
        ...

    async def latest(self, device_id: str, scope: Account) -> VitalsRecord | None: ...

    async def between(
        self, device_id: str, scope: Account, start: datetime, end: datetime, *, limit: int
    ) -> list[VitalsRecord]:
        """
        Reports made in ``[start, end)``, oldest first, at most ``limit`` + 1 (more means: too many).
        """
        ...

    async def history_json(
        self, device_id: str, scope: Account, start: datetime, end: datetime, *, limit: int
    ) -> tuple[int, list[bytes]]:
        """
        (reports, pieces) of ``[start, end)``: the history answer's items already rendered (UTF-8), as
        comma-joined pieces in order (joined with commas they are the ``diagnostics`` array's text);
        counting stops past ``limit``.
        """
        ...

    async def compact(self, before: datetime, *, batch: int = 20_000) -> int:
        """
        Fold up to ``batch`` reports made before ``before`` into their hours' rows; returns how many.
        """
        ...

    async def prune(self, before: datetime) -> int: ...


class LibraryRepository(Protocol):
    """
    Firmware libraries and their versions (decision 0019). Names are looked up by their lower-cased key.
    """

    async def get_by_name(self, key: str) -> Library | None: ...

    async def add(self, name: str, key: str, *, owner_id: int, now: datetime) -> Library:
        """
        Insert a library. Raises `errors.Conflict` when the name is taken (in any case).
        """
        ...

    async def latest_version(
        self, library_id: int, *, visibility: Visibility | None = None
    ) -> LibraryVersion | None: ...

    async def get_version(self, library_id: int, version: str) -> LibraryVersion | None: ...

    async def list_versions(
        self, library_id: int, *, visibility: Visibility | None, offset: int, limit: int
    ) -> Sequence[LibraryVersion]:
        """
        Oldest version first.
        """
        ...

    async def add_version(
        self,
        library_id: int,
        metadata: LibraryMetadata,
        *,
        archive_key: str,
        download_key: str,
        size: int,
        sha256: str,
        now: datetime,
    ) -> LibraryVersion:
        """
        Insert a private version. Raises `errors.Conflict` when that version exists.
        """
        ...

    async def publish(self, version_id: int, library_id: int, *, now: datetime) -> None: ...

    async def delete(self, library_id: int) -> list[str]:
        """
        Remove a library with its versions; returns their archive keys.
        """
        ...

    async def by_download_key(self, download_key: str) -> LibraryVersion | None: ...

    async def set_flags(self, library_id: int, **flags: bool) -> None:
        """
        Set ``official`` and/or ``verified``.
        """
        ...

    async def count_install(self, library_id: int) -> None: ...

    async def search(self, query: LibraryQuery) -> Sequence[LibraryView]: ...


class UsageRepository(Protocol):
    """
    Usage counters (per device, day and writer), usage report jobs, notifications of crossed limits.
    """

    async def write(self, rows: Sequence[CounterRow]) -> None:
        """
        Replace each row's (device, day, writer) counts with the row's (absolute values: idempotent).
        """
        ...

    async def accounts_of(self, device_ids: Sequence[str]) -> dict[str, tuple[int | None, int | None]]:
        """
        device id → (owner id, product id) for the devices that exist.
        """
        ...

    async def owned_devices(self, account: Account) -> int: ...

    async def totals(self, account: Account, start: date, end: date) -> tuple[int, int, int, int, int]:
        """
        (devices counted, events, calls, reads, data bytes) over the days ``[start, end]``.
        """
        ...

    async def days(
        self,
        account: Account,
        start: date,
        end: date,
        *,
        device_ids: Sequence[str] = (),
        product_ids: Sequence[int] = (),
    ) -> list[DeviceDay]: ...

    async def add_report(self, report: UsageReport, created_at: datetime, expires_at: datetime) -> None: ...

    async def report(self, report_id: str) -> UsageReport | None: ...

    async def pending_reports(self) -> list[UsageReport]: ...

    async def finish_report(
        self, report_id: str, *, state: str, content: str | None, key: str | None
    ) -> None: ...

    async def report_content(self, report_id: str, key: str, now: datetime) -> str | None: ...

    async def prune_reports(self, now: datetime) -> int: ...

    async def has_notification(self, account: Account, period_start: date, limit: str) -> bool: ...

    async def add_notification(self, notice: UsageNotification, created_at: datetime) -> None: ...

    async def notifications(self, account: Account) -> list[UsageNotification]: ...


class UnitOfWork(Protocol):
    @property
    def users(self) -> UserRepository: ...

    @property
    def tokens(self) -> TokenRepository: ...

    @property
    def clients(self) -> ClientRepository: ...

    @property
    def secrets(self) -> OneTimeSecretRepository: ...

    @property
    def devices(self) -> DeviceRepository: ...

    @property
    def pending_keys(self) -> PendingKeyRepository: ...

    @property
    def nodes(self) -> NodeRepository: ...

    @property
    def claim_codes(self) -> ClaimCodeRepository: ...

    @property
    def customers(self) -> CustomerRepository: ...

    @property
    def webhooks(self) -> WebhookRepository: ...

    @property
    def libraries(self) -> LibraryRepository: ...

    @property
    def deliveries(self) -> DeliveryRepository: ...

    @property
    def vitals(self) -> VitalsRepository: ...

    @property
    def dtls_sessions(self) -> DtlsSessionRepository: ...

    @property
    def products(self) -> ProductRepository: ...

    @property
    def groups(self) -> GroupRepository: ...

    @property
    def product_devices(self) -> ProductDeviceRepository: ...

    @property
    def product_firmware(self) -> ProductFirmwareRepository: ...

    @property
    def sims(self) -> SimRepository: ...

    @property
    def usage(self) -> UsageRepository: ...


class Store(Protocol):
    def transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[UnitOfWork]:
        """
        Open a transaction; commit on normal exit, roll back on exception. ``readonly`` promises no writes,
        which lets a backend run it beside writers (SQLite: a deferred rather than an immediate lock).
        """
        ...

    async def lookup_token(self, token_hash: str) -> tuple[AccessToken, User | None] | None:
        """
        The request hot path: a token by hash with its user (None for a product's token), as one indexed
        read outside any unit of work.
        """
        ...

    async def lookup_device(self, device_id: str, *, timeout: float | None = None) -> Device | None:
        """
        A device by id, outside any unit of work: the first read of every device request. ``timeout``: the
        most seconds the read may wait for the database (then `TimeoutError`); a read that needs no wait is
        never cut short.
        """
        ...

    async def lookup_device_key(
        self, device_id: str, *, timeout: float | None = None
    ) -> DeviceKeyRecord | None:
        """
        What a connecting device's key check needs of its record (the one read of a connection, ADR 0010),
        outside any unit of work; ``timeout`` as for `lookup_device`.
        """
        ...

    async def lookup_device_for(self, device_id: str, user_id: int) -> tuple[Device, Role | None] | None:
        """
        A device by id and ``user_id``'s role in the device's product (None when the device is in no product
        or the user is not in its team), as one indexed read outside any unit of work: the first read of a
        user's request on the device routes, which lets a team member's request cost what an owner's does.
        """
        ...

    async def lookup_membership(self, device_id: str) -> tuple[int, int | None, int | None] | None:
        """
        (product id, product firmware version, customer id) of the device's product membership (the customer
        that claimed it, or None), or None when it is in no product: one indexed read outside any unit of
        work (the events service caches it per connection).
        """
        ...

    async def close(self) -> None: ...
