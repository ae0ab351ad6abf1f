"""
Products and their teams (catalogue §14). Creation and edit (``POST /v1/products``, ``PUT
/v1/products/:p``) are devicecloud extensions, marked so in the OpenAPI document. Who may do what is decided
in the services (`services/product_access.py`, decision 0016); these routes parse and render.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from devicecloud.api.auth import require, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.errors import NO_STORE
from devicecloud.api.params import Params, body_doc
from devicecloud.domain.access import AnyPrincipal, Role
from devicecloud.domain.accounts import Principal
from devicecloud.domain.products import ApiUser, TeamMember
from devicecloud.services.products import ApiUserToken, ProductView

router = APIRouter(tags=["Products"])

EXTENSION = "x-devicecloud-extension"


def extension(model: type[BaseModel], why: str) -> dict[str, Any]:
    return {**body_doc(model), EXTENSION: True, "description": f"devicecloud extension: {why}"}


class ProductSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")
    quarantine: bool | str | None = None


class ProductCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    platform_id: int | str
    slug: str | None = Field(default=None, description="Made from the name when omitted")
    description: str | None = None
    settings: ProductSettings | None = None


class ProductUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    description: str | None = None
    settings: ProductSettings | None = None


class TeamInvite(BaseModel):
    model_config = ConfigDict(extra="ignore")
    username: str | None = Field(default=None, description="Email of an existing account to add")
    role: str | None = Field(
        default=None, description="Administrator (default), Developer, Support, View-only"
    )
    friendly_name: str | None = Field(default=None, description="Creates an API user (with scopes)")
    scopes: list[str] | str | None = None


class TeamUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str | None = None
    friendly_name: str | None = None
    scopes: list[str] | str | None = None


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def render_product(view: ProductView) -> dict[str, Any]:
    product = view.product
    return {
        "id": product.id,
        "product_id": product.id,
        "platform_id": product.platform_id,
        "name": product.name,
        "slug": product.slug,
        "description": product.description or "",
        "subscription_id": None,
        "mb_limit": None,
        "user": product.owner_username,
        "organization": None,
        "requires_activation_codes": False,
        "groups": list(view.groups),
        "settings": {"location": {}, "known_application": {"opt_in": True}, "quarantine": product.quarantine},
    }


def render_role(role: Role) -> dict[str, str]:
    return {"id": role.id, "name": role.value}


def render_member(member: TeamMember) -> dict[str, Any]:
    return {"_id": str(member.user_id), "username": member.username, "role": render_role(member.role)}


def render_api_user(bot: ApiUser) -> dict[str, Any]:
    return {
        "_id": f"api-{bot.id}",
        "username": bot.username,
        "friendly_name": bot.friendly_name,
        "is_programmatic": True,
        "scopes": list(bot.scopes),
    }


def _with_token(issued: ApiUserToken) -> dict[str, Any]:
    return {**render_api_user(issued.api_user), "tokens": [{"token": issued.token}]}


@router.get("/v1/user/products", summary="List your products")
async def list_user_products(
    request: Request, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    views = await _deps(request).products.list_products(principal)
    return {"products": [render_product(v) for v in views]}


@router.get("/v1/products", summary="List your products (the path particle-api-js uses)")
async def list_products(
    request: Request, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return await list_user_products(request, principal)


@router.post(
    "/v1/products",
    summary="Create a product",
    status_code=201,
    openapi_extra=extension(ProductCreate, "a self-hosted cloud has no console; the creator becomes Owner."),
)
async def create_product(
    request: Request,
    principal: Annotated[Principal, Depends(require())],
    params: Annotated[ProductCreate, Depends(Params(ProductCreate))],
) -> JSONResponse:
    view = await _deps(request).products.create(
        principal.user,
        name=params.name,
        platform_id=params.platform_id,
        slug=params.slug,
        description=params.description,
        quarantine=params.settings.quarantine if params.settings else None,
    )
    return JSONResponse({"product": render_product(view)}, status_code=201)


@router.get("/v1/products/{product}", summary="Get a product (by id or slug)")
async def get_product(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return {"product": render_product(await _deps(request).products.get(principal, product))}


@router.put(
    "/v1/products/{product}",
    summary="Edit a product's name, description or settings",
    openapi_extra=extension(
        ProductUpdate, "Administrators and the Owner edit a product, settings.quarantine incl."
    ),
)
async def update_product(
    request: Request,
    product: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[ProductUpdate, Depends(Params(ProductUpdate))],
) -> dict[str, Any]:
    view = await _deps(request).products.update(
        principal,
        product,
        name=params.name,
        description=params.description if "description" in params.model_fields_set else ...,
        quarantine=params.settings.quarantine if params.settings else None,
    )
    return {"product": render_product(view)}


@router.get("/v1/products/{product}/team", summary="List a product's team")
async def list_team(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    team = await _deps(request).products.team(principal, product)
    return {
        "ok": True,
        "team": [render_member(m) for m in team.members] + [render_api_user(b) for b in team.api_users],
    }


@router.post(
    "/v1/products/{product}/team",
    summary="Invite an existing user, or create an API user (friendly_name and scopes)",
    openapi_extra=body_doc(TeamInvite),
)
async def invite(
    request: Request,
    product: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[TeamInvite, Depends(Params(TeamInvite))],
) -> JSONResponse:
    service = _deps(request).products
    if params.friendly_name is not None or params.scopes is not None:
        issued = await service.create_api_user(principal, product, params.friendly_name, params.scopes)
        return JSONResponse({"ok": True, "created": _with_token(issued)}, headers=NO_STORE)
    member = await service.invite(principal, product, params.username, params.role)
    return JSONResponse(
        {"ok": True, "invited": {"username": member.username, "role": render_role(member.role)}}
    )


async def _update_member(
    request: Request, product: str, username: str, principal: AnyPrincipal, params: TeamUpdate
) -> JSONResponse:
    updated = await _deps(request).products.update_member(
        principal,
        product,
        username,
        role=params.role,
        friendly_name=params.friendly_name,
        scopes=params.scopes,
    )
    if isinstance(updated, ApiUserToken):
        return JSONResponse({"ok": True, "updated": _with_token(updated)}, headers=NO_STORE)
    return JSONResponse({"ok": True, "updated": render_member(updated)})


@router.put(
    "/v1/products/{product}/team/{username}",
    summary="Change a member's role, or an API user's name and scopes (a fresh token)",
    openapi_extra=body_doc(TeamUpdate),
)
async def update_member(
    request: Request,
    product: str,
    username: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[TeamUpdate, Depends(Params(TeamUpdate))],
) -> JSONResponse:
    return await _update_member(request, product, username, principal, params)


@router.post(
    "/v1/products/{product}/team/{username}",
    summary="Same as PUT (the reference documents POST)",
    openapi_extra=body_doc(TeamUpdate),
)
async def update_member_post(
    request: Request,
    product: str,
    username: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[TeamUpdate, Depends(Params(TeamUpdate))],
) -> JSONResponse:
    return await _update_member(request, product, username, principal, params)


@router.delete("/v1/products/{product}/team/{username}", summary="Remove a member or an API user")
async def remove_member(
    request: Request, product: str, username: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    await _deps(request).products.remove(principal, product, username)
    return {"ok": True}
