"""
OAuth clients of the caller (catalogue §3) and of a product (``/v1/products/:p/clients``, checked by the
service through `access_product`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from devicecloud.api.auth import require, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import Params, body_doc
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.accounts import OAuthClient, Principal

router = APIRouter(tags=["OAuth clients"])


class ClientCreate(BaseModel):
    name: str
    type: Literal["installed", "web"]
    redirect_uri: str | None = None
    scope: str | None = Field(default=None, description="Space separated, e.g. customers:create or *:*")


class ClientUpdate(BaseModel):
    name: str | None = None
    scope: str | None = Field(default=None, description="none clears the scopes")


def render_client(client: OAuthClient, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": client.name, "type": client.type, "id": client.id}
    if client.redirect_uri:
        body["redirect_uri"] = client.redirect_uri
    if client.scopes:
        body["scope"] = " ".join(client.scopes)
    if client.product_id is not None:
        body["product_id"] = client.product_id
    if secret is not None:
        body["secret"] = secret
    return body


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


@router.get("/v1/clients", summary="List OAuth clients")
async def list_clients(
    request: Request, principal: Annotated[Principal, Depends(require("clients:list"))]
) -> dict[str, Any]:
    clients = await _deps(request).clients.list(principal.user)
    return {"ok": True, "clients": [render_client(c) for c in clients]}


@router.post("/v1/clients", summary="Create an OAuth client", openapi_extra=body_doc(ClientCreate))
async def create_client(
    request: Request,
    principal: Annotated[Principal, Depends(require("clients:create"))],
    params: Annotated[ClientCreate, Depends(Params(ClientCreate))],
) -> dict[str, Any]:
    created = await _deps(request).clients.create(
        principal.user,
        name=params.name,
        type=params.type,
        redirect_uri=params.redirect_uri,
        scope=params.scope,
    )
    return {"ok": True, "client": render_client(created.client, created.secret)}


@router.put("/v1/clients/{client_id}", summary="Update an OAuth client", openapi_extra=body_doc(ClientUpdate))
async def update_client(
    request: Request,
    client_id: str,
    principal: Annotated[Principal, Depends(require("clients:update"))],
    params: Annotated[ClientUpdate, Depends(Params(ClientUpdate))],
) -> dict[str, Any]:
    client = await _deps(request).clients.update(
        principal.user, client_id, name=params.name, scope=params.scope
    )
    return {"ok": True, "client": render_client(client)}


@router.delete("/v1/clients/{client_id}", summary="Delete an OAuth client", status_code=204)
async def delete_client(
    request: Request, client_id: str, principal: Annotated[Principal, Depends(require("clients:remove"))]
) -> Response:
    await _deps(request).clients.delete(principal.user, client_id)
    return Response(status_code=204)


# ------------------------------------------------------------------ a product's clients (catalogue §3 twins)


@router.get("/v1/products/{product}/clients", summary="List a product's OAuth clients")
async def list_product_clients(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    clients = await _deps(request).clients.list_for_product(principal, product)
    return {"ok": True, "clients": [render_client(c) for c in clients]}


@router.post(
    "/v1/products/{product}/clients",
    summary="Create an OAuth client of a product",
    openapi_extra=body_doc(ClientCreate),
)
async def create_product_client(
    request: Request,
    product: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[ClientCreate, Depends(Params(ClientCreate))],
) -> dict[str, Any]:
    created = await _deps(request).clients.create_for_product(
        principal,
        product,
        name=params.name,
        type=params.type,
        redirect_uri=params.redirect_uri,
        scope=params.scope,
    )
    return {"ok": True, "client": render_client(created.client, created.secret)}


@router.put(
    "/v1/products/{product}/clients/{client_id}",
    summary="Update an OAuth client of a product",
    openapi_extra=body_doc(ClientUpdate),
)
async def update_product_client(
    request: Request,
    product: str,
    client_id: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[ClientUpdate, Depends(Params(ClientUpdate))],
) -> dict[str, Any]:
    client = await _deps(request).clients.update_for_product(
        principal, product, client_id, name=params.name, scope=params.scope
    )
    return {"ok": True, "client": render_client(client)}


@router.delete(
    "/v1/products/{product}/clients/{client_id}",
    summary="Delete an OAuth client of a product",
    status_code=204,
)
async def delete_product_client(
    request: Request,
    product: str,
    client_id: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
) -> Response:
    await _deps(request).clients.delete_for_product(principal, product, client_id)
    return Response(status_code=204)
