"""
``POST /v1/provisioning/:deviceId``: register a device's public key (particle-cli ``keys send`` and
``keys doctor``, particle-api-js ``sendPublicKey``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from devicecloud.api.auth import require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import Params, body_doc
from devicecloud.domain.accounts import Principal
from devicecloud.errors import InvalidInput

router = APIRouter(tags=["Devices"])


class KeyUpload(BaseModel):
    publicKey: str = Field(description="RSA public key, PEM")
    deviceID: str | None = None
    filename: str | None = None
    order: str | None = None
    algorithm: str | None = Field(default="rsa", description="rsa (TCP devices) or ecc (UDP devices, P-256)")
    product_id: int | None = None


@router.post(
    "/v1/provisioning/{device_id}", summary="Register a device public key", openapi_extra=body_doc(KeyUpload)
)
async def register_key(
    request: Request,
    device_id: str,
    principal: Annotated[Principal, Depends(require())],
    params: Annotated[KeyUpload, Depends(Params(KeyUpload))],
) -> dict[str, Any]:
    deps: ApiDeps = request.app.state.deps
    if params.algorithm not in (None, "rsa", "ecc"):
        raise InvalidInput("algorithm must be rsa (TCP devices) or ecc (UDP devices)")
    registered = await deps.device_keys.register(principal.user, device_id, params.publicKey)
    return {"ok": True, "id": registered}
