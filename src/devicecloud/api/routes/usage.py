"""
Service agreements and usage (catalogue §17): the agreement with its current usage, usage reports (jobs:
202 pending → available, a CSV download this server serves), notifications of crossed limits. The user's
routes as the catalogue has them; a product's under ``/v1/products/:p/…`` (a devicecloud extension: this
server has products where Particle has organizations); the organization routes answer a clear 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from devicecloud.api.auth import require, require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import read_params
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.accounts import Principal
from devicecloud.domain.usage import UsageReport
from devicecloud.errors import NotFound
from devicecloud.services.usage import UsageService

router = APIRouter(tags=["Service agreements"])

EXTENSION = {"x-devicecloud-extension": "product service agreements (Particle has them per organization)"}
NO_ORGS = (
    "Organizations are not supported by this server: service agreements belong to users "
    "(/v1/user/service_agreements) and products (/v1/products/:product/service_agreements)"
)


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def _service(request: Request) -> UsageService:
    return _deps(request).usage


def _base_url(request: Request) -> str:
    configured = _deps(request).settings.public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def render_report(request: Request, report: UsageReport) -> dict[str, Any]:
    download = None
    if report.state == "available" and report.download_key:
        download = f"{_base_url(request)}/v1/usage_report_files/{report.id}/{report.download_key}.csv"
    return {
        "data": {
            "id": report.id,
            "type": "usage_report",
            "attributes": {
                "state": report.state,
                "service_agreement_id": str(report.account.id),
                "date_period_start": report.date_period_start.isoformat(),
                "date_period_end": report.date_period_end.isoformat(),
                "created_at": report.created_at_iso,
                "expires_at": report.expires_at_iso,
                "report_type": report.report_type,
                "report_params": {
                    "devices": list(report.devices),
                    "products": list(report.products),
                    "recipient_list": [],
                },
                "download_url": download,
            },
        }
    }


# ---------------------------------------------------------------------- the user's


@router.get("/v1/user/service_agreements", summary="Your service agreement and its current usage")
async def user_agreements(
    request: Request, principal: Annotated[Principal, Depends(require("service_agreements:list"))]
) -> dict[str, Any]:
    return await _service(request).agreements(principal.user)


@router.post(
    "/v1/user/service_agreements/{agreement}/usage_reports",
    summary="Ask for a usage report (made in the background)",
    status_code=202,
)
async def create_user_report(
    request: Request,
    agreement: str,
    principal: Annotated[Principal, Depends(require("service_agreements.usage_reports:create"))],
) -> JSONResponse:
    params = await read_params(request)
    report = await _service(request).create_report(principal.user, agreement, params)
    return JSONResponse(render_report(request, report), status_code=202)


@router.get("/v1/user/usage_reports/{report}", summary="A usage report")
async def user_report(
    request: Request,
    report: str,
    principal: Annotated[Principal, Depends(require("service_agreements.usage_reports:get"))],
) -> dict[str, Any]:
    return render_report(request, await _service(request).report(principal.user, report))


@router.get(
    "/v1/user/service_agreements/{agreement}/notifications", summary="Usage limits your account reached"
)
async def user_notifications(
    request: Request,
    agreement: str,
    principal: Annotated[Principal, Depends(require("service_agreements.notifications:list"))],
) -> dict[str, Any]:
    return await _service(request).notifications(principal.user, agreement)


# ---------------------------------------------------------------------- a product's (extension)


@router.get(
    "/v1/products/{product}/service_agreements",
    summary="A product's service agreement and its current usage",
    openapi_extra=EXTENSION,
)
async def product_agreements(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return await _service(request).agreements(principal, product)


@router.post(
    "/v1/products/{product}/service_agreements/{agreement}/usage_reports",
    summary="Ask for a usage report of a product",
    status_code=202,
    openapi_extra=EXTENSION,
)
async def create_product_report(
    request: Request, product: str, agreement: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> JSONResponse:
    params = await read_params(request)
    report = await _service(request).create_report(principal, agreement, params, product)
    return JSONResponse(render_report(request, report), status_code=202)


@router.get(
    "/v1/products/{product}/usage_reports/{report}",
    summary="A product's usage report",
    openapi_extra=EXTENSION,
)
async def product_report(
    request: Request, product: str, report: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return render_report(request, await _service(request).report(principal, report, product))


@router.get(
    "/v1/products/{product}/service_agreements/{agreement}/notifications",
    summary="Usage limits a product reached",
    openapi_extra=EXTENSION,
)
async def product_notifications(
    request: Request, product: str, agreement: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return await _service(request).notifications(principal, agreement, product)


# ---------------------------------------------------------------------- downloads and organizations


@router.get("/v1/usage_report_files/{report}/{key}.csv", summary="Download a usage report (its link)")
async def download_report(request: Request, report: str, key: str) -> Response:
    content = await _service(request).download(report, key)
    return Response(
        content,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="usage-report-{report}.csv"'},
    )


@router.get("/v1/orgs/{org}/service_agreements", summary="Organizations: not supported")
@router.get("/v1/orgs/{org}/usage_reports/{report}", summary="Organizations: not supported")
@router.post(
    "/v1/orgs/{org}/service_agreements/{agreement}/usage_reports", summary="Organizations: not supported"
)
async def org_routes(principal: Annotated[AnyPrincipal, Depends(require_any)]) -> None:
    raise NotFound(NO_ORGS, code="not_supported")
