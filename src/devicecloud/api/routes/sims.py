"""
SIM cards (catalogue §8 and the SIM status of §5), for a user under ``/v1/sims`` and for a product under
``/v1/products/:p/sims``. The rules are in `services/sims.py`.

A SIM is shown with the catalogue's field names and, beside them, the newer names particle-api-js types
(``iccid``, ``activated_on``, ``device_id``, ``device_name``); ``carrier`` names the carrier that handled the
last change ("none": recorded only, decision 0022). Billing fields (rates, plans) are left out: this server
bills nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from devicecloud.api.auth import require, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import MULTIPART, body_doc, content_type, query_doc, read_params, unflatten
from devicecloud.api.text_guard import StrictMultiPartParser, check_tree
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.accounts import Principal
from devicecloud.domain.sims import MAX_IMPORT, Sim, UsageDay, megabytes
from devicecloud.domain.timestamps import iso
from devicecloud.errors import InvalidInput
from devicecloud.services.sims import ImportResult, NetworkStatus, ProductRef

router = APIRouter(tags=["SIM cards"])

MAX_FILE = 64 * 1024  # a .txt of MAX_IMPORT ICCIDs is about 22 KB
MULTIPART_OVERHEAD = 16 * 1024


class ListQuery(BaseModel):
    iccid: str | None = Field(default=None, description="Part of the ICCID")
    deviceId: str | None = Field(default=None, description="Part of the last device's id")
    deviceName: str | None = Field(default=None, description="Part of the last device's name, any case")
    page: int | None = Field(default=None, description="Page, from 1")
    perPage: int | None = Field(default=None, description="SIMs per page, 1-100 (25); per_page too")


class ChangeBody(BaseModel):
    action: str = Field(description="activate, deactivate or reactivate")
    mb_limit: int | None = Field(default=None, description="Refused: this server sets no data limits")


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"sims": {"type": "array", "items": {"type": "string"}}},
                    "required": ["sims"],
                }
            },
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "ICCIDs, one a line"}
                    },
                }
            },
        },
    }
}


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def _time(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None


def render(sim: Sim) -> dict[str, Any]:
    return {
        "_id": sim.iccid,
        "iccid": sim.iccid,
        "status": sim.status.value,
        "activations_count": sim.activations_count,
        "deactivations_count": sim.deactivations_count,
        "first_activated_on": _time(sim.first_activated_on),
        "last_activated_on": _time(sim.last_activated_on),
        "activated_on": _time(sim.last_activated_on),
        "last_activated_via": sim.last_activated_via,
        "last_status_change_action": sim.last_status_change_action,
        "last_status_change_action_error": "yes" if sim.last_status_change_action_error else "no",
        "base_country_code": None,
        "msisdn": None,
        "mb_limit": None,
        "carrier": sim.carrier,
        "user_id": str(sim.user_id) if sim.user_id is not None else None,
        "product_id": sim.product_id,
        "owner": sim.owner_username,
        "last_device_id": sim.last_device_id,
        "last_device_name": sim.last_device_name,
        "device_id": sim.last_device_id,
        "device_name": sim.last_device_name,
        "updated_at": iso(sim.updated_at),
    }


def _usage_by_day(days: Sequence[UsageDay]) -> list[dict[str, Any]]:
    total = 0
    shown = []
    for day in days:
        total += day.bytes_used
        shown.append(
            {
                "date": day.day.isoformat(),
                "mbs_used": megabytes(day.bytes_used),
                "mbs_used_cumulative": megabytes(total),
            }
        )
    return shown


def _imported(result: ImportResult) -> dict[str, Any]:
    return {
        "ok": True,
        "imported": list(result.imported),
        "already_imported": list(result.already_imported),
        "unavailable": list(result.unavailable),
    }


def _status(request: Request, sim: Sim, status: NetworkStatus) -> JSONResponse:
    now = iso(_deps(request).clock.now())
    body = {
        "ok": True,
        "meta": {
            "created_at": now,
            "expires_at": None,
            "check_again_after": None,
            "state": "complete",
            "method": "async",
            "task_id": uuid.uuid4().hex,
        },
        "sim_status": {
            "connected": status.connected,
            "gsm_connection": status.gsm_connection,
            "data_connection": status.data_connection,
        },
        "carrier": sim.carrier,
    }
    return JSONResponse(body, status_code=202)


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise InvalidInput(f"The upload is larger than {MAX_FILE} bytes")
        yield chunk


async def _import_values(request: Request) -> Any:
    """
    The ICCIDs of an import: ``sims[]`` in a JSON or form body, or a .txt ``file`` in a multipart body
    (read here, capped, so the parameter reader that looks for a form token never reads it again).
    """
    if content_type(request) != MULTIPART:
        return (await read_params(request)).get("sims")
    parser = StrictMultiPartParser(
        request.headers,
        _capped(request, MAX_FILE + MULTIPART_OVERHEAD),
        max_files=1,
        max_fields=MAX_IMPORT + 5,
    )
    try:
        form = await parser.parse()
    except InvalidInput:
        raise
    except MultiPartException as exc:
        raise InvalidInput(f"The upload could not be parsed: {exc.message}") from exc
    except Exception as exc:  # python-multipart raises several types for broken bodies
        raise InvalidInput("The upload could not be parsed") from exc
    try:
        fields = unflatten([(key, value) for key, value in form.multi_items() if isinstance(value, str)])
        check_tree(fields)
        files = [value for _key, value in form.multi_items() if isinstance(value, UploadFile)]
        data = await files[0].read(MAX_FILE + 1) if files else None
    finally:
        await form.close()
    request.state.params = {**unflatten(list(request.query_params.multi_items())), **fields}
    request.state.body_params = fields
    if data is None:
        return fields.get("sims")
    if len(data) > MAX_FILE:
        raise InvalidInput(f"The file is larger than {MAX_FILE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("The file must be text: ICCIDs, one a line") from exc


async def _change_params(request: Request) -> dict[str, Any]:
    params = await read_params(request)
    return {
        "action": params.get("action"),
        "mb_limit": params.get("mb_limit"),
        "run_async": params.get("async"),
    }


# -- a user's SIM cards ---------------------------------------------------------------------------------


@router.get("/v1/sims", summary="List your SIM cards")
async def list_sims(
    request: Request, principal: Annotated[Principal, Depends(require("sims:list"))]
) -> dict[str, Any]:
    return {"sims": [render(s) for s in await _deps(request).sims.list_for_user(principal.user)]}


@router.post(
    "/v1/sims",
    summary="Import and activate SIM cards into your account",
    openapi_extra={**IMPORT_BODY, "x-devicecloud-extension": True},
)
async def import_user_sims(request: Request) -> dict[str, Any]:
    values = await _import_values(request)
    principal = await require("sims:import")(request)
    return _imported(await _deps(request).sims.import_sims(principal.user, values))


@router.get("/v1/sims/{iccid}/data_usage", summary="Data used by a SIM card per day this month")
async def sim_usage(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims.usage:get"))]
) -> dict[str, Any]:
    shown, days = await _deps(request).sims.usage(principal.user, iccid)
    return {"iccid": shown, "usage_by_day": _usage_by_day(days)}


@router.get("/v1/sims/{iccid}/status", summary="A SIM card's cellular network status", status_code=202)
async def sim_status(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims.status:get"))]
) -> JSONResponse:
    sim, status = await _deps(request).sims.status(principal.user, iccid)
    return _status(request, sim, status)


@router.head(
    "/v1/sims/{iccid}", summary="Check whether a SIM card is yours (204), another's (403) or free (404)"
)
async def check_sim(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims:get"))]
) -> Response:
    status = await _deps(request).sims.check(principal.user, iccid)
    # a refusal has no body either, but the type a GET's error would have
    return Response(status_code=status, media_type=None if status == 204 else "application/json")


@router.get("/v1/sims/{iccid}", summary="Get a SIM card")
async def get_sim(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims:get"))]
) -> dict[str, Any]:
    return render(await _deps(request).sims.get(principal.user, iccid))


@router.put(
    "/v1/sims/{iccid}",
    summary="Activate, deactivate or reactivate a SIM card",
    openapi_extra=body_doc(ChangeBody),
)
async def change_sim(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims:update"))]
) -> dict[str, Any]:
    params = await _change_params(request)
    return render(await _deps(request).sims.change(principal.user, iccid, **params))


@router.delete("/v1/sims/{iccid}", summary="Release a SIM card", status_code=204)
async def release_sim(
    request: Request, iccid: str, principal: Annotated[Principal, Depends(require("sims:remove"))]
) -> Response:
    await _deps(request).sims.release(principal.user, iccid)
    return Response(status_code=204)


# -- a product's SIM cards ------------------------------------------------------------------------------


@router.get(
    "/v1/products/{product}/sims", summary="List a product's SIM cards", openapi_extra=query_doc(ListQuery)
)
async def list_product_sims(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    found, total, query = await _deps(request).sims.list_for_product(
        principal, product, await read_params(request)
    )
    meta = {
        "page": query.page,
        "per_page": query.per_page,
        "total_pages": -(-total // query.per_page),
        "total": total,
    }
    return {"sims": [render(s) for s in found], "meta": meta}


@router.post(
    "/v1/products/{product}/sims", summary="Import and activate SIM cards", openapi_extra=IMPORT_BODY
)
async def import_product_sims(request: Request, product: str) -> dict[str, Any]:
    values = await _import_values(request)
    principal = await require_any(request)
    return _imported(await _deps(request).sims.import_sims(ProductRef(principal, product), values))


@router.get("/v1/products/{product}/sims/data_usage", summary="Data used by a product's SIM cards per day")
async def fleet_usage(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    found = await _deps(request).sims.fleet_usage(principal, product)
    return {
        "total_mbs_used": megabytes(sum(day.bytes_used for day in found.days)),
        "total_active_sim_cards": found.active_sims,
        "usage_by_day": _usage_by_day(found.days),
    }


@router.get("/v1/products/{product}/sims/{iccid}/data_usage", summary="Data used by a product's SIM card")
async def product_sim_usage(
    request: Request, product: str, iccid: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    shown, days = await _deps(request).sims.usage(ProductRef(principal, product), iccid)
    return {"iccid": shown, "usage_by_day": _usage_by_day(days)}


@router.get(
    "/v1/products/{product}/sims/{iccid}/status",
    summary="A product SIM card's network status",
    status_code=202,
)
async def product_sim_status(
    request: Request, product: str, iccid: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> JSONResponse:
    sim, status = await _deps(request).sims.status(ProductRef(principal, product), iccid)
    return _status(request, sim, status)


@router.get("/v1/products/{product}/sims/{iccid}", summary="Get a product's SIM card")
async def get_product_sim(
    request: Request, product: str, iccid: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return render(await _deps(request).sims.get(ProductRef(principal, product), iccid))


@router.put(
    "/v1/products/{product}/sims/{iccid}",
    summary="Deactivate or reactivate a product's SIM card",
    openapi_extra=body_doc(ChangeBody),
)
async def change_product_sim(
    request: Request, product: str, iccid: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    params = await _change_params(request)
    return render(await _deps(request).sims.change(ProductRef(principal, product), iccid, **params))


@router.delete("/v1/products/{product}/sims/{iccid}", summary="Release a product's SIM card", status_code=204)
async def release_product_sim(
    request: Request, product: str, iccid: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Response:
    await _deps(request).sims.release(ProductRef(principal, product), iccid)
    return Response(status_code=204)
