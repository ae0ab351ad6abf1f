"""
Webhook delivery: from the bus to the outbox, from the outbox to the targets, and back as hook events.

Theory of operation — four tasks, none of which ever waits on another's I/O:
- *intake* takes every non-``hook-*`` event off the bus (a bounded subscription) into a list; it never
  awaits anything but the bus, so the event pipeline never waits on webhooks;
- *writer* turns what intake gathered into outbox rows (one transaction per batch: the matching hooks and the
  host each targets) and wakes the claimer. Once a row is written, a crash loses nothing;
- *claimer* leases due rows from the outbox, as many as there is room for (``max_in_flight``), leaving those
  of hosts whose in-memory queue is full where they are; it renders each request and hands it to its host's
  queue, or — when the host is sleeping after too many errors — books it as skipped;
- each request runs in its own task, at most the host's adaptive limit at a time (`throttle.HostThrottle`);
  outcomes are gathered and booked in batches by *recorder* (`WebhookService.record`: delete or reschedule,
  logs, hook events).
Poison never spreads: an event, a row or an attempt that cannot be handled ends alone (a logged drop, or an
outcome booked like any failure), and a batch that fails to be written or booked is retried item by item, so
no task stops and no other delivery waits on it. Every claimed delivery is *held* until its outcome is
booked, and only what is held has its lease renewed; the held set is checked against what is really queued,
being sent or being booked, so a delivery this process lost track of goes back to the outbox when its lease
runs out instead of being renewed forever.
The clock is injected: retry times and host sleeps follow it, so tests drive them without sleeping; the
claimer also polls every ``poll_interval`` seconds of real time for retries that came due.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import structlog

from devicecloud.domain.events import CloudEvent
from devicecloud.domain.text import is_valid_text
from devicecloud.domain.webhooks import (
    Delivery,
    DeliveryOutcome,
    HookEvent,
    Webhook,
    WebhookConfig,
    event_problem,
)
from devicecloud.services.webhooks import hook_event
from devicecloud.webhooks.http import DeliveryError, HttpSender, Response
from devicecloud.webhooks.templating import (
    OutgoingRequest,
    TemplateError,
    build_request,
    check_templates,
    error_events,
    event_context,
    render,
    response_events,
)
from devicecloud.webhooks.throttle import SLEEPING_MESSAGE, HostThrottle, ThrottlePolicy

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import IntakeSubscription
    from devicecloud.clock import Clock
    from devicecloud.services.webhooks import WebhookService

logger = structlog.get_logger("devicecloud.webhooks")
GATHER = 0.005  # seconds the writer and recorder wait for more work before a transaction
BATCH_FULL = 200  # ... unless this much is already waiting
BOOK_BATCH = 500
OUTAGE_AFTER = 3  # items failing alone in a row, none done, that mean the store (not an item) is failing
T = TypeVar("T")
Rows = list[tuple[Webhook, HookEvent, str]]


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    max_in_flight: int = 2000  # deliveries held in memory (queued per host or being sent)
    claim_batch: int = 500
    intake_bound: int = 100_000  # events the intake may fall behind before the bus drops it
    poll_interval: float = 1.0
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)


def target_host(config: WebhookConfig, event: HookEvent) -> str:
    """
    The host a hook's request for ``event`` goes to ("" when its URL template does not render to one).
    """
    try:
        host = (urlsplit(render(config.url, event_context(event))).hostname or "").lower()
    except Exception:  # only throttling uses it: the request itself reports the problem
        return ""
    return host if host.isprintable() and is_valid_text(host) else ""


async def each_alone(items: Sequence[T], action: Callable[[Sequence[T]], Awaitable[None]]) -> list[T]:
    """
    ``action`` on all ``items`` at once (one transaction); when that fails, on each item alone, so one bad
    item fails by itself. Returns the items that failed. When the first few alone fail too, the store itself
    is failing, not an item: the rest are returned untried rather than waited on one by one.
    """
    try:
        await action(items)
        return []
    except Exception:
        if len(items) == 1:
            logger.exception("webhook item failed")
            return list(items)
        logger.exception("webhook batch failed; retrying its items one by one", items=len(items))
    failed: list[T] = []
    for index, item in enumerate(items):
        if len(failed) == index == OUTAGE_AFTER:
            logger.error("webhook items not retried: the store is failing", items=len(items) - index)
            return [*failed, *items[index:]]
        try:
            await action([item])
        except Exception:
            logger.exception("webhook item failed")
            failed.append(item)
    return failed


class WebhookDispatcher:
    """
    Implements `services.ports.WebhookRunner` too (template checks, test requests).
    """

    def __init__(
        self,
        service: WebhookService,
        *,
        clock: Clock,
        sender: HttpSender,
        policy: DispatchPolicy | None = None,
    ) -> None:
        self._service = service
        self._clock = clock
        self._sender = sender
        self.policy = policy or DispatchPolicy()
        self._throttle = HostThrottle(self.policy.throttle)
        self._incoming: list[CloudEvent] = []
        self._intake_subscription: IntakeSubscription | None = None  # acknowledged once written
        self._incoming_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._outcomes: list[DeliveryOutcome] = []
        self._outcomes_ready = asyncio.Event()
        self._held: set[int] = set()  # delivery ids claimed and not yet booked
        self._sending: set[int] = set()  # ... of those, being sent
        self._booking: set[int] = set()  # ... being booked
        self._renewed_at = 0.0
        self._claim_passes_started = 0
        self._claim_passes_done = 0
        self._outcomes_counted = {"sent": 0, "retry": 0, "failed": 0, "skipped": 0}
        self._events_dropped = 0  # events that could not become outbox rows (each logged)
        self._tasks: list[asyncio.Task[None]] = []
        self._requests: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ------------------------------------------------------------------ WebhookRunner

    def check(self, config: WebhookConfig) -> None:
        check_templates(config)

    async def test(self, hook: Webhook, event: HookEvent) -> str | None:
        try:
            request = build_request(hook.config, event)
            response = await self._sender.send(request, verify_tls=hook.config.reject_unauthorized)
        except (TemplateError, DeliveryError) as exc:
            return str(exc)
        except Exception as exc:  # e.g. a rendered header the HTTP library refuses
            return f"request could not be made: {exc}"
        if response.status >= 300:
            return f"error status {response.status} from {request.host}"
        return None

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        if self._tasks:
            return
        self._stopping = False
        for name, loop in (
            ("intake", self._intake),
            ("writer", self._writer),
            ("claimer", self._claimer),
            ("recorder", self._recorder),
        ):
            self._tasks.append(asyncio.create_task(self._guard(name, loop), name=f"webhooks-{name}"))

    async def stop(self) -> None:
        """
        Stop taking work, write what intake holds, cancel requests in flight (their rows come back when the
        lease runs out) and book what finished.
        """
        self._stopping = True
        if self._intake_subscription is not None:
            self._intake_subscription.close("stopping")  # what it has not handed over goes to another node
        try:
            await self._flush_incoming()
        except Exception:  # shutting down anyway: what is not written is logged, not raised
            logger.exception(
                "webhook events not written to the outbox at shutdown", events=len(self._incoming)
            )
        for task in [*self._tasks, *self._requests]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._requests, return_exceptions=True)
        self._tasks.clear()
        self._requests.clear()
        try:
            await self._book()
        except Exception:  # the rows stay leased and come back when the lease runs out
            logger.exception("webhook outcomes not booked at shutdown")
        await self._sender.close()

    def poke(self) -> None:
        """
        Look at the outbox now (after enqueueing, or when a test moved the clock).
        """
        self._wake.set()

    async def idle(self) -> bool:
        """
        True when nothing is in memory: no event waiting to be written, nothing claimed.
        """
        return not self._incoming and not self._held and not self._outcomes

    def statistics(self) -> dict[str, int]:
        """
        Running totals of the claimer's passes over the outbox: ``claim_passes_started`` and
        ``claim_passes_done`` (one pass at a time, so a pass numbered above what had started when ``poke()``
        was called began after it: once that many are done, the outbox was looked at since); deliveries
        ``held`` and events ``incoming`` now; attempts by how they ended (``outcomes_<sent|retry|failed|
        skipped>``); ``events_dropped``: events that could not be written to the outbox (each also logged).
        """
        return {
            "claim_passes_started": self._claim_passes_started,
            "claim_passes_done": self._claim_passes_done,
            "held": len(self._held),
            "incoming": len(self._incoming),
            **{f"outcomes_{kind}": count for kind, count in self._outcomes_counted.items()},
            "events_dropped": self._events_dropped,
        }

    async def _guard(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("webhook task failed; restarting it", task=name)
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ bus → outbox

    def _is_stopping(self) -> bool:
        return self._stopping

    async def _intake(self) -> None:
        while not self._is_stopping():
            subscription = self._service.subscribe_all(self.policy.intake_bound)
            self._intake_subscription = subscription
            async for event in subscription:
                self._incoming.append(event)
                self._incoming_ready.set()
            if self._is_stopping():
                return
            logger.error(
                "webhook intake fell behind and was dropped; resubscribing", reason=subscription.closed_reason
            )

    async def _writer(self) -> None:
        while True:
            await self._incoming_ready.wait()
            if len(self._incoming) < BATCH_FULL:
                await asyncio.sleep(GATHER)  # one transaction for what arrives meanwhile, not one per event
            self._incoming_ready.clear()
            await self._flush_incoming()

    async def _flush_incoming(self) -> None:
        while self._incoming:
            batch, self._incoming = self._incoming[:2000], self._incoming[2000:]
            per_event = [rows for event in batch if (rows := await self._rows_for(event))]
            if per_event:
                for rows in await each_alone(per_event, self._enqueue):
                    self._events_dropped += 1
                    logger.error("webhook event dropped", owner=rows[0][0].owner_id, problem="not written")
                self._wake.set()
            if self._intake_subscription is not None:
                await self._intake_subscription.acknowledge(batch)  # in the outbox now (or never will be)

    async def _enqueue(self, per_event: Sequence[Rows]) -> None:
        await self._service.enqueue([row for rows in per_event for row in rows])

    async def _rows_for(self, event: CloudEvent) -> Rows:
        """
        The outbox rows ``event`` makes: one per hook it triggers; none (and a log line) if it cannot be sent.
        """
        try:
            hooks = await self._service.matching(event)
            if not hooks:
                return []
            stored = hook_event(event)
            problem = event_problem(stored)
            if problem is None:
                return [(hook, stored, target_host(hook.config, stored)) for hook in hooks]
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        # ascii(): the name may be the very text that is not valid
        name = ascii(event.name[:64])
        self._events_dropped += 1
        logger.error("webhook event dropped", owner=event.owner_id, name=name, problem=problem)
        return []

    # ------------------------------------------------------------------ outbox → targets

    async def _claimer(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that comes as the event
            # is set, and stop() then waits for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.policy.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            self._claim_passes_started += 1
            await self._claim_pass()
            self._claim_passes_done += 1

    async def _claim_pass(self) -> None:
        self._throttle.forget_idle(self._clock.monotonic())
        await self._renew_leases()
        while (room := self.policy.max_in_flight - len(self._held)) > 0:
            wanted = min(room, self.policy.claim_batch)
            now = self._clock.monotonic()
            deliveries = await self._service.claim(wanted, self._throttle.hosts_to_leave(now))
            if not deliveries:
                break
            # A lease that ran out while its row was still here (the clock jumped, or a request
            # outlived it) must not make this process send the row twice.
            fresh = [delivery for delivery in deliveries if delivery.id not in self._held]
            self._held.update(delivery.id for delivery in fresh)
            for index, delivery in enumerate(fresh):
                try:
                    await self._dispatch(delivery)
                except Exception:
                    # Its hook could not be looked up (the database?): what was not handed on is held no
                    # more, and comes back when its lease runs out.
                    self._held.difference_update(d.id for d in fresh[index:])
                    raise
            if not fresh or len(deliveries) < wanted:  # the outbox has nothing more that is due
                break

    async def _renew_leases(self) -> None:
        # Rows wait in a host's queue for as long as that host is slow: keep the claim on them alive, but
        # only on those really waiting, sent or booked here. A lease renewed for a delivery nobody works on
        # would keep it from every process for good.
        now = asyncio.get_running_loop().time()
        if self._held and now - self._renewed_at >= self._service.lease / 3:
            self._renewed_at = now
            lost = self._held - self._working_on()
            if lost:
                logger.error("webhook deliveries held but not worked on; released", deliveries=len(lost))
                self._held -= lost
            await self._service.renew(sorted(self._held))

    def _working_on(self) -> set[int]:
        """
        The deliveries queued on a host, being sent, or waiting to be booked or being booked.
        """
        ids = {delivery.id for _hook, delivery, _request in self._throttle.queued()}
        ids.update(outcome.delivery.id for outcome in self._outcomes)
        return ids | self._sending | self._booking

    async def _dispatch(self, delivery: Delivery) -> None:
        hook = await self._service.hook(delivery.hook_id)
        if hook is None:  # deleted meanwhile: nothing to send, nothing to say
            self._finish(DeliveryOutcome(delivery=delivery, request={}, error="integration deleted"))
            return
        try:
            request = build_request(hook.config, delivery.event)
        except TemplateError as exc:
            self._fail(hook, delivery, {}, str(exc), retry=False)
            return
        except Exception as exc:  # anything else that breaks rendering breaks it for this delivery only
            logger.warning("webhook request not rendered", hook=hook.id, error=repr(exc))
            self._fail(hook, delivery, {}, f"request could not be made: {exc}", retry=False)
            return
        host = request.host
        now = self._clock.monotonic()
        if self._throttle.sleeping(host, now):
            self._throttle.skipped(host, now)
            self._fail(hook, delivery, request.log_entry(), SLEEPING_MESSAGE, retry=True, skipped=True)
            return
        state = self._throttle.state(host)
        state.queue.append((hook, delivery, request))
        self._pump(host)

    def _pump(self, host: str) -> None:
        state = self._throttle.state(host)
        while state.queue and self._throttle.may_start(state):
            hook, delivery, request = state.queue.popleft()
            if self._throttle.sleeping(host, self._clock.monotonic()):
                self._fail(hook, delivery, request.log_entry(), SLEEPING_MESSAGE, retry=True, skipped=True)
                continue
            state.active += 1
            self._sending.add(delivery.id)
            task = asyncio.create_task(self._send(hook, delivery, request))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _send(self, hook: Webhook, delivery: Delivery, request: OutgoingRequest) -> None:
        host = request.host
        try:
            outcome = await self._attempt(hook, delivery, request)
        except Exception as exc:  # whatever broke, it ends this one attempt, which is booked like any other
            logger.exception("webhook attempt failed", hook=hook.id, delivery=delivery.id)
            message = f"request could not be made: {exc}"
            outcome = self._failure(hook, delivery, request.log_entry(), message, retry=False)
        finally:
            self._sending.discard(delivery.id)
            self._throttle.state(host).active -= 1
        self._finish(outcome)
        self._pump(host)

    async def _attempt(self, hook: Webhook, delivery: Delivery, request: OutgoingRequest) -> DeliveryOutcome:
        host = request.host
        try:
            response = await self._sender.send(request, verify_tls=hook.config.reject_unauthorized)
        except DeliveryError as exc:
            self._throttle.failed(host, self._clock.monotonic())
            return self._failure(hook, delivery, request.log_entry(), str(exc), retry=exc.retry)
        except Exception as exc:  # e.g. a header the HTTP library refuses: final
            logger.warning("webhook request could not be made", hook=hook.id, error=repr(exc))
            message = f"request could not be made: {exc}"
            return self._failure(hook, delivery, request.log_entry(), message, retry=False)
        return self._answered(hook, delivery, request, response)

    def _answered(
        self, hook: Webhook, delivery: Delivery, request: OutgoingRequest, response: Response
    ) -> DeliveryOutcome:
        host = request.host
        if 200 <= response.status < 300:
            self._throttle.succeeded(host)
            try:
                events = response_events(
                    hook.config, delivery.event, response.body, product=hook.product_id is not None
                )
            except TemplateError as exc:
                events = error_events(hook.config, delivery.event, str(exc))
            return DeliveryOutcome(
                delivery=delivery,
                request=request.log_entry(),
                status=response.status,
                elapsed_ms=response.elapsed_ms,
                body=response.body,
                response_events=events,
            )
        self._throttle.failed(host, self._clock.monotonic())
        message = f"error status {response.status} from {host}"
        retry = response.status >= 500 or response.status == 429
        return self._failure(
            hook,
            delivery,
            request.log_entry(),
            message,
            retry=retry,
            status=response.status,
            response=response,
        )

    def _fail(
        self,
        hook: Webhook,
        delivery: Delivery,
        request: dict[str, Any],
        message: str,
        *,
        retry: bool,
        skipped: bool = False,
    ) -> None:
        self._finish(self._failure(hook, delivery, request, message, retry=retry, skipped=skipped))

    def _failure(
        self,
        hook: Webhook,
        delivery: Delivery,
        request: dict[str, Any],
        message: str,
        *,
        retry: bool,
        skipped: bool = False,
        status: int | None = None,
        response: Response | None = None,
    ) -> DeliveryOutcome:
        return DeliveryOutcome(
            delivery=delivery,
            request=request,
            status=status,
            elapsed_ms=response.elapsed_ms if response else 0,
            body=response.body if response else b"",
            error=message,
            retry=retry,
            skipped=skipped,
            response_events=error_events(hook.config, delivery.event, message),
        )

    def _finish(self, outcome: DeliveryOutcome) -> None:
        self._outcomes_counted[_kind(outcome)] += 1
        self._outcomes.append(outcome)
        self._outcomes_ready.set()

    # ------------------------------------------------------------------ booking

    async def _recorder(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            if len(self._outcomes) < BATCH_FULL:
                await asyncio.sleep(GATHER)
            self._outcomes_ready.clear()
            await self._book()

    async def _book(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes[:BOOK_BATCH], self._outcomes[BOOK_BATCH:]
            ids = {outcome.delivery.id for outcome in batch}
            self._booking |= ids
            try:
                failed = await each_alone(batch, self._service.record)
                if failed:  # what they carried could not be stored: book them bare (no request, no body)
                    batch = [outcome for outcome in batch if outcome not in failed]
                    bare = [_bare(outcome) for outcome in failed]
                    unbooked = await each_alone(bare, self._service.record)
                    for outcome in unbooked:  # the database refuses even that: the lease brings it back
                        logger.error("webhook outcome not booked", delivery=outcome.delivery.id)
                    batch += [outcome for outcome in bare if outcome not in unbooked]
            finally:
                # Before any other await: once the rows are gone their ids are free, and a row that reuses
                # one must not look like something this process already holds.
                self._held -= ids
                self._booking -= ids
            if not self._stopping:
                self._wake.set()  # room again: claim more
            await self._service.announce(batch)


def _bare(outcome: DeliveryOutcome) -> DeliveryOutcome:
    """
    ``outcome`` without what came from the event or the target (the request, body and response events).
    """
    return replace(
        outcome, request={}, body=b"", error="the attempt's details could not be stored", response_events=()
    )


def _kind(outcome: DeliveryOutcome) -> str:
    """
    How an attempt ended, for the counts: sent (a 2xx), retry (tried again later), failed, skipped.
    """
    if outcome.skipped:
        return "skipped"
    if outcome.error is None and outcome.status is not None and outcome.status < 300:
        return "sent"
    return "retry" if outcome.retry else "failed"
