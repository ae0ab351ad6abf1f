"""
Usage (catalogue §17, decision 0026): what devices do, counted without a database write on their paths, and
the service agreements, usage reports and notifications made from those counts.

Theory of operation:
    - `UsageBook` counts in memory, per device and UTC day: connected (a Hello), events the device published
      (accepted by the cloud), function calls and variable reads it answered, and the bytes they carried.
      Counting is a dict update; the first change asks the shared `WriteBehind` timer for a flush
      (``flush_interval`` later on the injected clock), as the presence book does.
    - A flush writes, in ONE transaction, every changed (device, day) as an absolute row under this
      process's writer id (node id + a random incarnation): replacing the row makes a retried flush count
      once, and the rows of two processes (two nodes, or a restart) add up. The device's owner and product
      are read in the same transaction and stored with the row: usage belongs to the accounts the device
      had when it was written. A failed flush is logged and its rows stay dirty for the next one. Days
      before today are forgotten once written.
    - After a flush, the accounts it touched are checked against their limits for the current billing
      period (a calendar month); a limit crossed for the first time in the period makes a notification
      (``GET …/notifications``) and a mail to the account's people.
    - Usage reports are jobs: ``POST …/usage_reports`` stores a pending report and answers 202; a task makes
      the CSV (one row per device, or per product, and day), stores it and marks the report available with
      a download link keyed by a random secret. Reports left pending by a stopped process are made at the
      next start.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.access import Role
from devicecloud.domain.accounts import User
from devicecloud.domain.timestamps import iso
from devicecloud.domain.usage import (
    LIMIT_EVENT,
    REPORT_TYPES,
    Account,
    CounterRow,
    DeviceCounts,
    UsageLimits,
    UsageNotification,
    UsageReport,
    UsageTotals,
    billing_period,
    report_csv,
)
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied
from devicecloud.services.product_access import access_product
from devicecloud.services.write_behind import WriteBehind

if TYPE_CHECKING:
    from devicecloud.clock import Clock, TimerHandle
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.services.ports import Notifier
    from devicecloud.store.interfaces import Store, UnitOfWork

logger = structlog.get_logger("devicecloud.usage")

MAX_REPORT_DAYS = 366


@dataclass(frozen=True, slots=True)
class UsagePolicy:
    limits: UsageLimits = field(default_factory=UsageLimits)
    flush_interval: float = 1.0
    report_lifetime: timedelta = timedelta(days=7)
    # Seconds between two limit checks of one account (each check sums its month: two reads).
    limit_check_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class UsageStatistics:
    """
    Attributes:
        tracked: (device, day) counters held.
        dirty: counters changed since their last write.
        flushes: flushes that wrote something.
        rows_written: rows written over all flushes.
        flush_failures: flushes that failed (their counters stayed dirty).
    """

    tracked: int
    dirty: int
    flushes: int
    rows_written: int
    flush_failures: int


class UsageBook:
    """
    Per device and day counters kept in memory and written behind (see the module docstring).
    """

    def __init__(
        self, *, store: Store, clock: Clock, flush_interval: float = 1.0, node_id: str | None
    ) -> None:
        self._store = store
        self._clock = clock
        self.writer = f"{node_id or 'local'}/{uuid.uuid4().hex[:12]}"
        self._counts: dict[tuple[str, date], DeviceCounts] = {}
        self._dirty: set[tuple[str, date]] = set()
        self._flushing = asyncio.Lock()
        self._writer = WriteBehind(
            clock=clock,
            interval=flush_interval,
            flush=self.flush,
            pending=lambda: bool(self._dirty),
            name="usage-flush",
        )
        #: Called after each successful flush with the accounts it touched (limits are checked there).
        self.on_flushed: Callable[[set[Account]], Awaitable[None]] | None = None
        self._flushes = 0
        self._rows = 0
        self._failures = 0

    # ------------------------------------------------------------------ counting (device paths: no I/O)

    def _entry(self, device_id: str) -> DeviceCounts:
        key = (device_id, self._clock.now().date())
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = DeviceCounts()
        self._dirty.add(key)
        self._writer.schedule()
        return counts

    def connected(self, device_id: str) -> None:
        self._entry(device_id).connected = True

    def event(self, device_id: str, size: int) -> None:
        counts = self._entry(device_id)
        counts.events += 1
        counts.data_bytes += size

    def call(self, device_id: str, size: int) -> None:
        counts = self._entry(device_id)
        counts.calls += 1
        counts.data_bytes += size

    def read(self, device_id: str, size: int) -> None:
        counts = self._entry(device_id)
        counts.reads += 1
        counts.data_bytes += size

    def statistics(self) -> UsageStatistics:
        return UsageStatistics(
            tracked=len(self._counts),
            dirty=len(self._dirty),
            flushes=self._flushes,
            rows_written=self._rows,
            flush_failures=self._failures,
        )

    # ------------------------------------------------------------------ writing behind

    async def flush(self) -> int:
        """
        Write every changed counter now (one transaction); never raises. Returns the rows written.
        """
        async with self._flushing:
            keys, self._dirty = self._dirty, set()
            if not keys:
                return 0
            snapshot = {key: DeviceCounts(**_fields(self._counts[key])) for key in keys}
            try:
                async with self._store.transaction() as tx:
                    accounts = await tx.usage.accounts_of(sorted({device for device, _ in keys}))
                    rows = [
                        CounterRow(
                            device_id=device_id,
                            day=day,
                            writer=self.writer,
                            owner_id=accounts.get(device_id, (None, None))[0],
                            product_id=accounts.get(device_id, (None, None))[1],
                            connected=counts.connected,
                            events=counts.events,
                            calls=counts.calls,
                            reads=counts.reads,
                            data_bytes=counts.data_bytes,
                        )
                        for (device_id, day), counts in sorted(snapshot.items())
                    ]
                    await tx.usage.write(rows)
            except Exception:
                self._failures += 1
                logger.exception("writing usage counters failed; retrying later", counters=len(keys))
                self._dirty |= keys
                self._writer.schedule()
                return 0
            self._flushes += 1
            self._rows += len(rows)
            today = self._clock.now().date()
            for key in keys:
                if key[1] < today and key not in self._dirty:
                    self._counts.pop(key, None)  # a past day is final once written
            touched = {Account("user", r.owner_id) for r in rows if r.owner_id is not None}
            touched |= {Account("product", r.product_id) for r in rows if r.product_id is not None}
            if self.on_flushed is not None and touched:
                try:
                    await self.on_flushed(touched)
                except Exception:
                    logger.exception("checking usage limits failed")
            return len(rows)

    def reopen(self) -> None:
        self._writer.reopen()

    async def close(self) -> None:
        """
        Stop scheduling and write what is left (after the gateway stopped). Idempotent.
        """
        await self._writer.close()


def _fields(counts: DeviceCounts) -> dict[str, Any]:
    return {
        "connected": counts.connected,
        "events": counts.events,
        "calls": counts.calls,
        "reads": counts.reads,
        "data_bytes": counts.data_bytes,
    }


def _bad(description: str) -> InvalidInput:
    return InvalidInput(description, code="bad_request")


def _parse_day(value: Any, name: str) -> date:
    if not isinstance(value, str) or len(value) > 40:
        raise _bad(f"{name} must be a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise _bad(f"{name} must be a date (YYYY-MM-DD)") from None


def _string_list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > 1000 or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in items):
        raise _bad(f"{name} must be a list of ids")
    return [str(i) for i in items]


class UsageService:
    """
    Service agreements, usage reports and notifications (see the module docstring).
    """

    def __init__(
        self, *, store: Store, clock: Clock, book: UsageBook, notifier: Notifier, policy: UsagePolicy
    ) -> None:
        self._store = store
        self._clock = clock
        self._book = book
        self._notifier = notifier
        self._policy = policy
        self._jobs: set[asyncio.Task[None]] = set()
        self._checked: dict[Account, float] = {}  # account → monotonic time of its last limit check
        self._later: set[Account] = set()  # accounts touched while checked recently: checked when due
        self._later_timer: TimerHandle | None = None
        book.on_flushed = self.check_limits

    @property
    def book(self) -> UsageBook:
        return self._book

    async def flush(self) -> int:
        """Write the counters now (tests; the book's timer does it ``flush_interval`` after a change)."""
        return await self._book.flush()

    # ------------------------------------------------------------------ whose agreement

    async def _account(
        self, tx: UnitOfWork, principal: AnyPrincipal | User, product: str | None, action: str
    ) -> tuple[Account, str, datetime]:
        """
        The account a route is about: (account, its name, when it started). User routes pass the person
        (their token's scope was checked at the door); product routes any principal, checked here.
        """
        if isinstance(principal, User):
            return Account("user", principal.id), "Sandbox", principal.created_at
        if product is None:
            raise PermissionDenied("Service agreements of a product are read under /v1/products/:product")
        found = await access_product(tx, principal, product, action, "product")
        return Account("product", found.product.id), found.product.name, found.product.created_at

    @staticmethod
    def _agreement_id(account: Account, agreement_id: str) -> None:
        if agreement_id != str(account.id):
            raise NotFound("Service agreement not found", code="not_found")

    # ------------------------------------------------------------------ agreements

    async def totals(self, account: Account) -> UsageTotals:
        period = billing_period(self._clock.now().date())
        async with self._store.transaction(readonly=True) as tx:
            owned = await tx.usage.owned_devices(account)
            billable, events, calls, reads, data = await tx.usage.totals(account, period.start, period.end)
        return UsageTotals(owned, billable, events, calls, reads, data)

    async def agreements(self, principal: AnyPrincipal | User, product: str | None = None) -> dict[str, Any]:
        async with self._store.transaction(readonly=True) as tx:
            account, name, started = await self._account(tx, principal, product, "service_agreements:list")
        totals = await self.totals(account)
        limits = self._policy.limits
        period = billing_period(self._clock.now().date())
        attributes = {
            "owner_id": str(account.id),
            "owner_type": "individual" if account.kind == "user" else "product",
            "name": name,
            "agreement_type": "developer",
            "duration": "monthly",
            "state": "active",
            "starts_on": started.date().isoformat(),
            "ends_on": None,
            "current_billing_period_start": period.start.isoformat(),
            "current_billing_period_end": period.end.isoformat(),
            "next_billing_period_start": period.next_start.isoformat(),
            "current_usage_summary": {
                "device_limit_reached": totals.owned_devices >= limits.max_devices,
                "connectivity": {
                    "all": {
                        "owned_devices": totals.owned_devices,
                        "billable_devices": totals.billable_devices,
                        "device_data": totals.data_bytes,
                        "device_messages": totals.device_messages,
                    }
                },
            },
            "pricing_terms": {
                "device": {"name": "device", "duration": "monthly", "max_devices": limits.max_devices},
                "messaging": {"max_messages": limits.max_messages},
                "device_data": {"uom": "bytes", "max_data": limits.max_data},
            },
        }
        return {"data": [{"id": str(account.id), "type": "service_agreement", "attributes": attributes}]}

    # ------------------------------------------------------------------ reports

    async def create_report(
        self,
        principal: AnyPrincipal | User,
        agreement_id: str,
        params: dict[str, Any],
        product: str | None = None,
    ) -> UsageReport:
        async with self._store.transaction() as tx:
            account, _, _ = await self._account(
                tx, principal, product, "service_agreements.usage_reports:create"
            )
            self._agreement_id(account, agreement_id)
            report_type = params.get("report_type")
            if report_type not in REPORT_TYPES:
                raise _bad(f"report_type must be one of: {', '.join(REPORT_TYPES)}")
            start = _parse_day(params.get("date_period_start"), "date_period_start")
            end = _parse_day(params.get("date_period_end"), "date_period_end")
            if end < start:
                raise _bad("date_period_end must not be before date_period_start")
            if (end - start).days >= MAX_REPORT_DAYS:
                raise _bad(f"A report covers at most {MAX_REPORT_DAYS} days")
            devices = _string_list(params.get("devices"), "devices")
            products = _string_list(params.get("products"), "products")
            if not all(p.isdigit() for p in products):
                raise _bad("products must be a list of product ids")
            now = self._clock.now()
            report = UsageReport(
                id=str(uuid.uuid4()),
                account=account,
                state="pending",
                report_type=str(report_type),
                date_period_start=start,
                date_period_end=end,
                devices=tuple(devices),
                products=tuple(int(p) for p in products),
                created_at_iso=iso(now) or "",
                expires_at_iso=iso(now + self._policy.report_lifetime) or "",
                download_key=None,
            )
            await tx.usage.add_report(report, now, now + self._policy.report_lifetime)
        self._run(report)
        return report

    def _run(self, report: UsageReport) -> None:
        task = asyncio.get_running_loop().create_task(self._make(report), name=f"usage-report-{report.id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _make(self, report: UsageReport) -> None:
        await self._book.flush()  # the counts so far are in the report
        try:
            async with self._store.transaction() as tx:
                days = await tx.usage.days(
                    report.account,
                    report.date_period_start,
                    report.date_period_end,
                    device_ids=report.devices,
                    product_ids=report.products,
                )
                content = report_csv(report.report_type, days)
                await tx.usage.finish_report(
                    report.id, state="available", content=content, key=secrets.token_hex(16)
                )
        except Exception:
            logger.exception("making a usage report failed", report=report.id)
            async with self._store.transaction() as tx:
                await tx.usage.finish_report(report.id, state="failed", content=None, key=None)

    async def report(
        self, principal: AnyPrincipal | User, report_id: str, product: str | None = None
    ) -> UsageReport:
        async with self._store.transaction(readonly=True) as tx:
            account, _, _ = await self._account(
                tx, principal, product, "service_agreements.usage_reports:get"
            )
            report = await tx.usage.report(report_id)
        if report is None or report.account != account:
            raise NotFound("Usage report not found", code="not_found")
        return report

    async def download(self, report_id: str, key: str) -> str:
        async with self._store.transaction(readonly=True) as tx:
            content = await tx.usage.report_content(report_id, key, self._clock.now())
        if content is None:
            raise NotFound("Usage report not found", code="not_found")
        return content

    async def idle(self) -> None:
        """Wait for the report jobs running now (tests, shutdown)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def start(self) -> None:
        """Make the reports a stopped process left pending; drop expired ones."""
        self._book.reopen()
        async with self._store.transaction() as tx:
            await tx.usage.prune_reports(self._clock.now())
            pending = await tx.usage.pending_reports()
        for report in pending:
            self._run(report)

    async def stop(self) -> None:
        await self._book.close()
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        await self.idle()

    # ------------------------------------------------------------------ limits and notifications

    async def check_limits(self, accounts: set[Account]) -> None:
        """
        After a flush: a limit an account crossed for the first time in this period is noted and mailed.
        An account is checked at most once per ``limit_check_interval``; one touched meanwhile is checked
        when the interval is over (a timer), so a crossing is found at most that much later.
        """
        period = billing_period(self._clock.now().date())
        now = self._clock.monotonic()
        horizon = now - self._policy.limit_check_interval
        self._checked = {a: at for a, at in self._checked.items() if at > horizon}
        for account in sorted(accounts, key=lambda a: (a.kind, a.id)):
            last = self._checked.get(account)
            if last is not None:  # checked within the interval: again once it is over
                self._later.add(account)
                if self._later_timer is None:
                    self._later_timer = self._clock.call_at(
                        last + self._policy.limit_check_interval, self._check_later
                    )
                continue
            self._checked[account] = now
            crossed = self._policy.limits.crossed(await self.totals(account))
            if not crossed:
                continue
            fresh: list[UsageNotification] = []
            async with self._store.transaction() as tx:
                for limit, (used, allowed) in crossed.items():
                    if await tx.usage.has_notification(account, period.start, limit):
                        continue
                    notice = UsageNotification(
                        id=str(uuid.uuid4()),
                        account=account,
                        event_name=LIMIT_EVENT,
                        period_start=period.start,
                        period_end=period.end,
                        limit=limit,
                        used=used,
                        allowed=allowed,
                        created_at_iso=iso(self._clock.now()) or "",
                    )
                    await tx.usage.add_notification(notice, self._clock.now())
                    fresh.append(notice)
                people = await self._people(tx, account) if fresh else []
            for notice in fresh:
                logger.warning(
                    "usage limit reached",
                    account=f"{account.kind}:{account.id}",
                    limit=notice.limit,
                    used=notice.used,
                    allowed=notice.allowed,
                )
                for email in people:
                    await self._notifier.send_usage_alert(
                        email=email,
                        account=f"{account.kind} {account.id}",
                        limit=notice.limit,
                        used=notice.used,
                        allowed=notice.allowed,
                    )

    def _check_later(self) -> None:
        self._later_timer = None
        accounts, self._later = self._later, set()
        if accounts:
            task = asyncio.get_running_loop().create_task(self._check_quietly(accounts), name="usage-limits")
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _check_quietly(self, accounts: set[Account]) -> None:
        try:
            await self.check_limits(accounts)
        except Exception:
            logger.exception("checking usage limits failed")

    @staticmethod
    async def _people(tx: UnitOfWork, account: Account) -> list[str]:
        if account.kind == "user":
            user = await tx.users.get(account.id)
            return [user.username] if user is not None else []
        return [m.username for m in await tx.products.members(account.id) if m.role is Role.OWNER]

    async def notifications(
        self, principal: AnyPrincipal | User, agreement_id: str, product: str | None = None
    ) -> dict[str, Any]:
        async with self._store.transaction(readonly=True) as tx:
            account, _, _ = await self._account(
                tx, principal, product, "service_agreements.notifications:list"
            )
            self._agreement_id(account, agreement_id)
            notices = await tx.usage.notifications(account)
        return {
            "data": [
                {
                    "id": n.id,
                    "type": "notification",
                    "attributes": {
                        "state": "active",
                        "event_name": n.event_name,
                        "time_period": f"{n.period_start.isoformat()}/{n.period_end.isoformat()}",
                        "created_at": n.created_at_iso,
                        "resource_id": str(account.id),
                        "resource_type": "ServiceAgreement",
                        "details": {"limit": n.limit, "used": n.used, "allowed": n.allowed},
                    },
                }
                for n in notices
            ]
        }
