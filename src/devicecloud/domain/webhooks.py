"""
Webhooks (integrations of type Webhook) and their deliveries, as plain values.

A `Webhook` keeps the user's configuration as given (templates unrendered); `Delivery` is one queued
event for one hook (a row of the durable outbox); `DeliveryLog` is what ``GET /v1/integrations/:id`` shows
of the last requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devicecloud.domain.text import is_valid_text

WEBHOOK_TYPE = "Webhook"
REQUEST_TYPES = ("GET", "POST", "PUT", "DELETE")
USER_AGENT = "ParticleBot/1.1 (https://docs.particle.io/webhooks)"
HOOK_EVENT_PREFIX = "hook-"  # hook-sent/…, hook-response/…, hook-error/… never trigger hooks
RESPONSE_CHUNK = 512
MAX_RESPONSE_EVENTS_BYTES = 100 * 1024
LOGS_KEPT = 10


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """
    The fields of catalogue §10.2 (templates are strings or JSON values, rendered per event).
    """

    event: str
    url: str
    request_type: str = "POST"
    name: str | None = None
    device_id: str | None = None
    json: Any = None
    form: dict[str, Any] | None = None
    body: str | None = None
    query: dict[str, Any] | None = None
    headers: dict[str, Any] | None = None
    auth: dict[str, str] | None = None
    response_topic: str | None = None
    error_response_topic: str | None = None
    response_template: Any = None
    no_defaults: bool = False
    disabled: bool = False
    reject_unauthorized: bool = True
    unchunked: bool = False


@dataclass(frozen=True, slots=True)
class Webhook:
    """
    A user's hook (``owner_id``) or a product's (``product_id``, no user: it outlives its creator).
    """

    id: str
    owner_id: int | None
    config: WebhookConfig
    created_at: datetime
    product_id: int | None = None

    @property
    def event(self) -> str:
        return self.config.event

    def wants(self, name: str, device_id: str | None) -> bool:
        """
        Whether an event of this name (from this device) triggers the hook; owner scope is the caller's.
        """
        config = self.config
        if config.disabled or name.startswith(HOOK_EVENT_PREFIX) or not name.startswith(config.event):
            return False
        return config.device_id is None or config.device_id == device_id


@dataclass(frozen=True, slots=True)
class HookEvent:
    """
    The event a delivery is about, as stored in the outbox.
    """

    id: str
    name: str
    data: str | None
    coreid: str
    published_at: datetime
    device_id: str | None = None
    product_id: int | None = None
    product_version: int | None = None
    product_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """
    One queued event for one hook. ``attempt`` counts the tries already made.
    """

    id: int
    hook_id: str
    owner_id: int | None
    host: str
    event: HookEvent
    attempt: int
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class UnreadableDelivery:
    """
    An outbox row that does not make a `Delivery` (its stored event is damaged or not valid text): it is
    given up at once, with a log entry saying why, instead of being sent.
    """

    id: int
    hook_id: str
    problem: str


def event_problem(event: HookEvent) -> str | None:
    """
    Why ``event`` cannot be delivered, or None. Its texts end up in requests, logs and ``hook-*`` events.
    """
    texts: dict[str, object] = {"id": event.id, "name": event.name, "coreid": event.coreid}
    optional: dict[str, object] = {
        "data": event.data,
        "device_id": event.device_id,
        "product_user_id": event.product_user_id,
    }
    texts.update((key, value) for key, value in optional.items() if value is not None)
    for key, value in texts.items():
        if not isinstance(value, str):
            return f"{key} is not text"
        if not is_valid_text(value):
            return f"{key} is not valid Unicode text"
    if not isinstance(event.published_at, datetime) or event.published_at.tzinfo is None:
        return "published_at is not an instant"
    return None


@dataclass(frozen=True, slots=True)
class DeliveryLog:
    at: datetime
    request: dict[str, Any]
    response: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """
    What happened to one attempt: ``status`` (None when no response came), timing, the body prefix kept for
    the response events, and whether it should be tried again.
    """

    delivery: Delivery
    request: dict[str, Any]
    status: int | None = None
    elapsed_ms: int = 0
    body: bytes = b""
    error: str | None = None
    retry: bool = False
    skipped: bool = False  # not sent at all (the host is sleeping after too many errors)
    response_events: tuple[tuple[str, str], ...] = field(default=())


# Attribute ↔ the API's (and the stored configuration's) field name.
FIELD_NAMES: dict[str, str] = {
    "event": "event",
    "url": "url",
    "request_type": "requestType",
    "name": "name",
    "device_id": "deviceID",
    "json": "json",
    "form": "form",
    "body": "body",
    "query": "query",
    "headers": "headers",
    "auth": "auth",
    "response_topic": "responseTopic",
    "error_response_topic": "errorResponseTopic",
    "response_template": "responseTemplate",
    "no_defaults": "noDefaults",
    "disabled": "disabled",
    "reject_unauthorized": "rejectUnauthorized",
    "unchunked": "unchunked",
}


def config_to_fields(config: WebhookConfig) -> dict[str, Any]:
    """
    The configuration under the API's field names, without unset (None) fields.
    """
    values = {api: getattr(config, attr) for attr, api in FIELD_NAMES.items()}
    return {key: value for key, value in values.items() if value is not None}


def config_from_fields(fields: dict[str, Any]) -> WebhookConfig:
    return WebhookConfig(**{attr: fields[api] for attr, api in FIELD_NAMES.items() if api in fields})
