"""
Listing and revoking access tokens (catalogue §2.2–§2.6).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from devicecloud.api.auth import login_attempt, parse_basic, require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.errors import NO_STORE
from devicecloud.domain.accounts import AccessToken, Principal, User
from devicecloud.domain.timestamps import iso
from devicecloud.errors import Unauthorized

router = APIRouter(tags=["Authentication"])
Person = Annotated[Principal, Depends(require())]
BASIC_DOC: dict[str, Any] = {"security": [{"basic": []}]}


def render_token(token: AccessToken) -> dict[str, Any]:
    return {"token": f"{token.hint}...", "expires_at": iso(token.expires_at), "client": token.client_id}


async def _basic_user(request: Request, *, required: bool) -> User | None:
    deps: ApiDeps = request.app.state.deps
    credentials = parse_basic(request)
    if credentials is None:
        if required:
            raise Unauthorized("Send your username and password with HTTP Basic authentication")
        return None
    otp = request.query_params.get("otp")
    # A password (and OTP) check like a login: the same lockouts guard it and count its failures.
    async with login_attempt(request, credentials.username):
        return await deps.accounts.authenticate_basic(credentials.username, credentials.password, otp)


@router.get("/v1/access_tokens", summary="List your access tokens (HTTP Basic)", openapi_extra=BASIC_DOC)
async def list_tokens(request: Request) -> JSONResponse:
    deps: ApiDeps = request.app.state.deps
    user = await _basic_user(request, required=True)
    assert user is not None
    tokens = await deps.tokens.list_tokens(user)
    return JSONResponse([render_token(t) for t in tokens], headers=NO_STORE)


@router.delete("/v1/access_tokens", summary="Revoke all your access tokens")
async def revoke_all(request: Request, principal: Person) -> dict[str, Any]:
    deps: ApiDeps = request.app.state.deps
    await deps.tokens.revoke_all(principal.user)
    return {"ok": True}


@router.get("/v1/access_tokens/current", summary="Information on the token used")
async def current(principal: Person) -> JSONResponse:
    token = principal.token
    body = {
        "expires_at": iso(token.expires_at),
        "client": token.client_id,
        "client_id": token.client_id,
        "scopes": list(token.scopes),
        "orgs": [],
    }
    return JSONResponse(body, headers=NO_STORE)


@router.delete("/v1/access_tokens/current", summary="Revoke the token used")
async def revoke_current(request: Request, principal: Person) -> dict[str, Any]:
    deps: ApiDeps = request.app.state.deps
    await deps.tokens.revoke_current(principal)
    return {"ok": True}


@router.delete(
    "/v1/access_tokens/{token}",
    summary="Revoke one access token (the token itself, or HTTP Basic as its owner)",
    openapi_extra=BASIC_DOC,
)
async def revoke_one(request: Request, token: str) -> dict[str, Any]:
    deps: ApiDeps = request.app.state.deps
    owner = await _basic_user(request, required=False)
    await deps.tokens.revoke(token, owner)
    return {"ok": True}
