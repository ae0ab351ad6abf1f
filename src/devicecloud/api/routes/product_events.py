"""
Product event streams and publishing (catalogue §9.1–9.2 product twins): ``GET /v1/products/:p/events[/…]``,
``GET /v1/products/:p/devices/:id/events[/…]`` (what particle-api-js and particle-cli build for a product and
a device) and ``POST /v1/products/:p/events``. Included before any product-device router: these must win
over ``/v1/products/:p/devices/:id/:variable``. The service checks access (`access_product`, events:get and
events:send).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from devicecloud.api.auth import require_any
from devicecloud.api.params import Params
from devicecloud.api.routes.events import STREAM_DOC, Publish, _deps, _publish_doc, open_product_stream
from devicecloud.api.sse import EventStreamResponse
from devicecloud.domain.access import AnyPrincipal

router = APIRouter(tags=["Events"])

Caller = Annotated[AnyPrincipal, Depends(require_any)]


@router.get(
    "/v1/products/{product}/events",
    summary="Stream the events of a product's devices and of the product",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def product_events(request: Request, product: str, principal: Caller) -> EventStreamResponse:
    return await open_product_stream(request, principal, product, "")


@router.get(
    "/v1/products/{product}/events/{prefix:path}",
    summary="Stream a product's events whose name starts with a prefix",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def product_events_with_prefix(
    request: Request, product: str, prefix: str, principal: Caller
) -> EventStreamResponse:
    return await open_product_stream(request, principal, product, prefix)


@router.get(
    "/v1/products/{product}/devices/{device}/events",
    summary="Stream the events of one of a product's devices",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def product_device_events(
    request: Request, product: str, device: str, principal: Caller
) -> EventStreamResponse:
    return await open_product_stream(request, principal, product, "", device)


@router.get(
    "/v1/products/{product}/devices/{device}/events/{prefix:path}",
    summary="Stream one product device's events whose name starts with a prefix",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def product_device_events_with_prefix(
    request: Request, product: str, device: str, prefix: str, principal: Caller
) -> EventStreamResponse:
    return await open_product_stream(request, principal, product, prefix, device)


@router.post(
    "/v1/products/{product}/events",
    summary="Publish an event for a product",
    openapi_extra=_publish_doc(),
)
async def publish_product_event(
    request: Request,
    product: str,
    principal: Caller,
    params: Annotated[Publish, Depends(Params(Publish))],
) -> dict[str, Any]:
    data = params.data
    if data is not None and not isinstance(data, str):  # a JSON number or boolean, as JSON text
        data = json.dumps(data)
    await _deps(request).events.publish_for_product(
        principal, product, params.name, data, params.private, params.ttl
    )
    return {"ok": True}
