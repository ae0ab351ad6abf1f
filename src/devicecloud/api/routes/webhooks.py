"""
Integrations of type Webhook (catalogue §10): ``/v1/integrations`` and the legacy ``/v1/webhooks`` the
official clients still use. Both share one service; only the reply shapes differ.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from devicecloud.api.auth import require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import body_doc, read_params
from devicecloud.domain.accounts import Principal
from devicecloud.domain.timestamps import iso
from devicecloud.domain.webhooks import WEBHOOK_TYPE, DeliveryLog, Webhook, config_to_fields

router = APIRouter(tags=["Integrations"])


class WebhookFields(BaseModel):
    """
    Catalogue §10.2 (documentation only: the service reads the fields by their Particle names).
    """

    model_config = ConfigDict(extra="allow")

    integration_type: str | None = Field(default=None, description="Webhook (the only type this server has)")
    event: str = Field(description="Event name prefix that triggers the webhook")
    url: str = Field(description="Target URL (a Mustache template)")
    requestType: str | None = Field(default=None, description="GET, POST (default), PUT or DELETE")
    deviceID: str | None = Field(default=None, description="Only events of this device")
    name: str | None = None
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    form: dict[str, Any] | None = None
    body: str | None = None
    query: dict[str, Any] | None = None
    headers: dict[str, Any] | None = None
    auth: dict[str, str] | None = None
    responseTopic: str | None = None
    errorResponseTopic: str | None = None
    responseTemplate: dict[str, Any] | str | None = None
    noDefaults: bool | None = None
    disabled: bool | None = None
    rejectUnauthorized: bool | None = None
    unchunked: bool | None = None


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


async def _params(request: Request) -> dict[str, Any]:
    params = await read_params(request)
    params.pop("access_token", None)
    return params


def render_hook(hook: Webhook) -> dict[str, Any]:
    fields = config_to_fields(hook.config)
    return {
        "id": hook.id,
        **fields,
        "integration_type": WEBHOOK_TYPE,
        "created_at": iso(hook.created_at),
    }


SUMMARY_FIELDS = ("name", "event", "url", "requestType", "deviceID", "disabled")


def render_summary(hook: Webhook) -> dict[str, Any]:
    """
    A hook in lists and create replies: what the clients read (WebhookInfo / IntegrationInfo in
    particle-api-js), never the templates, headers or credentials — those only come back to GET and PUT.
    """
    full = render_hook(hook)
    summary = {key: full[key] for key in SUMMARY_FIELDS if key in full}
    return {"id": hook.id, **summary, "integration_type": WEBHOOK_TYPE, "created_at": full["created_at"]}


def render_log(log: DeliveryLog) -> dict[str, Any]:
    return {"time": iso(log.at), "request": log.request, "response": log.response, "error": log.error}


def _created(request: Request, hook: Webhook, **extra: Any) -> JSONResponse:
    hook_url = f"{_deps(request).settings.effective_public_url}/v1/webhooks/{hook.id}"
    return JSONResponse({"ok": True, **extra, **render_summary(hook), "hookUrl": hook_url}, status_code=201)


# ---------------------------------------------------------------------------------------- /v1/integrations


@router.post(
    "/v1/integrations",
    status_code=201,
    summary="Create an integration (Webhook)",
    openapi_extra=body_doc(WebhookFields),
)
async def create_integration(
    request: Request, principal: Annotated[Principal, Depends(require("integrations:create"))]
) -> JSONResponse:
    hook = await _deps(request).webhooks.create(principal.user, await _params(request))
    return _created(request, hook)


@router.get("/v1/integrations", summary="List integrations")
@router.get("/v1/webhooks", summary="List webhooks (legacy)")
async def list_integrations(
    request: Request, principal: Annotated[Principal, Depends(require("integrations:list"))]
) -> list[dict[str, Any]]:
    return [render_summary(hook) for hook in await _deps(request).webhooks.list_hooks(principal.user)]


@router.get("/v1/integrations/{integration_id}", summary="Get an integration with its last requests")
async def get_integration(
    request: Request,
    integration_id: str,
    principal: Annotated[Principal, Depends(require("integrations:get"))],
) -> dict[str, Any]:
    hook, logs = await _deps(request).webhooks.get(principal.user, integration_id)
    return {"integration": {**render_hook(hook), "logs": [render_log(log) for log in logs]}}


@router.put(
    "/v1/integrations/{integration_id}",
    summary="Replace an integration's configuration",
    openapi_extra=body_doc(WebhookFields),
)
async def edit_integration(
    request: Request,
    integration_id: str,
    principal: Annotated[Principal, Depends(require("integrations:update"))],
) -> dict[str, Any]:
    hook = await _deps(request).webhooks.replace(principal.user, integration_id, await _params(request))
    return {"integration": render_hook(hook)}


@router.post("/v1/integrations/{integration_id}/test", summary="Send a test event through an integration")
async def test_integration(
    request: Request,
    integration_id: str,
    principal: Annotated[Principal, Depends(require("integrations:test"))],
) -> dict[str, Any]:
    error = await _deps(request).webhooks.test(principal.user, integration_id)
    if error is None:
        return {"pass": True, "data": None}
    return {"pass": False, "data": None, "error": error}


@router.delete("/v1/integrations/{integration_id}", status_code=204, summary="Delete an integration")
async def delete_integration(
    request: Request,
    integration_id: str,
    principal: Annotated[Principal, Depends(require("integrations:remove"))],
) -> Response:
    await _deps(request).webhooks.delete(principal.user, integration_id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------------------- /v1/webhooks


@router.post(
    "/v1/webhooks",
    status_code=201,
    summary="Create a webhook (legacy)",
    openapi_extra=body_doc(WebhookFields),
)
async def create_webhook(
    request: Request, principal: Annotated[Principal, Depends(require("integrations:create"))]
) -> JSONResponse:
    params = await _params(request)
    params.pop("integration_type", None)
    hook = await _deps(request).webhooks.create(principal.user, params)
    return _created(request, hook, name=hook.config.name or hook.config.event)


@router.get("/v1/webhooks/{hook_id}", summary="Get a webhook (legacy)")
async def get_webhook(
    request: Request, hook_id: str, principal: Annotated[Principal, Depends(require("integrations:get"))]
) -> dict[str, Any]:
    hook, logs = await _deps(request).webhooks.get(principal.user, hook_id)
    return {**render_hook(hook), "logs": [render_log(log) for log in logs]}


@router.delete("/v1/webhooks/{hook_id}", summary="Delete a webhook (legacy)")
async def delete_webhook(
    request: Request, hook_id: str, principal: Annotated[Principal, Depends(require("integrations:remove"))]
) -> dict[str, Any]:
    # {"ok": true}, not 204: particle-cli prints its success message only for a JSON reply with ok.
    await _deps(request).webhooks.delete(principal.user, hook_id)
    return {"ok": True}
