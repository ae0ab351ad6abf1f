"""
From an event and a hook to the HTTP request, and from the response to the events it becomes. Pure: no I/O.

The Particle semantics (catalogue §10.2): every string of ``url``, ``json``, ``form``, ``body``, ``query``,
``headers`` and ``auth`` is a Mustache template (``{{x}}`` HTML-escaped, ``{{{x}}}`` raw, dotted paths with
array indexes, sections). Variables are the predefined ``PARTICLE_*``/``PRODUCT_*`` (and ``SPARK_*``
aliases) plus, when the event data is a JSON object, its keys. Unless ``noDefaults``, the default fields
(event, data, published_at, coreid) are added to each of ``json``/``form``/``query`` that is given; with none
of them (and no custom ``body``) they go in the query string of a GET or DELETE and in a form body otherwise.
Values print as JavaScript would (``true``, ``5``), since that is what the hosted cloud's templates do.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import combustache

from devicecloud.domain.timestamps import iso
from devicecloud.domain.webhooks import (
    MAX_RESPONSE_EVENTS_BYTES,
    RESPONSE_CHUNK,
    USER_AGENT,
    HookEvent,
    WebhookConfig,
)

JSON_TYPE = "application/json"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})  # never kept in logs
FORM_TYPE = "application/x-www-form-urlencoded"
Context = dict[str, Any]


class TemplateError(ValueError):
    """
    A template that cannot be rendered (bad Mustache, or a ``json`` string that does not render JSON).
    """


@dataclass(frozen=True, slots=True)
class OutgoingRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    # Lower-case names of the headers the hook's own templates set (``headers``; ``auth`` as Authorization):
    # they are meant for the hook's target only, and a redirect to another origin drops them.
    hook_headers: frozenset[str] = frozenset()

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    def log_entry(self) -> dict[str, Any]:
        """
        The request as the integration's logs show it (the body cut to 1 KB).
        """
        body = None if self.body is None else self.body[:1024].decode("utf-8", errors="replace")
        headers = {
            name: "[redacted]" if name.lower() in SECRET_HEADERS else value for name, value in self.headers
        }
        return {"method": self.method, "url": self.url, "headers": headers, "body": body}


def stringify(value: Any) -> str:
    """
    A template value as JavaScript prints it.
    """
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@lru_cache(maxsize=4096)
def _compiled(template: str) -> combustache.Template:
    return combustache.Template(template)  # parsing is most of a render's cost: once per template


def render(template: str, context: Context) -> str:
    if "{{" not in template:  # every tag, delimiter changes included, starts so
        return template
    try:
        rendered: str = _compiled(template).render(context, stringify=stringify)
    except combustache.CombustacheError as exc:
        raise TemplateError(f"bad template {template!r}: {exc}") from exc
    return rendered


def render_value(value: Any, context: Context) -> Any:
    """
    Render every string (keys included) of a JSON value.
    """
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {render(str(k), context): render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


def check_templates(config: WebhookConfig) -> None:
    """
    Raise `TemplateError` if any template of ``config`` is not valid Mustache (checked at create/edit).
    """
    empty: Context = {}
    for value in (
        config.url,
        config.json,
        config.form,
        config.body,
        config.query,
        config.headers,
        config.auth,
        config.response_topic,
        config.error_response_topic,
        config.response_template,
    ):
        if value is not None:
            render_value(value, empty)


@lru_cache(maxsize=1024)
def event_context(event: HookEvent) -> Context:
    """
    The template variables of one event: the JSON data's keys, then the predefined names (which win).

    Cached (an event is rendered for every hook it triggers, and again for its response): callers must not
    change the dict they get.
    """
    context: Context = {}
    if event.data:
        try:
            parsed = json.loads(event.data)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: just text
            parsed = None
        if isinstance(parsed, dict):
            context.update(parsed)
    published = iso(event.published_at)
    device = event.device_id or event.coreid
    value = event.data if event.data is not None else ""
    context.update(
        {
            "PARTICLE_DEVICE_ID": device,
            "PARTICLE_EVENT_NAME": event.name,
            "PARTICLE_EVENT_VALUE": value,
            "PARTICLE_EVENT_JSON": json.dumps(value),
            "PARTICLE_EVENT_BASE64": base64.b64encode(value.encode("utf-8")).decode("ascii"),
            "PARTICLE_PUBLISHED_AT": published,
            "PARTICLE_EVENT_ID": event.id,
            "PRODUCT_ID": event.product_id,
            "PRODUCT_VERSION": event.product_version,
            "PRODUCT_USER_ID": event.product_user_id,
            "SPARK_CORE_ID": device,
            "SPARK_EVENT_NAME": event.name,
            "SPARK_EVENT_VALUE": value,
            "SPARK_PUBLISHED_AT": published,
        }
    )
    return context


def default_fields(context: Context) -> dict[str, Any]:
    return {
        "event": context["PARTICLE_EVENT_NAME"],
        "data": context["PARTICLE_EVENT_VALUE"],
        "published_at": context["PARTICLE_PUBLISHED_AT"],
        "coreid": context["PARTICLE_DEVICE_ID"],
    }


def _with_defaults(rendered: Any, defaults: Mapping[str, Any] | None) -> Any:
    if defaults is None or not isinstance(rendered, dict):
        return rendered
    return {**defaults, **rendered}


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else stringify(value)


def _merge_query(url: str, query: Mapping[str, Any]) -> str:
    if not query:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    pairs += [(str(k), _form_value(v)) for k, v in query.items()]
    return urlunsplit(SplitResult(parts.scheme, parts.netloc, parts.path, urlencode(pairs), parts.fragment))


def build_request(config: WebhookConfig, event: HookEvent) -> OutgoingRequest:
    """
    The HTTP request ``config`` makes for ``event``. Raises `TemplateError`.
    """
    context = event_context(event)
    method = config.request_type
    defaults = None if config.no_defaults else default_fields(context)
    headers: dict[str, str] = {"User-Agent": USER_AGENT}
    body: bytes | None = None

    query: dict[str, Any] = {}
    if config.query is not None:
        query = _with_defaults(render_value(config.query, context), defaults)
    elif config.json is None and config.form is None and config.body is None and method in ("GET", "DELETE"):
        query = dict(defaults or {})

    if config.json is not None:
        if isinstance(config.json, str):
            text = render(config.json, context)
            try:
                payload: Any = json.loads(text)
            except ValueError as exc:
                raise TemplateError(f"the json template did not render valid JSON: {text[:200]!r}") from exc
        else:
            payload = render_value(config.json, context)
        body = json.dumps(_with_defaults(payload, defaults), separators=(",", ":")).encode("utf-8")
        headers["Content-Type"] = JSON_TYPE
        headers["Accept"] = JSON_TYPE
    elif config.form is not None:
        form = _with_defaults(render_value(config.form, context), defaults)
        body = urlencode([(str(k), _form_value(v)) for k, v in form.items()]).encode("ascii")
        headers["Content-Type"] = FORM_TYPE
    elif config.body is not None:
        body = render(config.body, context).encode("utf-8")
    elif method not in ("GET", "DELETE") and config.query is None and defaults is not None:
        body = urlencode(defaults).encode("ascii")
        headers["Content-Type"] = FORM_TYPE

    hook_headers: set[str] = set()
    if config.auth:
        auth = render_value(config.auth, context)
        user_pass = f"{auth.get('username', '')}:{auth.get('password', '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode("ascii")
        hook_headers.add("authorization")
    for name, value in render_value(config.headers or {}, context).items():
        headers[str(name)] = _form_value(value)
        hook_headers.add(str(name).lower())

    url = _merge_query(render(config.url, context), query)
    return OutgoingRequest(
        method=method,
        url=url,
        headers=tuple(headers.items()),
        body=body,
        hook_headers=frozenset(hook_headers),
    )


# ------------------------------------------------------------------------------------------------ responses


def _chunks(text: str, size: int) -> list[str]:
    """
    ``text`` in pieces of at most ``size`` UTF-8 bytes, never splitting a character.
    """
    raw = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while start < len(raw):
        end = min(start + size, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # inside a multi-byte character
            end -= 1
        pieces.append(raw[start:end].decode("utf-8"))
        start = end
    return pieces


def _topic_events(topic: str, text: str, unchunked: bool) -> tuple[tuple[str, str], ...]:
    limited = text.encode("utf-8")[:MAX_RESPONSE_EVENTS_BYTES].decode("utf-8", errors="ignore")
    if unchunked:
        return ((f"{topic}/0", limited),)
    return tuple((f"{topic}/{index}", piece) for index, piece in enumerate(_chunks(limited, RESPONSE_CHUNK)))


SANDBOX_RESPONSE_TOPIC = "hook-response/{{{PARTICLE_EVENT_NAME}}}"
PRODUCT_RESPONSE_TOPIC = "{{{PARTICLE_DEVICE_ID}}}/hook-response/{{{PARTICLE_EVENT_NAME}}}"


def response_events(
    config: WebhookConfig, event: HookEvent, body: bytes, *, product: bool = False
) -> tuple[tuple[str, str], ...]:
    """
    The ``hook-response`` events (name, data) for a successful response, chunked as the hosted cloud does.
    A product's hook answers on ``<device id>/hook-response/<event>`` unless it names its own topic.
    """
    context = event_context(event)
    default = PRODUCT_RESPONSE_TOPIC if product else SANDBOX_RESPONSE_TOPIC
    topic = render(config.response_topic or default, context)
    text = body.decode("utf-8", errors="replace")
    if config.response_template is not None:
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        response_context: Context = {**context, **parsed} if isinstance(parsed, dict) else dict(context)
        rendered = render_value(config.response_template, response_context)
        text = rendered if isinstance(rendered, str) else json.dumps(rendered, separators=(",", ":"))
    if not text:
        return ()
    return _topic_events(topic, text, config.unchunked)


def error_events(config: WebhookConfig, event: HookEvent, message: str) -> tuple[tuple[str, str], ...]:
    """
    The ``hook-error`` events for a failed attempt. Never raises: it also reports attempts that failed
    because the event or the hook could not be rendered.
    """
    try:
        topic = render(
            config.error_response_topic or "hook-error/{{{PARTICLE_EVENT_NAME}}}", event_context(event)
        )
    except Exception:  # the failure being reported may be this very rendering
        topic = f"hook-error/{event.name}"
    return _topic_events(topic, message, unchunked=False)


def sent_event_name(event: HookEvent) -> str:
    return f"hook-sent/{event.name}"
