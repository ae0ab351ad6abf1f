"""
Webhooks: the integration CRUD, which hooks an event triggers, and the durable outbox of deliveries.

Rules kept here:
- a hook belongs to one user and fires only on that user's events whose name starts with its ``event``
  (and, with a device filter, only that device's); ``hook-*`` events never fire hooks;
- a product's hook (``/v1/products/:p/integrations``, no user: it outlives whoever made it) fires on the
  events of the product's devices and of the product, whoever owns them; its ``hook-*`` events go to the
  product's streams and to the device whose event it was (decision 0016, issue 11 section 4);
- every match is written to the outbox before anything is sent, so a crash loses nothing queued;
- an attempt that timed out, could not connect, or got a 5xx or 429 is tried again after 30 s and after 1 min
  (the hosted cloud's schedule), then given up; other 4xx are final;
- each attempt publishes ``hook-sent/<event>`` and then ``hook-response/…`` or ``hook-error/…`` chunks as
  internal events of the hook's owner, so streams and subscribed devices see them;
- a hook that is not the caller's is reported exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from devicecloud.domain.access import Resource, can
from devicecloud.domain.events import MAX_NAME_LENGTH, CloudEvent
from devicecloud.domain.webhooks import (
    LOGS_KEPT,
    REQUEST_TYPES,
    WEBHOOK_TYPE,
    Delivery,
    DeliveryLog,
    DeliveryOutcome,
    HookEvent,
    UnreadableDelivery,
    Webhook,
    WebhookConfig,
    event_problem,
)
from devicecloud.errors import InvalidInput, NotFound
from devicecloud.services.product_access import access_product

logger = structlog.get_logger("devicecloud.webhooks")

if TYPE_CHECKING:
    from devicecloud.bus.interfaces import IntakeSubscription
    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.domain.accounts import User
    from devicecloud.services.events import EventService
    from devicecloud.services.ports import WebhookRunner
    from devicecloud.store.interfaces import Store, UnitOfWork

UNSUPPORTED_TYPES = ("AzureIotHub", "GoogleCloudPubSub", "GoogleMaps", "Logic", "Ledger")
_DEVICE_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_URL = re.compile(r"^https?://\S+$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
# The legacy ``mydevices`` flag is accepted and ignored: a hook fires on its owner's events only.
_BOOLEANS = ("noDefaults", "disabled", "rejectUnauthorized", "unchunked")


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    retry_delays: tuple[float, ...] = (30.0, 60.0)
    # How long a claim holds a delivery: renewed while this process still holds it, so only a process that
    # died (or hangs) lets its deliveries go back to the outbox for another try.
    lease: float = 50.0
    max_hooks_per_user: int = 500
    prune_interval: float = 5.0  # old logs are deleted in passes, not in every batch


def _bad(message: str) -> InvalidInput:
    # The message goes in ``error`` too: particle-cli prints ``error`` and nothing else when a create fails.
    return InvalidInput(message, code=message)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise _bad(f"{name} must be true or false")


def _object(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _bad(f"{name} must be an object")
    return dict(value)


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    return value


def parse_config(params: Mapping[str, Any]) -> WebhookConfig:
    """
    A webhook configuration from API parameters (catalogue §10.2), or `InvalidInput` in the API's words.
    """
    event = params.get("event")
    if not isinstance(event, str) or not event:
        raise _bad("event is required: the event name prefix that triggers the webhook")
    if len(event) > MAX_NAME_LENGTH:
        raise _bad(f"event is at most {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(event):
        raise _bad("event may not contain control characters")
    url = params.get("url")
    if not isinstance(url, str) or not _URL.match(url.strip()) or _CONTROL.search(url):
        raise _bad("url is required and must be an http:// or https:// URL")
    request_type = params.get("requestType", params.get("request_type")) or "POST"
    if not isinstance(request_type, str) or request_type.upper() not in REQUEST_TYPES:
        raise _bad(f"requestType must be one of {', '.join(REQUEST_TYPES)}")
    device_id = next(
        (params[key] for key in ("deviceID", "deviceId", "deviceid") if params.get(key) not in (None, "")),
        None,
    )
    if device_id is not None and (not isinstance(device_id, str) or not _DEVICE_ID.match(device_id)):
        raise _bad("deviceID must be a device id (24 hex characters)")
    json_template = params.get("json")
    if json_template is not None and not isinstance(json_template, (str, Mapping, list)):
        raise _bad("json must be an object or a template string")
    form = _object("form", params.get("form"))
    body = _text("body", params.get("body"))
    if sum(value is not None for value in (json_template, form, body)) > 1:
        raise _bad("json, form and body are mutually exclusive: give at most one")
    headers = _object("headers", params.get("headers"))
    for name, value in (headers or {}).items():
        name_ok = _HEADER_NAME.match(str(name)) or "{{" in str(name)  # a template renders per event
        if not name_ok or (isinstance(value, str) and _CONTROL.search(value)):
            raise _bad(f"headers: {str(name)[:64]!r} is not a valid header name and value")
    auth = _object("auth", params.get("auth"))
    if auth is not None and not all(isinstance(auth.get(k, ""), str) for k in ("username", "password")):
        raise _bad('auth must be {"username": ..., "password": ...}')
    response_template = params.get("responseTemplate")
    if response_template is not None and not isinstance(response_template, (str, Mapping, list)):
        raise _bad("responseTemplate must be a string or an object")
    flags = {name: _flag(name, params[name]) for name in _BOOLEANS if params.get(name) is not None}
    return WebhookConfig(
        event=event,
        url=url.strip(),
        request_type=request_type.upper(),
        name=_text("name", params.get("name")),
        device_id=device_id.lower() if device_id else None,
        json=dict(json_template) if isinstance(json_template, Mapping) else json_template,
        form=form,
        body=body,
        query=_object("query", params.get("query")),
        headers=headers,
        auth=auth,
        response_topic=_text("responseTopic", params.get("responseTopic")),
        error_response_topic=_text("errorResponseTopic", params.get("errorResponseTopic")),
        response_template=response_template,
        no_defaults=flags.get("noDefaults", False),
        disabled=flags.get("disabled", False),
        reject_unauthorized=flags.get("rejectUnauthorized", True),
        unchunked=flags.get("unchunked", False),
    )


def check_integration_type(params: Mapping[str, Any]) -> None:
    kind = params.get("integration_type") or WEBHOOK_TYPE
    if kind == WEBHOOK_TYPE:
        return
    if kind in UNSUPPORTED_TYPES:
        raise InvalidInput(
            f"{kind} integrations are not supported by this server; only Webhook integrations are",
            code="integration_type_not_supported",
        )
    raise _bad(f"Unknown integration_type {kind!r}")


def hook_event(event: CloudEvent) -> HookEvent:
    return HookEvent(
        id=secrets.token_hex(12),
        name=event.name,
        data=event.data,
        coreid=event.coreid,
        published_at=event.published_at,
        device_id=event.device_id,
        product_id=event.product_id,
        product_version=event.product_version,
    )


def _not_found() -> NotFound:
    return NotFound("Integration not found", code="Not Found")


class WebhookService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        events: EventService,
        runner: WebhookRunner | None = None,
        policy: WebhookPolicy | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._events = events
        self.runner = runner  # set by the composition root once the dispatcher exists
        self._policy = policy or WebhookPolicy()
        self._by_owner: dict[int, list[Webhook]] | None = None
        self._by_product: dict[int, list[Webhook]] = {}
        self._by_id: dict[str, Webhook] = {}
        self._change_listeners: list[Callable[[], None]] = []
        self._generation = 0  # bumped whenever the cache is forgotten
        self._unpruned: set[str] = set()  # hooks with logs added since the last prune
        self._pruned_at = float("-inf")

    # ------------------------------------------------------------------ CRUD

    def _check(self, config: WebhookConfig) -> None:
        if self.runner is None:
            return
        try:
            self.runner.check(config)
        except ValueError as exc:
            raise _bad(str(exc)) from exc

    async def create(self, user: User, params: Mapping[str, Any]) -> Webhook:
        check_integration_type(params)
        config = parse_config(params)
        self._check(config)
        hook = Webhook(
            id=secrets.token_hex(12), owner_id=user.id, config=config, created_at=self._clock.now()
        )
        async with self._store.transaction() as tx:
            if len(await tx.webhooks.list_for_owner(user.id)) >= self._policy.max_hooks_per_user:
                raise _bad(f"At most {self._policy.max_hooks_per_user} integrations per account")
            await tx.webhooks.add(hook)
        self._forget()
        return hook

    async def list_hooks(self, user: User) -> Sequence[Webhook]:
        async with self._store.transaction(readonly=True) as tx:
            return await tx.webhooks.list_for_owner(user.id)

    async def _own(self, user: User, hook_id: str) -> Webhook:
        async with self._store.transaction(readonly=True) as tx:
            hook = await tx.webhooks.get(hook_id)
        if hook is None or not can(user, "integrations:get", Resource("webhook", user_id=hook.owner_id)):
            raise _not_found()
        return hook

    # ------------------------------------------------------------------ a product's hooks

    async def create_for_product(
        self, principal: AnyPrincipal, product_ref: str, params: Mapping[str, Any]
    ) -> Webhook:
        async with self._store.transaction(readonly=True) as tx:
            product = (
                await access_product(tx, principal, product_ref, "integrations:create", "webhook")
            ).product
        check_integration_type(params)
        config = parse_config(params)
        self._check(config)
        hook = Webhook(
            id=secrets.token_hex(12),
            owner_id=None,
            config=config,
            created_at=self._clock.now(),
            product_id=product.id,
        )
        async with self._store.transaction() as tx:
            if len(await tx.webhooks.list_for_product(product.id)) >= self._policy.max_hooks_per_user:
                raise _bad(f"At most {self._policy.max_hooks_per_user} integrations per product")
            await tx.webhooks.add(hook)
        self._forget()
        return hook

    async def list_for_product(self, principal: AnyPrincipal, product_ref: str) -> Sequence[Webhook]:
        async with self._store.transaction(readonly=True) as tx:
            product = (
                await access_product(tx, principal, product_ref, "integrations:list", "webhook")
            ).product
            return await tx.webhooks.list_for_product(product.id)

    async def product_hook(
        self, principal: AnyPrincipal, product_ref: str, hook_id: str, action: str
    ) -> Webhook:
        """
        The product's hook ``hook_id`` if the caller may do ``action`` to the product's hooks; a hook of
        another product or of a user is reported exactly like one that does not exist.
        """
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, product_ref, action, "webhook")).product
            hook = await tx.webhooks.get(hook_id)
        if hook is None or hook.product_id != product.id or hook.owner_id is not None:
            raise _not_found()
        return hook

    async def product_get(
        self, principal: AnyPrincipal, product_ref: str, hook_id: str
    ) -> tuple[Webhook, Sequence[DeliveryLog]]:
        hook = await self.product_hook(principal, product_ref, hook_id, "integrations:get")
        async with self._store.transaction(readonly=True) as tx:
            logs = await tx.webhooks.logs(hook.id, LOGS_KEPT)
        return hook, logs

    async def product_replace(
        self, principal: AnyPrincipal, product_ref: str, hook_id: str, params: Mapping[str, Any]
    ) -> Webhook:
        hook = await self.product_hook(principal, product_ref, hook_id, "integrations:update")
        return await self._replace(hook, params)

    async def product_delete(self, principal: AnyPrincipal, product_ref: str, hook_id: str) -> None:
        hook = await self.product_hook(principal, product_ref, hook_id, "integrations:remove")
        async with self._store.transaction() as tx:
            await tx.webhooks.delete(hook.id)
        self._forget()

    async def product_test(self, principal: AnyPrincipal, product_ref: str, hook_id: str) -> str | None:
        return await self._test(await self.product_hook(principal, product_ref, hook_id, "integrations:test"))

    async def get(self, user: User, hook_id: str) -> tuple[Webhook, Sequence[DeliveryLog]]:
        hook = await self._own(user, hook_id)
        async with self._store.transaction(readonly=True) as tx:
            logs = await tx.webhooks.logs(hook.id, LOGS_KEPT)
        return hook, logs

    async def replace(self, user: User, hook_id: str, params: Mapping[str, Any]) -> Webhook:
        """
        ``PUT``: the given fields become the whole configuration (event and url default to the old ones).
        """
        return await self._replace(await self._own(user, hook_id), params)

    async def _replace(self, hook: Webhook, params: Mapping[str, Any]) -> Webhook:
        check_integration_type(params)
        merged = {"event": hook.config.event, "url": hook.config.url, **params}
        config = parse_config(merged)
        self._check(config)
        updated = Webhook(
            id=hook.id,
            owner_id=hook.owner_id,
            config=config,
            created_at=hook.created_at,
            product_id=hook.product_id,
        )
        async with self._store.transaction() as tx:
            await tx.webhooks.replace(updated)
        self._forget()
        return updated

    async def delete(self, user: User, hook_id: str) -> None:
        hook = await self._own(user, hook_id)
        async with self._store.transaction() as tx:
            await tx.webhooks.delete(hook.id)
        self._forget()

    async def test(self, user: User, hook_id: str) -> str | None:
        """
        ``POST /v1/integrations/:id/test``: one request with a test event, now. The error, or None.
        """
        return await self._test(await self._own(user, hook_id))

    async def _test(self, hook: Webhook) -> str | None:
        if self.runner is None:
            return "webhook delivery is not running in this process"
        event = HookEvent(
            id=secrets.token_hex(12),
            name=hook.config.event,
            data="test-event",
            coreid="api",
            published_at=self._clock.now(),
            device_id=hook.config.device_id,
            product_id=hook.product_id,
        )
        return await self.runner.test(hook, event)

    # ------------------------------------------------------------------ matching

    def on_change(self, listener: Callable[[], None]) -> None:
        """
        Call ``listener()`` after a hook is created, changed or deleted here (other nodes' caches listen).
        """
        self._change_listeners.append(listener)

    def forget_cache(self) -> None:
        """
        Read the hooks again at the next match (another node changed one).
        """
        self._by_owner = None
        self._generation += 1

    def _forget(self) -> None:
        self.forget_cache()
        for listener in self._change_listeners:
            listener()

    async def _hooks(self) -> dict[int, list[Webhook]]:
        while self._by_owner is None:
            generation = self._generation
            async with self._store.transaction(readonly=True) as tx:
                hooks = await tx.webhooks.list_all()
            if generation != self._generation:
                continue  # forgotten while reading: what was read may miss that change
            by_owner: dict[int, list[Webhook]] = {}
            by_product: dict[int, list[Webhook]] = {}
            for hook in hooks:
                if hook.owner_id is not None:
                    by_owner.setdefault(hook.owner_id, []).append(hook)
                elif hook.product_id is not None:
                    by_product.setdefault(hook.product_id, []).append(hook)
            self._by_owner, self._by_product = by_owner, by_product
            self._by_id = {hook.id: hook for hook in hooks}
        return self._by_owner

    async def matching(self, event: CloudEvent) -> list[Webhook]:
        """
        The hooks ``event`` triggers (from a cache refreshed on every change): its owner's, and its product's.
        """
        by_owner = await self._hooks()
        hooks = [*by_owner.get(event.owner_id, ())] if event.owner_id is not None else []
        if event.product_id is not None:
            hooks.extend(self._by_product.get(event.product_id, ()))
        return [hook for hook in hooks if hook.wants(event.name, event.device_id)]

    async def hook(self, hook_id: str) -> Webhook | None:
        await self._hooks()
        return self._by_id.get(hook_id)

    def subscribe_all(self, max_pending: int) -> IntakeSubscription:
        """
        Every event on the bus except ``hook-*`` ones (the dispatcher's intake).
        """
        return self._events.everything(max_pending=max_pending)

    # ------------------------------------------------------------------ the outbox

    async def enqueue(self, items: Sequence[tuple[Webhook, HookEvent, str]]) -> None:
        if items:
            async with self._store.transaction() as tx:
                await tx.deliveries.enqueue(items, self._clock.now())

    async def claim(self, limit: int, exclude_hosts: Sequence[str] = ()) -> Sequence[Delivery]:
        """
        Lease up to ``limit`` due deliveries. Rows that cannot be delivered (a damaged event, text that is not
        valid) are given up in the same transaction, each with a log entry on its hook, and not returned.
        """
        now = self._clock.now()
        async with self._store.transaction() as tx:
            claimed = await tx.deliveries.claim_due(
                now, now + timedelta(seconds=self._policy.lease), limit, exclude_hosts
            )
            deliveries: list[Delivery] = []
            unreadable: list[UnreadableDelivery] = []
            for item in claimed:
                problem = event_problem(item.event) if isinstance(item, Delivery) else None
                if isinstance(item, UnreadableDelivery):
                    unreadable.append(item)
                elif problem is not None:
                    unreadable.append(UnreadableDelivery(id=item.id, hook_id=item.hook_id, problem=problem))
                else:
                    deliveries.append(item)
            if unreadable:
                await self._give_up(tx, unreadable, now)
        return deliveries

    async def _give_up(self, tx: UnitOfWork, rows: Sequence[UnreadableDelivery], now: datetime) -> None:
        for row in rows:
            logger.error("webhook delivery dropped", delivery=row.id, hook=row.hook_id, problem=row.problem)
        await tx.deliveries.finish([row.id for row in rows])
        await tx.webhooks.add_logs(
            [
                (
                    row.hook_id,
                    DeliveryLog(
                        at=now,
                        request={},
                        response=None,
                        error=f"the queued event could not be read ({row.problem[:200]})",
                    ),
                )
                for row in rows
            ]
        )
        self._unpruned.update(row.hook_id for row in rows)

    async def renew(self, delivery_ids: Sequence[int]) -> None:
        if delivery_ids:
            until = self._clock.now() + timedelta(seconds=self._policy.lease)
            async with self._store.transaction() as tx:
                await tx.deliveries.extend_leases(delivery_ids, until)

    @property
    def lease(self) -> float:
        return self._policy.lease

    async def pending(self) -> int:
        async with self._store.transaction(readonly=True) as tx:
            return await tx.deliveries.count()

    def next_retry(self, delivery: Delivery) -> float | None:
        """
        Seconds until the next try after a failed attempt, or None when it was the last one.
        """
        made = delivery.attempt + 1
        delays = self._policy.retry_delays
        return delays[made - 1] if made <= len(delays) else None

    async def record(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """
        Book a batch of attempts in one transaction: remove what is done, reschedule retries, keep logs.
        """
        if not outcomes:
            return
        now = self._clock.now()
        done: list[int] = []
        again: list[tuple[int, int, Any]] = []
        logs: list[tuple[str, DeliveryLog]] = []
        for outcome in outcomes:
            delivery = outcome.delivery
            delay = self.next_retry(delivery) if outcome.retry else None
            if delay is None:
                done.append(delivery.id)
            else:
                again.append((delivery.id, delivery.attempt + 1, now + timedelta(seconds=delay)))
            response = None
            if outcome.status is not None:
                response = {
                    "status": outcome.status,
                    "time_ms": outcome.elapsed_ms,
                    "body": outcome.body[:1024].decode("utf-8", errors="replace"),
                }
            logs.append(
                (
                    delivery.hook_id,
                    DeliveryLog(at=now, request=outcome.request, response=response, error=outcome.error),
                )
            )
        self._unpruned.update(hook_id for hook_id, _log in logs)
        prune: set[str] = set()
        if self._clock.monotonic() - self._pruned_at >= self._policy.prune_interval:
            prune, self._unpruned = self._unpruned, set()
            self._pruned_at = self._clock.monotonic()
        async with self._store.transaction() as tx:
            await tx.deliveries.finish(done)
            await tx.deliveries.reschedule(again)
            await tx.webhooks.add_logs(logs)
            await tx.webhooks.prune_logs(
                prune, LOGS_KEPT
            )  # reads show the newest 10 whatever the table holds

    async def announce(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """
        Publish the ``hook-*`` events of booked attempts (after `record`: the log is there first).
        """
        for count, outcome in enumerate(outcomes, 1):
            try:
                await self._publish(outcome)
            except Exception:  # one attempt's events, never the others'
                logger.exception("webhook events not published", delivery=outcome.delivery.id)
            if count % 100 == 0:
                await asyncio.sleep(0)  # a burst of skipped events must not hold the loop

    async def _publish(self, outcome: DeliveryOutcome) -> None:
        delivery = outcome.delivery
        owner, device = delivery.owner_id, delivery.event.device_id
        hook = await self.hook(delivery.hook_id)
        product = hook.product_id if hook is not None and hook.owner_id is None else None
        to_device = None
        if product is not None and device is not None:
            # A product hook's answers are the device's: its owner and the device itself get them.
            owner, to_device = await self._events.owner_of(device), device
        if not outcome.skipped:
            await self._events.publish_internal(
                f"hook-sent/{delivery.event.name}",
                None,
                owner_id=owner,
                device_id=device,
                product_id=product,
            )
        for name, data in outcome.response_events:
            await self._events.publish_internal(
                name, data, owner_id=owner, device_id=device, product_id=product, to_device=to_device
            )
