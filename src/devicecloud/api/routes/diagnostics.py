"""
Device vitals (catalogue §5): ask a device for them, the last report, history (JSON or CSV), metadata,
summary; and their product twins under ``/v1/products/:p/diagnostics/…`` (the product's access rules; the
reports made while the device was in the product).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from devicecloud.api.auth import require, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import query_doc
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.accounts import Principal
from devicecloud.services.diagnostics import DiagnosticsService

router = APIRouter(tags=["Diagnostics"])


class DateRange(BaseModel):
    start_date: str | None = Field(default=None, description="ISO 8601, inclusive (default: retention ago)")
    end_date: str | None = Field(default=None, description="ISO 8601, exclusive (default: now)")


class SummaryQuery(DateRange):
    limit: int | None = Field(default=30, description="At most this many buckets")


def _service(request: Request) -> DiagnosticsService:
    deps: ApiDeps = request.app.state.deps
    return deps.diagnostics


@router.post("/v1/diagnostics/{device}/update", summary="Ask a device for its vitals", status_code=202)
async def refresh_vitals(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices.diagnostics:update"))],
) -> JSONResponse:
    await _service(request).refresh(principal.user, device)
    return JSONResponse({"ok": True}, status_code=202)


@router.get("/v1/diagnostics/{device}/last", summary="The device's last vitals")
async def last_vitals(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices.diagnostics:get"))],
) -> dict[str, Any]:
    record = await _service(request).last(principal.user, device)
    return {"diagnostics": record.render()}


@router.get("/v1/diagnostics/{device}/metadata", summary="What each vital means")
async def vitals_metadata(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices.diagnostics.metadata:get"))],
) -> dict[str, Any]:
    return {"diagnostics_metadata": await _service(request).metadata(principal.user, device)}


@router.get(
    "/v1/diagnostics/{device}/summary",
    summary="Vitals in time buckets",
    openapi_extra=query_doc(SummaryQuery),
)
async def vitals_summary(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices.diagnostics.summary:get"))],
) -> dict[str, Any]:
    query = request.query_params
    return await _service(request).summary(
        principal.user, device, query.get("start_date"), query.get("end_date"), query.get("limit")
    )


@router.get(
    "/v1/diagnostics/{device}",
    summary="Vitals history (JSON, or CSV with Accept: text/csv)",
    openapi_extra=query_doc(DateRange),
)
async def vitals_history(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices.diagnostics:get"))],
) -> Any:
    service = _service(request)
    start, end = request.query_params.get("start_date"), request.query_params.get("end_date")
    if "text/csv" in request.headers.get("accept", ""):
        text = await service.history_csv(principal.user, device, start, end)
        return Response(text, media_type="text/csv; charset=utf-8")
    body = await service.history_json(principal.user, device, start, end)
    return Response(body, media_type="application/json")


# ---------------------------------------------------------------------- product twins


@router.post(
    "/v1/products/{product}/diagnostics/{device}/update",
    summary="Ask a product's device for its vitals",
    status_code=202,
)
async def product_refresh_vitals(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> JSONResponse:
    await _service(request).refresh(principal, device, product)
    return JSONResponse({"ok": True}, status_code=202)


@router.get("/v1/products/{product}/diagnostics/{device}/last", summary="A product device's last vitals")
async def product_last_vitals(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    record = await _service(request).last(principal, device, product)
    return {"diagnostics": record.render()}


@router.get("/v1/products/{product}/diagnostics/{device}/metadata", summary="What each vital means")
async def product_vitals_metadata(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return {"diagnostics_metadata": await _service(request).metadata(principal, device, product)}


@router.get(
    "/v1/products/{product}/diagnostics/{device}/summary",
    summary="A product device's vitals in time buckets",
    openapi_extra=query_doc(SummaryQuery),
)
async def product_vitals_summary(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    query = request.query_params
    return await _service(request).summary(
        principal, device, query.get("start_date"), query.get("end_date"), query.get("limit"), product
    )


@router.get(
    "/v1/products/{product}/diagnostics/{device}",
    summary="A product device's vitals history (JSON, or CSV with Accept: text/csv)",
    openapi_extra=query_doc(DateRange),
)
async def product_vitals_history(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Any:
    service = _service(request)
    start, end = request.query_params.get("start_date"), request.query_params.get("end_date")
    if "text/csv" in request.headers.get("accept", ""):
        text = await service.history_csv(principal, device, start, end, product)
        return Response(text, media_type="text/csv; charset=utf-8")
    body = await service.history_json(principal, device, start, end, product)
    return Response(body, media_type="application/json")
