"""
A product's customers (catalogue §16) and the product's claim codes (§4 row 12). The rules are in
`services/customers.py`; these routes find the credentials, parse and render.

``POST /v1/products/:p/customers`` takes one of three credentials: HTTP Basic with the product client's id
and secret (or ``client_id`` + ``client_secret`` in the body, as particle-api-js sends them), the client's
id alone with ``response_type=token`` (the implicit flow), or a bearer token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from devicecloud.api.auth import parse_basic, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.errors import NO_STORE
from devicecloud.api.params import Params, body_doc, query_doc, read_params
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.accounts import IssuedToken
from devicecloud.domain.timestamps import iso
from devicecloud.services.customers import CreatedCustomer, NewCustomer

router = APIRouter(tags=["Customers"])


class CustomerCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: str | None = Field(default=None, description="The customer's email (or a unique id of your app)")
    password: str | None = Field(default=None, description="Required unless no_password")
    no_password: bool = Field(default=False, description="A shadow customer: tokens only through the client")
    client_id: str | None = Field(default=None, description="The product client, unless sent with HTTP Basic")
    client_secret: str | None = Field(default=None, description="Never sent by the implicit flow")
    response_type: str | None = Field(default=None, description="token: the implicit flow")
    grant_type: str | None = Field(
        default=None, description="Accepted and ignored (particle-api-js sends it)"
    )


class CustomerPassword(BaseModel):
    model_config = ConfigDict(extra="ignore")
    password: str


class CustomerQuery(BaseModel):
    page: int | None = None
    per_page: int | None = None
    perPage: int | None = None


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def render_token(token: IssuedToken) -> dict[str, Any]:
    body: dict[str, Any] = {"token_type": "bearer", "access_token": token.access_token}
    if token.expires_in is not None:
        body["expires_in"] = token.expires_in
    if token.refresh_token is not None:
        body["refresh_token"] = token.refresh_token
    return body


def _created(created: CreatedCustomer) -> JSONResponse:
    headers = dict(NO_STORE)
    if created.redirect is not None:
        headers["Location"] = created.redirect
    return JSONResponse(render_token(created.token), status_code=201, headers=headers)


@router.post(
    "/v1/products/{product}/customers",
    summary="Create a customer",
    status_code=201,
    openapi_extra=body_doc(CustomerCreate),
)
async def create_customer(
    request: Request, product: str, params: Annotated[CustomerCreate, Depends(Params(CustomerCreate))]
) -> JSONResponse:
    customers = _deps(request).customers
    new = NewCustomer(email=params.email, password=params.password, no_password=params.no_password)
    basic = parse_basic(request)
    implicit = params.response_type == "token"
    if basic is not None:
        secret = basic.password or None
        created = await customers.create_by_client(
            basic.username, secret, product, new, implicit=implicit and secret is None
        )
    elif params.client_id is not None:
        created = await customers.create_by_client(
            params.client_id,
            params.client_secret,
            product,
            new,
            implicit=implicit and not params.client_secret,
        )
    else:
        principal = await require_any(request)
        created = await customers.create_by_principal(principal, product, new)
    return _created(created)


@router.get(
    "/v1/products/{product}/customers", summary="List customers", openapi_extra=query_doc(CustomerQuery)
)
async def list_customers(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    query = await read_params(request)
    per_page = query.get("per_page", query.get("perPage"))
    page = await _deps(request).customers.list_customers(principal, product, query.get("page"), per_page)
    return {
        "customers": [
            {"id": customer.id, "username": customer.username, "devices": owned}
            for customer, owned in page.customers
        ],
        "devices": [
            {
                "id": device.id,
                "product_id": device.membership.product_id if device.membership else device.product_id,
                "last_ip_address": device.last_ip_address,
                "last_heard": iso(device.last_heard),
                "firmware_version": device.membership.firmware_version if device.membership else None,
                "online": device.online,
            }
            for device in page.devices
        ],
        "meta": {"total_pages": page.total_pages},
    }


@router.put(
    "/v1/products/{product}/customers/{email}",
    summary="Set a customer's password",
    openapi_extra=body_doc(CustomerPassword),
)
async def set_customer_password(
    request: Request,
    product: str,
    email: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
) -> dict[str, Any]:
    password = (await read_params(request)).get("password")
    await _deps(request).customers.set_password(principal, product, email, password)
    return {"ok": True}


@router.delete("/v1/products/{product}/customers/{email}", summary="Delete a customer")
async def delete_customer(
    request: Request, product: str, email: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    await _deps(request).customers.delete(principal, product, email)
    return {"ok": True}


@router.post("/v1/products/{product}/device_claims", summary="Create a claim code for a product device")
async def create_product_claim_code(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    code, owned = await _deps(request).customers.create_claim_code(principal, product)
    return {"claim_code": code, "device_ids": owned}
