"""
The account of the caller (catalogue §6): sign-up, profile, deletion, password reset, MFA.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from devicecloud.api.auth import require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.middleware import RateLimits
from devicecloud.api.params import Params, body_doc
from devicecloud.domain.accounts import Principal, User
from devicecloud.errors import RateLimited
from devicecloud.services.accounts import normalise_username

router = APIRouter(tags=["User"])
Person = Annotated[Principal, Depends(require())]


class SignUp(BaseModel):
    username: str = Field(description="Email address")
    password: str = Field(min_length=1)
    account_info: dict[str, Any] | None = None
    utm: dict[str, Any] | None = None


class UserUpdate(BaseModel):
    username: str | None = None
    password: str | None = None
    current_password: str | None = None
    account_info: dict[str, Any] | None = None
    invalidate_tokens: bool = False


class Password(BaseModel):
    password: str


class ResetRequest(BaseModel):
    username: str


class ResetCompletion(BaseModel):
    token: str | None = Field(default=None, description="The token from the reset message")
    password_reset_token: str | None = Field(default=None, description="Alias of token")
    password: str


class MfaConfirm(BaseModel):
    mfa_token: str
    otp: str
    invalidate_tokens: bool = False


class MfaDisable(BaseModel):
    current_password: str


def render_user(user: User, device_counts: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    info = {"first_name": None, "last_name": None, "business_account": False, **user.account_info}
    wifi, cellular = device_counts
    return {
        "username": user.username,
        "subscription_ids": [],
        "account_info": info,
        "mfa": {"enabled": user.mfa_enabled},
        "wifi_device_count": wifi,
        "cellular_device_count": cellular,
        "tos": None,
        "memberships": [],
        "scim_provisioned": False,
        "no_password": False,
    }


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def _limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


@router.post("/v1/users", summary="Create an account", openapi_extra=body_doc(SignUp))
async def sign_up(request: Request, params: Annotated[SignUp, Depends(Params(SignUp))]) -> dict[str, Any]:
    await _deps(request).accounts.sign_up(params.username, params.password, params.account_info)
    return {"ok": True}


@router.get("/v1/user", summary="Get the current user")
async def get_user(request: Request, principal: Person) -> dict[str, Any]:
    return render_user(principal.user, await _deps(request).devices.owned_counts(principal.user))


@router.put("/v1/user", summary="Update the current user", openapi_extra=body_doc(UserUpdate))
async def update_user(
    request: Request, principal: Person, params: Annotated[UserUpdate, Depends(Params(UserUpdate))]
) -> dict[str, Any]:
    user, message = await _deps(request).accounts.update_profile(
        principal.user,
        username=params.username,
        password=params.password,
        current_password=params.current_password,
        account_info=params.account_info,
        invalidate_tokens=params.invalidate_tokens,
        keep_token_id=principal.token.id,
    )
    counts = await _deps(request).devices.owned_counts(user)
    return {"ok": True, "message": message, **render_user(user, counts)}


@router.delete("/v1/user", summary="Delete the current user", openapi_extra=body_doc(Password))
async def delete_user(
    request: Request, principal: Person, params: Annotated[Password, Depends(Params(Password))]
) -> dict[str, Any]:
    await _deps(request).accounts.delete_account(principal.user, params.password)
    return {"ok": True, "message": "User's account has been deleted."}


@router.post(
    "/v1/user/password-reset", summary="Ask for a password reset", openapi_extra=body_doc(ResetRequest)
)
async def request_reset(
    request: Request, params: Annotated[ResetRequest, Depends(Params(ResetRequest))]
) -> dict[str, Any]:
    if params.username.strip():
        # Counted per address whether an account has it or not, so the answer reveals nothing.
        retry_after = await _limits(request).reset_mail_retry_after(normalise_username(params.username))
        if retry_after is not None:
            raise RateLimited(
                "Too many password reset requests for this address; try again later", retry_after=retry_after
            )
    await _deps(request).accounts.request_password_reset(params.username)
    return {"ok": True, "message": "Password reset email sent."}


@router.put(
    "/v1/user/password-reset", summary="Complete a password reset", openapi_extra=body_doc(ResetCompletion)
)
async def complete_reset(
    request: Request, params: Annotated[ResetCompletion, Depends(Params(ResetCompletion))]
) -> dict[str, Any]:
    token = params.token or params.password_reset_token
    user = await _deps(request).accounts.complete_password_reset(token, params.password)
    await _limits(request).clear_account_lockout(user.username)  # the mailbox's owner may log in again
    return {"ok": True, "message": "Password updated."}


@router.get("/v1/user/mfa-enable", summary="Start MFA enrolment")
async def start_mfa(request: Request, principal: Person) -> dict[str, Any]:
    enrollment = await _deps(request).accounts.start_mfa_enrollment(principal.user)
    return {"mfa_token": enrollment.mfa_token, "qr_url": enrollment.qr_url, "secret": enrollment.secret}


@router.post("/v1/user/mfa-enable", summary="Confirm MFA enrolment", openapi_extra=body_doc(MfaConfirm))
async def confirm_mfa(
    request: Request, principal: Person, params: Annotated[MfaConfirm, Depends(Params(MfaConfirm))]
) -> dict[str, Any]:
    codes = await _deps(request).accounts.confirm_mfa_enrollment(
        principal.user,
        params.mfa_token,
        params.otp,
        invalidate_tokens=params.invalidate_tokens,
        keep_token_id=principal.token.id,
    )
    return {"enrolled": True, "tokens": codes}


@router.put("/v1/user/mfa-disable", summary="Turn MFA off", openapi_extra=body_doc(MfaDisable))
async def disable_mfa(
    request: Request, principal: Person, params: Annotated[MfaDisable, Depends(Params(MfaDisable))]
) -> dict[str, Any]:
    await _deps(request).accounts.disable_mfa(principal.user, params.current_password)
    return {"ok": True}


@router.get("/v1/user/identify", summary="Identify the current user")
async def identify(principal: Person) -> dict[str, Any]:
    return {"id": str(principal.user.id), "email": principal.user.username}
