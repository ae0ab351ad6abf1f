"""
Device groups of a product and the firmware impact preview (catalogue §15 rows 1-5 and 8). The rules are
in `services/groups.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from devicecloud.api.auth import require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import Params, body_doc, query_doc, read_params
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.products import DeviceGroup

router = APIRouter(tags=["Device groups"])


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    color: str | None = None
    description: str | None = None


class GroupUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    color: str | None = None
    description: str | None = None


class GroupQuery(BaseModel):
    name: str | None = None


class ImpactQuery(BaseModel):
    action: str
    firmware_version: int
    groups: str | None = None
    product_default: bool | None = None


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def render_group(group: DeviceGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "description": group.description or "",
        "color": group.color,
        "fw_version": group.fw_version,
        "device_count": group.device_count,
    }


@router.get(
    "/v1/products/{product}/groups", summary="List device groups", openapi_extra=query_doc(GroupQuery)
)
async def list_groups(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    name = (await read_params(request)).get("name")
    groups = await _deps(request).groups.list_groups(principal, product, name)
    return {"groups": [render_group(g) for g in groups]}


@router.post(
    "/v1/products/{product}/groups", summary="Create a device group", openapi_extra=body_doc(GroupCreate)
)
async def create_group(
    request: Request,
    product: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[GroupCreate, Depends(Params(GroupCreate))],
) -> JSONResponse:
    group = await _deps(request).groups.create(
        principal, product, name=params.name, color=params.color, description=params.description
    )
    body = {"name": group.name, "description": group.description or "", "color": group.color}
    return JSONResponse({"group": body}, status_code=201)


@router.get("/v1/products/{product}/groups/{group}", summary="Get a device group")
async def get_group(
    request: Request, product: str, group: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return {"group": render_group(await _deps(request).groups.get(principal, product, group))}


@router.put(
    "/v1/products/{product}/groups/{group}",
    summary="Edit a device group",
    openapi_extra=body_doc(GroupUpdate),
)
async def update_group(
    request: Request,
    product: str,
    group: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[GroupUpdate, Depends(Params(GroupUpdate))],
) -> dict[str, Any]:
    updated = await _deps(request).groups.update(
        principal,
        product,
        group,
        new_name=params.name,
        color=params.color,
        description=params.description if "description" in params.model_fields_set else ...,
    )
    return {"group": render_group(updated)}


@router.delete("/v1/products/{product}/groups/{group}", summary="Delete a device group", status_code=204)
async def delete_group(
    request: Request, product: str, group: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Response:
    await _deps(request).groups.delete(principal, product, group)
    return Response(status_code=204)


@router.get(
    "/v1/products/{product}/impact",
    summary="Preview which devices a firmware release to groups would update",
    openapi_extra=query_doc(ImpactQuery),
)
async def impact(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    query = await read_params(request)
    found = await _deps(request).groups.impact(
        principal,
        product,
        action=query.get("action"),
        firmware_version=query.get("firmware_version"),
        groups=query.get("groups"),
        product_default=query.get("product_default"),
    )
    by_version = [{"version": version, "total": total} for version, total in found.by_version]
    return {"devices": {"firmware_update": {"total": found.total, "by_version": by_version}}}
