"""
Finding the caller: bearer tokens from the header, the query string or a form body, and HTTP Basic.

The rules (and their exact error texts) are those of Particle's OAuth middleware, catalogue §1.2: exactly
one of the three places may carry the token; the header must be ``Bearer <token>``; a body token needs a
urlencoded POST/PUT/DELETE. Verification itself is `services.tokens.TokenService.verify`.

`login_attempt` guards every door that checks what a person knows (the OAuth grants, HTTP Basic) with the
two lockouts: per client IP and per account. Both answer 429 before any password is checked, so a right
password cannot unlock them. Locking out a victim is the price of the per-account one; it is kept small: its
threshold is higher than the per-IP one (an attacker needs several addresses), it pauses only password
logins (tokens already issued and refresh grants keep working), it lifts by itself when its moving window
passes, and a completed password reset lifts it at once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Request

from devicecloud.api.middleware import RateLimits
from devicecloud.api.params import FORM, content_type, read_params
from devicecloud.domain.access import AnyPrincipal, ProductPrincipal
from devicecloud.domain.accounts import Principal, User
from devicecloud.errors import (
    InsufficientScope,
    InvalidGrant,
    OAuthError,
    PermissionDenied,
    RateLimited,
    Unauthorized,
)
from devicecloud.services.accounts import normalise_username
from devicecloud.services.tokens import TokenService

LOCKED_OUT = "Too many failed logins; try again later"

ONE_METHOD = "Only one method may be used to authenticate at a time (Auth header,  GET or POST)."


async def _body_token(request: Request) -> str | None:
    kind = content_type(request)
    if request.method in ("GET", "HEAD"):
        if kind != FORM:
            return None
        form = await request.form()
        value = form.get("access_token")
        return value if isinstance(value, str) else None
    await read_params(request)
    value = request.state.body_params.get("access_token")
    return value if isinstance(value, str) else None


async def extract_bearer(request: Request) -> str:
    """
    The access token the request carries. Raises `OAuthError` (400 ``invalid_request``) per §1.2.
    """
    header = request.headers.get("authorization")
    query = request.query_params.get("access_token")
    body = await _body_token(request)
    used = sum(value is not None for value in (header, query, body))
    if used > 1:
        raise OAuthError(ONE_METHOD)
    if used == 0:
        raise OAuthError("The access token was not found")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise OAuthError("Malformed auth header")
        return token
    if query is not None:
        return query
    if request.method in ("GET", "HEAD"):
        raise OAuthError("Method cannot be GET When putting the token in the body.")
    if content_type(request) != FORM:
        raise OAuthError(
            "When putting the token in the body, content type must be application/x-www-form-urlencoded."
        )
    assert body is not None
    return body


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    username: str
    password: str


def parse_basic(request: Request) -> BasicCredentials | None:
    """
    HTTP Basic credentials, or None when the header is absent or not Basic.
    """
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unauthorized("Malformed Basic authorization header") from exc
    username, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("Malformed Basic authorization header")
    return BasicCredentials(username=username, password=password)


@asynccontextmanager
async def login_attempt(
    request: Request, username: str | None, *, counts: bool = True
) -> AsyncIterator[None]:
    """
    Around a check of a person's credentials: refuse (429) while the client's address, or the account named
    by ``username``, is locked out; then, if ``counts``, book a failure (`InvalidGrant` or `Unauthorized`
    raised inside) or a success, which clears the failures of both.
    """
    limits: RateLimits = request.app.state.rate_limits
    settings = request.app.state.deps.settings
    ip = request.client.host if request.client else "unknown"
    account = normalise_username(username) if username else None
    if await limits.login_locked(ip):
        raise RateLimited(LOCKED_OUT, retry_after=settings.login_lockout_seconds)
    if account is not None and await limits.account_locked(account):
        raise RateLimited(LOCKED_OUT, retry_after=settings.login_account_lockout_seconds)
    try:
        yield
    except (InvalidGrant, Unauthorized):
        if counts:
            await limits.record_login_failure(ip, account)
        raise
    if counts:
        await limits.record_login_success(ip, account)


def require(scope: str | None = None) -> Callable[[Request], Awaitable[Principal]]:
    """
    Dependency: the verified principal, allowed to use an endpoint guarded by ``scope``.

    ``scope=None`` marks endpoints for people only (account, tokens): scoped client tokens are refused there.
    """

    async def dependency(request: Request) -> Principal:
        principal = await _verified(request)
        if not isinstance(principal, Principal):  # an API user or a product client owns nothing of its own
            raise PermissionDenied("API users are not allowed to call this endpoint", code="unauthorized")
        if scope is None:
            if principal.scopes:
                raise PermissionDenied("API users are not allowed to call this endpoint", code="unauthorized")
        elif not principal.allows(scope):
            raise InsufficientScope(f"This access token lacks the {scope} scope")
        return principal

    return dependency


def require_device(scope: str) -> Callable[[Request], Awaitable[Principal | ProductPrincipal]]:
    """
    Dependency of the device routes a product's customer may use too (its own devices: list, get,
    variables, functions, ping): a person as `require` lets them through, or a customer. Other product
    principals are refused as by `require`.
    """
    people = require(scope)

    async def dependency(request: Request) -> Principal | ProductPrincipal:
        principal = await _verified(request)
        if isinstance(principal, ProductPrincipal) and principal.kind == "customer":
            return principal
        return await people(request)

    return dependency


def device_caller(principal: Principal | ProductPrincipal) -> User | ProductPrincipal:
    """
    Who the device service acts for: the person behind a token, or the customer.
    """
    return principal.user if isinstance(principal, Principal) else principal


async def _verified(request: Request) -> AnyPrincipal:
    principal: AnyPrincipal | None = getattr(request.state, "principal", None)
    if principal is None:
        tokens: TokenService = request.app.state.deps.tokens
        principal = await tokens.verify(await extract_bearer(request))
        request.state.principal = principal
    return principal


async def require_any(request: Request) -> AnyPrincipal:
    """
    Dependency for product routes: any verified principal (person, API user, product client). The route's
    service decides through `ProductAccess` what it may do (decision 0016).
    """
    return await _verified(request)
