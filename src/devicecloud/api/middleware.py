"""
Pure-ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware on the hot path): the client address behind
trusted proxies, a request id on every reply, and the per-IP rate limits of catalogue §1.5 through the
`limits` library, which also keeps the login lockouts (per IP and per account) and the per-address limit on
password-reset mail, so Redis storage shares all of them between nodes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import structlog
from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

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


class TrustedProxiesMiddleware:
    """
    Believe ``X-Forwarded-For``/``X-Forwarded-Proto`` only from the configured proxies (addresses or networks;
    uvicorn's middleware takes the right-most address no trusted proxy added). With none configured, the
    client address is the socket's: a client cannot pick its apparent IP to escape the per-IP limits.
    """

    def __init__(self, app: ASGIApp, trusted: Sequence[str]) -> None:
        self.app = app
        if trusted:
            # uvicorn's ASGI types are not Starlette's; the protocol is the same.
            proxied = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted))  # type: ignore[arg-type]
            self.app = cast(ASGIApp, proxied)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


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
        self.account_failures = parse(
            f"{settings.login_account_failure_limit} per {settings.login_account_lockout_seconds} seconds"
        )
        self.reset_mail = parse(settings.rate_limit_reset_mail)
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
            # Opening an event stream: /v1/events…, /v1/devices/events…, /v1/devices/:id/events…, and their
            # product twins /v1/products/:p/events…, /v1/products/:p/devices/:id/events…
            _Rule(
                "events",
                "GET",
                re.compile(r"^/v1/(?:products/[^/]+/)?(?:devices/(?:[^/]+/)?)?events(?:/.*)?$"),
                events,
            ),
        )

    async def login_locked(self, ip: str) -> bool:
        """
        Whether this address has failed to log in too often lately.
        """
        return self.enabled and not await self.moving.test(self.login_failures, "login-failures", ip)

    async def account_locked(self, account: str) -> bool:
        """
        Whether password logins to this account (a normalised username, known or not) failed too often lately,
        from whatever addresses.
        """
        return self.enabled and not await self.moving.test(
            self.account_failures, "account-login-failures", _account_key(account)
        )

    async def record_login_failure(self, ip: str, account: str | None = None) -> None:
        if self.enabled:
            await self.moving.hit(self.login_failures, "login-failures", ip)
            if account is not None:
                await self.moving.hit(self.account_failures, "account-login-failures", _account_key(account))

    async def record_login_success(self, ip: str, account: str | None = None) -> None:
        if self.enabled:
            await self.moving.clear(self.login_failures, "login-failures", ip)
            if account is not None:
                await self.clear_account_lockout(account)

    async def clear_account_lockout(self, account: str) -> None:
        """
        Forget an account's failed logins (a completed password reset proves the mailbox is the owner's).
        """
        if self.enabled:
            await self.moving.clear(self.account_failures, "account-login-failures", _account_key(account))

    async def reset_mail_retry_after(self, address: str) -> int | None:
        """
        Count one password-reset mail to ``address``: None when it may go, else seconds until one may.
        """
        if not self.enabled or await self.fixed.hit(self.reset_mail, "reset-mail", _account_key(address)):
            return None
        stats = await self.fixed.get_window_stats(self.reset_mail, "reset-mail", _account_key(address))
        return max(1, int(stats.reset_time - time.time()))


def _account_key(username: str) -> str:
    # Counters are keyed by a digest: no addresses in the limiter's storage, and any text makes a valid key.
    return hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()


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
