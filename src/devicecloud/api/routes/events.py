"""
The events API (catalogue §9): server-sent event streams and publishing.

This router is included before the devices router: ``/v1/devices/events`` must win over
``/v1/devices/{device}``, and ``/v1/devices/{device}/events[/…]`` over ``/v1/devices/{device}/{variable}``.
Prefixes may hold slashes and arrive raw (``spark/status``, pyparticleio) or encoded (``spark%2Fstatus``,
particle-api-js and particle-cli); the server decodes the path before routing, so both read the same.
The ``nonce`` query particle-api-js adds is ignored.
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from devicecloud.api.auth import device_caller, require, require_device
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import Params, body_doc
from devicecloud.api.sse import MEDIA_TYPE, EventStreamResponse, StreamRegistry
from devicecloud.domain.access import AnyPrincipal, ProductPrincipal
from devicecloud.domain.accounts import Principal
from devicecloud.errors import RateLimited
from devicecloud.services.events import StreamScope

router = APIRouter(tags=["Events"])

_EXAMPLE = (
    ":ok\n\n"
    "event: temperature\n"
    'data: {"data":"25.34","ttl":60,"published_at":"2015-07-18T00:12:18.174Z",'
    '"coreid":"0123456789abcdef01234567"}\n\n'
)
STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "A server-sent event stream: `:ok`, then one `event:`/`data:` block per event, and a `:` "
            "keep-alive comment after a few seconds of silence. It ends (cleanly) only when its access token "
            "is revoked or expires, or the server shuts down."
        ),
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}, "example": _EXAMPLE}},
    },
    429: {"description": "Too many streams open, or opened lately, from this address"},
}


class Publish(BaseModel):
    name: str | None = Field(default=None, description="Event name, 1–64 characters (required)")
    data: str | int | float | bool | None = Field(default=None, description="Event data, up to 1,024 bytes")
    private: bool | str | None = Field(
        default=None, description="true: only your own streams see it (default: public)"
    )
    ttl: int | str | None = Field(default=None, description="Time to live in seconds (default 60)")


def _publish_doc() -> dict[str, Any]:
    doc = copy.deepcopy(body_doc(Publish))
    doc["requestBody"]["required"] = True
    for content in doc["requestBody"]["content"].values():
        content["schema"]["required"] = ["name"]
    return doc


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def stream_registry(request: Request) -> StreamRegistry:
    """
    The app's per-IP stream counter (``create_app`` makes it).
    """
    streams: StreamRegistry = request.app.state.event_streams
    return streams


async def open_stream(
    request: Request,
    principal: Principal | ProductPrincipal,
    scope: StreamScope,
    prefix: str,
    device: str | None = None,
) -> EventStreamResponse:
    """
    Check the per-IP cap, subscribe (the service checks the prefix and the device), and stream. A product's
    customer streams its own devices' events (decision 0032).
    """
    deps = _deps(request)
    streams = stream_registry(request)
    ip = request.client.host if request.client else "unknown"
    if not streams.acquire(ip):
        raise RateLimited(f"At most {streams.per_ip} event streams may be open from one address")
    try:
        subscription = await deps.events.stream(device_caller(principal), scope, prefix, device)
    except BaseException:
        streams.release(ip)
        raise
    streams.track(subscription, principal.token)
    return EventStreamResponse(
        subscription,
        clock=deps.clock,
        keepalive=deps.settings.sse_keepalive,
        on_close=lambda: streams.release(ip, subscription),
    )


async def open_product_stream(
    request: Request, principal: AnyPrincipal, product: str, prefix: str, device: str | None = None
) -> EventStreamResponse:
    """
    `open_stream` for ``/v1/products/:p/events[/…]``: the service checks the caller's access to the product.
    """
    deps = _deps(request)
    streams = stream_registry(request)
    ip = request.client.host if request.client else "unknown"
    if not streams.acquire(ip):
        raise RateLimited(f"At most {streams.per_ip} event streams may be open from one address")
    try:
        subscription = await deps.events.product_stream(principal, product, prefix, device)
    except BaseException:
        streams.release(ip)
        raise
    streams.track(subscription, principal.token)
    return EventStreamResponse(
        subscription,
        clock=deps.clock,
        keepalive=deps.settings.sse_keepalive,
        on_close=lambda: streams.release(ip, subscription),
    )


# A person with the events:get scope (or none), or a product's customer (its own devices' events only).
Reader = Annotated[Principal | ProductPrincipal, Depends(require_device("events:get"))]


@router.get(
    "/v1/events",
    summary="Public event stream (refused: a prefix is required)",
    response_class=EventStreamResponse,
    status_code=200,
    responses={**STREAM_DOC, 400: {"description": "Always: event prefix filter is required"}},
)
async def events_without_prefix(request: Request, principal: Reader) -> EventStreamResponse:
    return await open_stream(request, principal, "all", "")


@router.get(
    "/v1/events/{prefix:path}",
    summary="Stream public events and your own whose name starts with a prefix",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def public_events(request: Request, prefix: str, principal: Reader) -> EventStreamResponse:
    return await open_stream(request, principal, "all", prefix)


@router.get(
    "/v1/devices/events",
    summary="Stream the events of your devices and your own publishes",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def my_events(request: Request, principal: Reader) -> EventStreamResponse:
    return await open_stream(request, principal, "mine", "")


@router.get(
    "/v1/devices/events/{prefix:path}",
    summary="Stream your events whose name starts with a prefix",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def my_events_with_prefix(request: Request, prefix: str, principal: Reader) -> EventStreamResponse:
    return await open_stream(request, principal, "mine", prefix)


@router.post(
    "/v1/devices/events",
    summary="Publish an event",
    openapi_extra=_publish_doc(),
)
async def publish_event(
    request: Request,
    principal: Annotated[Principal, Depends(require("events:send"))],
    params: Annotated[Publish, Depends(Params(Publish))],
) -> dict[str, Any]:
    data = params.data
    if data is not None and not isinstance(data, str):  # a JSON number or boolean, as JSON text
        data = json.dumps(data)
    await _deps(request).events.publish_from_api(
        principal.user, params.name, data, params.private, params.ttl
    )
    return {"ok": True}


@router.get(
    "/v1/devices/{device}/events",
    summary="Stream the events of one of your devices",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def device_events(request: Request, device: str, principal: Reader) -> EventStreamResponse:
    return await open_stream(request, principal, "device", "", device)


@router.get(
    "/v1/devices/{device}/events/{prefix:path}",
    summary="Stream one device's events whose name starts with a prefix",
    response_class=EventStreamResponse,
    status_code=200,
    responses=STREAM_DOC,
)
async def device_events_with_prefix(
    request: Request, device: str, prefix: str, principal: Reader
) -> EventStreamResponse:
    return await open_stream(request, principal, "device", prefix, device)
