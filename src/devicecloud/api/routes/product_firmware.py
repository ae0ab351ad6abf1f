"""
A product's firmware (catalogue §12): upload, list, get, edit, download, release, delete. The rules are in
`services/product_firmware.py`; these routes parse and render.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from devicecloud.api.auth import require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import MULTIPART, body_doc, content_type, read_params, uploads
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.product_firmware import ProductFirmware
from devicecloud.domain.timestamps import iso

router = APIRouter(tags=["Product firmware"])

#: The multipart fields a binary may come in: ``binary`` (the reference) and ``file`` (particle-api-js).
BINARY_FIELDS = ("binary", "file")


class FirmwareUpload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    binary: bytes | None = Field(default=None, description="multipart: the .bin file (also accepted as file)")
    version: int = Field(description="The product firmware version the binary carries")
    title: str
    description: str | None = None
    mandatory: bool | None = None


class FirmwareEdit(BaseModel):
    model_config = ConfigDict(extra="ignore")
    title: str | None = None
    description: str | None = None
    mandatory: bool | None = None


class FirmwareRelease(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: int
    product_default: bool | None = Field(default=None, description="Make it the product's default release")
    groups: list[str] | None = Field(default=None, description="The groups it is released to (exact set)")
    intelligent: bool | None = Field(
        default=None, description="Ask online devices now, and flash those that accept"
    )


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def render_firmware(firmware: ProductFirmware, device_count: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_id": str(firmware.id),
        "version": firmware.version,
        "title": firmware.title,
        "description": firmware.description or "",
        "name": firmware.name,
        "size": firmware.size,
        "product_default": firmware.product_default,
        "current": firmware.product_default,  # older examples and particle-api-js's type
        "groups": list(firmware.groups),
        "intelligent": firmware.intelligent,
        "mandatory": firmware.mandatory,
        "product_id": firmware.product_id,
        "uploaded_by": {"username": firmware.uploaded_by} if firmware.uploaded_by else None,
        "uploaded_on": iso(firmware.uploaded_at),
        "uploaded_at": iso(firmware.uploaded_at),
        "updated_at": iso(firmware.updated_at),
        "released_at": iso(firmware.released_at),
    }
    if device_count is not None:
        body["device_count"] = device_count
    return body


@router.get("/v1/products/{product}/firmware", summary="List product firmware")
async def list_firmware(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> list[dict[str, Any]]:
    entries = await _deps(request).product_firmware.list_firmware(principal, product)
    return [render_firmware(e.firmware, e.device_count) for e in entries]


@router.post(
    "/v1/products/{product}/firmware",
    summary="Upload product firmware",
    status_code=201,
    openapi_extra=body_doc(FirmwareUpload),
)
async def upload_firmware(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    params = await read_params(request)
    files = await uploads(request) if content_type(request) == MULTIPART else []
    chosen = next((f for name in BINARY_FIELDS for f in files if f.field == name), None)
    made = await _deps(request).product_firmware.upload(
        principal,
        product,
        data=chosen.data if chosen is not None else None,
        filename=chosen.filename if chosen is not None else "",
        version=params.get("version"),
        title=params.get("title"),
        description=params.get("description"),
        mandatory=params.get("mandatory"),
    )
    return render_firmware(made, 0)


@router.put(
    "/v1/products/{product}/firmware/release",
    summary="Release product firmware (as the product default and/or to groups)",
    openapi_extra=body_doc(FirmwareRelease),
)
async def release_firmware(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    params = await read_params(request)
    released = await _deps(request).product_firmware.release(
        principal,
        product,
        version=params.get("version"),
        product_default=params.get("product_default"),
        groups=params.get("groups"),
        intelligent=params.get("intelligent"),
    )
    return render_firmware(released)


@router.get("/v1/products/{product}/firmware/{version}", summary="Get product firmware")
async def get_firmware(
    request: Request, product: str, version: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    entry = await _deps(request).product_firmware.get(principal, product, version)
    return render_firmware(entry.firmware, entry.device_count)


@router.put(
    "/v1/products/{product}/firmware/{version}",
    summary="Edit product firmware's title or description",
    openapi_extra=body_doc(FirmwareEdit),
)
async def edit_firmware(
    request: Request, product: str, version: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    params = await read_params(request)
    params.pop("access_token", None)
    edited = await _deps(request).product_firmware.edit(principal, product, version, params)
    return render_firmware(edited)


@router.get(
    "/v1/products/{product}/firmware/{version}/binary",
    summary="Download product firmware's binary",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_firmware(
    request: Request, product: str, version: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Response:
    firmware, data = await _deps(request).product_firmware.binary(principal, product, version)
    safe = "".join(c for c in firmware.name if c.isascii() and c.isprintable() and c not in '"\\;')
    filename = safe or "firmware.bin"
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.delete(
    "/v1/products/{product}/firmware/{version}",
    summary="Delete product firmware that was never released",
    status_code=204,
)
async def delete_firmware(
    request: Request, product: str, version: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Response:
    await _deps(request).product_firmware.delete(principal, product, version)
    return Response(status_code=204)
