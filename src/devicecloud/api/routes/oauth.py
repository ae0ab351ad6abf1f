"""
``POST /oauth/token``: every grant, with client credentials by HTTP Basic or form fields (catalogue §2.1).

Every grant waits out the client address's login lockout; password grants also the account's (see
`api.auth.login_attempt`). Only grants that test what a person knows count as failures or successes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from devicecloud.api.auth import login_attempt, parse_basic
from devicecloud.api.deps import ApiDeps
from devicecloud.api.errors import NO_STORE
from devicecloud.api.params import FORM, content_type, read_body_params
from devicecloud.errors import InvalidInput, OAuthError, Unauthorized
from devicecloud.services.tokens import GRANT_MFA_OTP, GRANT_PASSWORD, GRANT_RECOVERY, GrantRequest

router = APIRouter(tags=["Authentication"])
# Grants that test something a person knows: their failures count toward the per-IP lockout.
USER_CREDENTIAL_GRANTS = frozenset({GRANT_PASSWORD, GRANT_MFA_OTP, GRANT_RECOVERY})


class TokenForm(BaseModel):
    grant_type: str = Field(description="password, client_credentials, refresh_token, urn:custom:mfa-otp...")
    client_id: str | None = Field(default=None, description="Unless sent with HTTP Basic")
    client_secret: str | None = Field(default=None, description="Unless sent with HTTP Basic")
    username: str | None = None
    password: str | None = None
    expires_in: int | None = Field(default=None, description="Seconds; 0 = never expires")
    expires_at: str | None = Field(default=None, description="ISO-8601 date; null = never")
    refresh_token: str | None = None
    mfa_token: str | None = None
    otp: str | None = None
    recovery_code: str | None = None
    scope: str | None = None


FORM_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {FORM: {"schema": TokenForm.model_json_schema()}},
    },
    "responses": {"200": {"description": "A new access token"}},
}


def _text(form: dict[str, Any], key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


async def create_token(request: Request) -> JSONResponse:
    deps: ApiDeps = request.app.state.deps
    if request.method != "POST" or content_type(request) != FORM:
        raise OAuthError("Method must be POST with application/x-www-form-urlencoded encoding")
    try:
        form = await read_body_params(request)
    except InvalidInput as exc:  # a broken body (or one that is not text): the OAuth shape, still a 400
        raise OAuthError(exc.description) from exc
    try:
        basic = parse_basic(request)
    except Unauthorized as exc:
        raise OAuthError("Invalid or missing client_id parameter", code="invalid_client") from exc
    client_id = basic.username if basic else _text(form, "client_id")
    client_secret = basic.password if basic else _text(form, "client_secret")
    client = await deps.tokens.authenticate_client(client_id, client_secret)

    grant = GrantRequest(
        grant_type=_text(form, "grant_type"),
        username=_text(form, "username"),
        password=_text(form, "password"),
        refresh_token=_text(form, "refresh_token"),
        mfa_token=_text(form, "mfa_token"),
        otp=_text(form, "otp"),
        recovery_code=_text(form, "recovery_code"),
        scope=_text(form, "scope"),
        expires_in=_text(form, "expires_in"),
        expires_at=_text(form, "expires_at"),
    )
    account = grant.username if grant.grant_type == GRANT_PASSWORD else None
    async with login_attempt(request, account, counts=grant.grant_type in USER_CREDENTIAL_GRANTS):
        issued = await deps.tokens.grant(client, grant)

    body: dict[str, Any] = {"token_type": "bearer", "access_token": issued.access_token}
    if issued.expires_in is not None:
        body["expires_in"] = issued.expires_in
    if issued.refresh_token is not None:
        body["refresh_token"] = issued.refresh_token
    if issued.scopes:
        body["scope"] = " ".join(issued.scopes)
    return JSONResponse(body, headers=NO_STORE)


router.add_api_route(
    "/oauth/token",
    create_token,
    methods=["POST"],
    summary="Create an access token",
    openapi_extra=FORM_DOC,
)
# pyparticleio builds its login URL from ``<api_prefix>/devices``, so it posts here.
router.add_api_route(
    "/v1/devices/oauth/token",
    create_token,
    methods=["POST"],
    summary="Create an access token (alias used by pyparticleio)",
    openapi_extra=FORM_DOC,
)
# Any other method gets the OAuth server's own error rather than a bare 405.
router.add_api_route(
    "/oauth/token", create_token, methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
