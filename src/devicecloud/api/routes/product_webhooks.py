"""
A product's integrations (catalogue §10, product twins): ``/v1/products/:p/integrations[/…]`` and the
legacy ``/v1/products/:p/webhooks[/…]`` particle-api-js's webhook calls use with a product. The hooks are
the product's, not their creator's; the service checks access (`access_product`, integrations:*).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from devicecloud.api.auth import require_any
from devicecloud.api.params import body_doc
from devicecloud.api.routes.webhooks import (
    WebhookFields,
    _deps,
    _params,
    render_hook,
    render_log,
    render_summary,
)
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.webhooks import Webhook

router = APIRouter(tags=["Integrations"])

Caller = Annotated[AnyPrincipal, Depends(require_any)]


def _created(request: Request, hook: Webhook, **extra: Any) -> JSONResponse:
    base = _deps(request).settings.effective_public_url
    hook_url = f"{base}/v1/products/{hook.product_id}/integrations/{hook.id}"
    return JSONResponse({"ok": True, **extra, **render_summary(hook), "hookUrl": hook_url}, status_code=201)


@router.post(
    "/v1/products/{product}/integrations",
    status_code=201,
    summary="Create a product integration (Webhook)",
    openapi_extra=body_doc(WebhookFields),
)
async def create_product_integration(request: Request, product: str, principal: Caller) -> JSONResponse:
    hook = await _deps(request).webhooks.create_for_product(principal, product, await _params(request))
    return _created(request, hook)


@router.get("/v1/products/{product}/integrations", summary="List a product's integrations")
@router.get("/v1/products/{product}/webhooks", summary="List a product's webhooks (legacy)")
async def list_product_integrations(
    request: Request, product: str, principal: Caller
) -> list[dict[str, Any]]:
    hooks = await _deps(request).webhooks.list_for_product(principal, product)
    return [render_summary(hook) for hook in hooks]


@router.get(
    "/v1/products/{product}/integrations/{integration_id}",
    summary="Get a product integration with its last requests",
)
async def get_product_integration(
    request: Request, product: str, integration_id: str, principal: Caller
) -> dict[str, Any]:
    hook, logs = await _deps(request).webhooks.product_get(principal, product, integration_id)
    return {"integration": {**render_hook(hook), "logs": [render_log(log) for log in logs]}}


@router.put(
    "/v1/products/{product}/integrations/{integration_id}",
    summary="Replace a product integration's configuration",
    openapi_extra=body_doc(WebhookFields),
)
async def edit_product_integration(
    request: Request, product: str, integration_id: str, principal: Caller
) -> dict[str, Any]:
    params = await _params(request)
    hook = await _deps(request).webhooks.product_replace(principal, product, integration_id, params)
    return {"integration": render_hook(hook)}


@router.post(
    "/v1/products/{product}/integrations/{integration_id}/test",
    summary="Send a test event through a product integration",
)
async def test_product_integration(
    request: Request, product: str, integration_id: str, principal: Caller
) -> dict[str, Any]:
    error = await _deps(request).webhooks.product_test(principal, product, integration_id)
    if error is None:
        return {"pass": True, "data": None}
    return {"pass": False, "data": None, "error": error}


@router.delete(
    "/v1/products/{product}/integrations/{integration_id}",
    status_code=204,
    summary="Delete a product integration",
)
async def delete_product_integration(
    request: Request, product: str, integration_id: str, principal: Caller
) -> Response:
    await _deps(request).webhooks.product_delete(principal, product, integration_id)
    return Response(status_code=204)


@router.post(
    "/v1/products/{product}/webhooks",
    status_code=201,
    summary="Create a product webhook (legacy)",
    openapi_extra=body_doc(WebhookFields),
)
async def create_product_webhook(request: Request, product: str, principal: Caller) -> JSONResponse:
    params = await _params(request)
    params.pop("integration_type", None)
    hook = await _deps(request).webhooks.create_for_product(principal, product, params)
    return _created(request, hook, name=hook.config.name or hook.config.event)


@router.get("/v1/products/{product}/webhooks/{hook_id}", summary="Get a product webhook (legacy)")
async def get_product_webhook(
    request: Request, product: str, hook_id: str, principal: Caller
) -> dict[str, Any]:
    hook, logs = await _deps(request).webhooks.product_get(principal, product, hook_id)
    return {**render_hook(hook), "logs": [render_log(log) for log in logs]}


@router.delete("/v1/products/{product}/webhooks/{hook_id}", summary="Delete a product webhook (legacy)")
async def delete_product_webhook(
    request: Request, product: str, hook_id: str, principal: Caller
) -> dict[str, Any]:
    await _deps(request).webhooks.product_delete(principal, product, hook_id)
    return {"ok": True}
