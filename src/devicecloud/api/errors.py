"""
The one table from domain errors to HTTP statuses and Particle error bodies.

OAuth errors render as ``{"error", "error_description"}`` (the OAuth server's own shape, with the no-store
headers); every other error as ``{"ok": false, "error", "error_description"}``. Both fields are always
present: pyparticleio reads both by key.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from devicecloud.errors import (
    AuthenticationFailed,
    Busy,
    Conflict,
    DeviceTimedOut,
    DomainError,
    InvalidInput,
    MfaRequired,
    NotFound,
    OAuthError,
    PermissionDenied,
    RateLimited,
    Unauthorized,
    Unavailable,
)

logger = structlog.get_logger("devicecloud.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

STATUS_BY_CLASS: tuple[tuple[type[DomainError], int], ...] = (
    (AuthenticationFailed, 401),
    (MfaRequired, 403),
    (OAuthError, 400),
    (InvalidInput, 400),
    (Unauthorized, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Conflict, 400),
    (Busy, 409),
    (RateLimited, 429),
    (Unavailable, 403),
    (DeviceTimedOut, 408),
)
STATUS_BY_OAUTH_CODE = {
    "invalid_token": 401,
    "mfa_required": 403,
    "sso_user": 403,
    "rate_limit_exceeded": 429,
}


def status_of(error: DomainError) -> int:
    """
    The HTTP status for a domain error.
    """
    if isinstance(error, OAuthError) and error.code in STATUS_BY_OAUTH_CODE:
        return STATUS_BY_OAUTH_CODE[error.code]
    for cls, status in STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 400


def error_body(error: DomainError) -> dict[str, Any]:
    """
    The JSON body for a domain error.
    """
    body: dict[str, Any] = {} if isinstance(error, OAuthError) else {"ok": False}
    body["error"] = error.code
    body["error_description"] = error.description
    body.update(error.extra)
    return body


def error_response(error: DomainError) -> JSONResponse:
    headers: dict[str, str] = {}
    if isinstance(error, OAuthError):
        headers.update(NO_STORE)
        if error.code == "invalid_client":
            headers["WWW-Authenticate"] = 'Basic realm="Service"'
    if isinstance(error, RateLimited) and "retry_after" in error.extra:
        headers["Retry-After"] = str(error.extra["retry_after"])
        error.extra.pop("retry_after")
    return JSONResponse(error_body(error), status_code=status_of(error), headers=headers)


def plain_error(status: int, code: str, description: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": code, "error_description": description}, status_code=status)


def install(app: FastAPI) -> None:
    """
    Register the handlers that keep every reply JSON in the Particle shape.
    """

    async def on_domain_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DomainError)
        return error_response(exc)

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return plain_error(404, "not_found", "Unknown route")
        if exc.status_code == 405:
            return plain_error(405, "method_not_allowed", "This method is not allowed on this route")
        return plain_error(exc.status_code, "http_error", str(exc.detail))

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return plain_error(400, "invalid_request", "; ".join(parts) or "Invalid request")

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)
        return plain_error(500, "server_error", "Something went wrong on the server")

    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
