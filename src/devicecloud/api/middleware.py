"""
Pure-ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path): a request id on every
reply, and the per-IP rate limits of catalogue §1.5 through the `limits` library.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devicecloud.settings import Settings

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")
logger = structlog.get_logger("devicecloud.api.access")


class RequestIdMiddleware:
    """
    Echo a sane incoming ``X-Request-Id`` or mint one; bind it to the log context.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id)]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id.decode()):
            await self.app(scope, receive, send_with_id)


def _storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    method: str
    path: re.Pattern[str]
    limit: RateLimitItem


class RateLimits:
    """
    The limits in force and the limiter state (in memory, or Redis for several nodes).
    """

    def __init__(self, settings: Settings) -> None:
        storage = storage_from_string(_storage_uri(settings.rate_limit_storage))
        self.enabled = settings.rate_limits_enabled
        self.fixed = FixedWindowRateLimiter(storage)
        self.moving = MovingWindowRateLimiter(storage)
        self.all_routes = parse(settings.rate_limit_all)
        self.login_failures = parse(
            f"{settings.login_failure_limit} per {settings.login_lockout_seconds} seconds"
        )
        token = parse(settings.rate_limit_token)
        token_list = parse(settings.rate_limit_token_list)
        account = parse(settings.rate_limit_account)
        events = parse(settings.rate_limit_events)
        self.rules = (
            _Rule("token", "POST", re.compile(r"^/oauth/token/?$|^/v1/devices/oauth/token/?$"), token),
            _Rule("token_list", "GET", re.compile(r"^/v1/access_tokens/?$"), token_list),
            _Rule(
                "token_list", "DELETE", re.compile(r"^/v1/access_tokens/(?!current/?$)[^/]+/?$"), token_list
            ),
            _Rule("account", "POST", re.compile(r"^/v1/users/?$"), account),
            _Rule("account", "DELETE", re.compile(r"^/v1/user/?$"), account),
            _Rule("account", "POST", re.compile(r"^/v1/user/password-reset/?$"), account),
            _Rule("account", "PUT", re.compile(r"^/v1/user/password-reset/?$"), account),
            # Opening an event stream: /v1/events…, /v1/devices/events…, /v1/devices/:id/events…
            _Rule("events", "GET", re.compile(r"^/v1/(?:devices/(?:[^/]+/)?)?events(?:/.*)?$"), events),
        )

    async def login_locked(self, ip: str) -> bool:
        """
        Whether this address has failed to log in too often lately.
        """
        return self.enabled and not await self.moving.test(self.login_failures, "login-failures", ip)

    async def record_login_failure(self, ip: str) -> None:
        if self.enabled:
            await self.moving.hit(self.login_failures, "login-failures", ip)

    async def record_login_success(self, ip: str) -> None:
        if self.enabled:
            await self.moving.clear(self.login_failures, "login-failures", ip)


class RateLimitMiddleware:
    """
    Answer 429 once an address exceeds a limit; the route never runs and nothing changes.
    """

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limits.enabled:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        checks = [("all", self.limits.all_routes)]
        path, method = scope["path"], scope["method"]
        checks += [(r.name, r.limit) for r in self.limits.rules if r.method == method and r.path.match(path)]
        for name, item in checks:
            if not await self.limits.fixed.hit(item, name, ip):
                stats = await self.limits.fixed.get_window_stats(item, name, ip)
                retry_after = max(1, int(stats.reset_time - time.time()))
                await _send_429(send, retry_after)
                return
        await self.app(scope, receive, send)


async def _send_429(send: Send, retry_after: int) -> None:
    body = json.dumps(
        {
            "ok": False,
            "error": "rate_limit_exceeded",
            "error_description": "Too many requests; try again later",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
