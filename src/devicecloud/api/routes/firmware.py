"""
The firmware API (catalogue §11): compile (``POST /v1/binaries``), download a compiled binary, build targets.
Flashing is ``PUT /v1/devices/:id`` (routes/devices.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from devicecloud.api.auth import require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import MULTIPART, Params, Upload, body_doc, content_type, uploads
from devicecloud.domain.accounts import Principal
from devicecloud.domain.firmware import SourceFile
from devicecloud.domain.timestamps import iso

router = APIRouter(tags=["Firmware"])


class CompileRequest(BaseModel):
    platform_id: str | int | None = Field(default=None, description="Platform to compile for (6 Photon, …)")
    build_target_version: str | None = Field(default=None, description="Device OS version; default latest")
    latest: str | None = None


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def sources(files: list[Upload]) -> list[SourceFile]:
    """The uploaded files as sources, named by the filename the client gave (else the field name)."""
    return [SourceFile(f.filename or f.field, f.data) for f in files]


@router.post("/v1/binaries", summary="Compile sources", openapi_extra=body_doc(CompileRequest))
async def compile_sources(
    request: Request,
    principal: Annotated[Principal, Depends(require())],
    params: Annotated[CompileRequest, Depends(Params(CompileRequest))],
) -> dict[str, Any]:
    files = await uploads(request) if content_type(request) == MULTIPART else []
    binary = await _deps(request).firmware.compile(
        principal.user, sources(files), params.platform_id, params.build_target_version
    )
    return {
        "ok": True,
        "binary_id": binary.id,
        "binary_url": f"/v1/binaries/{binary.id}",
        "build_target_version": binary.version,
        "expires_at": iso(binary.expires_at),
        "sizeInfo": "",
    }


@router.get("/v1/binaries/{binary_id}", summary="Download a compiled binary")
async def download_binary(
    request: Request, binary_id: str, principal: Annotated[Principal, Depends(require())]
) -> Response:
    binary = await _deps(request).firmware.binary(principal.user, binary_id)
    return Response(
        binary.data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="firmware_{binary.id}.bin"'},
    )


@router.get("/v1/build_targets", summary="Device OS versions to compile against")
async def build_targets(
    request: Request, principal: Annotated[Principal, Depends(require())]
) -> dict[str, Any]:
    return _deps(request).firmware.build_targets()
