"""
A product's devices (catalogue §4 product rows, §7 quarantine, §11 5-8 lock fields, §15 6-7 groups): import
and approve, list, get, update, batch group edits, remove or deny, and the device twins. The rules are in
`services/product_devices.py`; these routes parse and render.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from devicecloud.api.auth import require_any
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import (
    MAX_BODY,
    MULTIPART,
    Params,
    body_doc,
    content_type,
    query_doc,
    read_params,
    unflatten,
)
from devicecloud.api.routes.devices import (
    FunctionCall,
    VariableQuery,
    raw_value,
    render_device,
    render_variable,
)
from devicecloud.api.text_guard import StrictMultiPartParser, check_tree
from devicecloud.domain.access import AnyPrincipal
from devicecloud.domain.timestamps import iso
from devicecloud.errors import InvalidInput
from devicecloud.services.product_devices import DeviceChanges, ProductDevice, parse_flag

router = APIRouter(tags=["Product devices"])


class DeviceImport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(default=None, description="One device id (also approves a quarantined device)")
    ids: list[str] | str | None = Field(default=None, description="Device ids (form: ids[]=…)")
    file: bytes | None = Field(default=None, description="multipart: a .txt file, one device id per line")
    import_sims: bool | None = Field(default=None, description="Not supported yet: true is refused")


class DeviceListParams(BaseModel):
    deviceId: str | None = None
    deviceName: str | None = None
    serialNumber: str | None = None
    groups: str | None = Field(default=None, description="Comma-separated group names")
    sortAttr: str | None = Field(default=None, description="deviceId, firmwareVersion or lastConnection")
    sortDir: str | None = Field(default=None, description="asc or desc")
    quarantined: bool | None = None
    page: int | None = None
    perPage: int | None = Field(default=None, description="Also accepted as per_page (default 25)")


class ProductDeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    notes: str | None = None
    signal: bool | str | int | None = None
    development: bool | str | None = None
    desired_firmware_version: int | str | None = None
    flash: bool | str | None = Field(default=None, description="Not supported yet: true is refused")
    groups: list[str] | str | None = Field(default=None, description="The device's groups (absolute set)")


class GroupMetadata(BaseModel):
    add: list[str] | None = None
    remove: list[str] | None = None


class BatchUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    action: str = Field(description="groups")
    devices: list[str]
    metadata: GroupMetadata


class RemoveParams(BaseModel):
    deny: bool | None = Field(default=None, description="true: deny a (quarantined) device")


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def render_product_device(found: ProductDevice) -> dict[str, Any]:
    device = found.device
    body = render_device(device)
    membership = device.membership
    if membership is not None:
        body.update(
            product_id=membership.product_id,
            firmware_product_id=device.product_id,
            firmware_version=membership.firmware_version,
            desired_firmware_version=membership.desired_firmware_version,
            targeted_firmware_release_version=found.target,
            development=membership.development,
            quarantined=membership.quarantined,
            denied=membership.denied,
        )
    body["groups"] = found.groups
    return body


async def _capped(request: Request) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_BODY:
            raise InvalidInput("The request body is too large")
        yield chunk


async def _id_file(request: Request) -> list[str]:
    """
    The ids of a multipart import (a text file in ``file``, or text fields); its text fields become the
    request's parameters, so the token door does not read the body again.
    """
    parser = StrictMultiPartParser(request.headers, _capped(request), max_files=1, max_fields=100)
    try:
        form = await parser.parse()
    except InvalidInput:
        raise
    except MultiPartException as exc:
        raise InvalidInput(f"The request body could not be parsed: {exc.message}") from exc
    except Exception as exc:  # python-multipart raises several types for broken bodies
        raise InvalidInput("The request body could not be parsed") from exc
    try:
        fields = unflatten([(key, value) for key, value in form.multi_items() if isinstance(value, str)])
        check_tree(fields)
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k.startswith("file")]
        data = await files[0].read() if files else b""
    finally:
        await form.close()
    request.state.params = {**unflatten(list(request.query_params.multi_items())), **fields}
    request.state.body_params = fields
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("The file must be text: one device id per line") from exc
    return [*_listed(fields), *text.replace(",", "\n").split()]


def _listed(params: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    if params.get("id") not in (None, ""):
        values.append(params["id"])
    ids = params.get("ids")
    if isinstance(ids, str):
        values.extend(ids.replace(",", " ").split())
    elif isinstance(ids, list):
        values.extend(ids)
    elif ids is not None:
        raise InvalidInput("ids must be a list of device ids")
    return values


@router.post(
    "/v1/products/{product}/devices",
    summary="Import devices into a product, or approve a quarantined device",
    openapi_extra=body_doc(DeviceImport),
)
async def import_devices(request: Request, product: str) -> dict[str, Any]:
    if content_type(request) == MULTIPART:
        values = await _id_file(request)
    else:
        values = _listed(await read_params(request))
    principal = await require_any(request)
    sims = (await read_params(request)).get("import_sims")
    result = await _deps(request).product_devices.import_devices(principal, product, values, import_sims=sims)
    return {
        "updated": len(result.updated),
        "updatedDeviceIds": result.updated,
        "existingDeviceIds": result.existing,
        "nonmemberDeviceIds": result.nonmember,
        "invalidDeviceIds": result.invalid,
    }


@router.get(
    "/v1/products/{product}/devices",
    summary="List a product's devices",
    openapi_extra=query_doc(DeviceListParams),
)
async def list_devices(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    page = await _deps(request).product_devices.list_devices(principal, product, await read_params(request))
    return {
        "devices": [render_product_device(d) for d in page.devices],
        "customers": [],
        "meta": {
            "total_pages": page.total_pages,
            "page": page.page,
            "per_page": page.per_page,
            "total": page.total,
        },
    }


@router.put(
    "/v1/products/{product}/devices",
    summary="Add and remove groups on many devices",
    openapi_extra=body_doc(BatchUpdate),
)
async def batch_update(
    request: Request, product: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    await _deps(request).product_devices.batch(principal, product, await read_params(request))
    return {"ok": True}


@router.get("/v1/products/{product}/devices/{device}", summary="Get a product device")
async def get_device(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    return render_product_device(await _deps(request).product_devices.get(principal, product, device))


@router.put(
    "/v1/products/{product}/devices/{device}",
    summary="Rename, note, signal, group, lock or mark a product device",
    openapi_extra=body_doc(ProductDeviceUpdate),
)
async def update_device(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    params = await read_params(request)
    fields = ("name", "notes", "signal", "development", "desired_firmware_version", "flash", "groups")
    changes = DeviceChanges(**{f: params[f] for f in fields if f in params})
    reply = await _deps(request).product_devices.update(principal, product, device, changes)
    reply["updated_at"] = iso(reply["updated_at"])
    return reply


@router.delete(
    "/v1/products/{product}/devices/{device}",
    summary="Remove a device from a product, or deny it (deny=true)",
    status_code=204,
    openapi_extra=body_doc(RemoveParams),
)
async def remove_device(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> Response:
    deny = (await read_params(request)).get("deny")
    denying = parse_flag(deny, "deny") if deny not in (None, "") else False
    await _deps(request).product_devices.remove(principal, product, device, deny=denying)
    return Response(status_code=204)


@router.delete("/v1/products/{product}/devices/{device}/owner", summary="Unclaim a product device")
async def release_device(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    await _deps(request).product_devices.release(principal, product, device)
    return {"ok": True}


@router.put("/v1/products/{product}/devices/{device}/ping", summary="Ping a product device")
async def ping_device(
    request: Request, product: str, device: str, principal: Annotated[AnyPrincipal, Depends(require_any)]
) -> dict[str, Any]:
    online = await _deps(request).product_devices.ping(principal, product, device)
    return {"online": online, "ok": True}


@router.get(
    "/v1/products/{product}/devices/{device}/{variable}",
    summary="Read a product device's variable",
    openapi_extra=query_doc(VariableQuery),
)
async def read_variable(
    request: Request,
    product: str,
    device: str,
    variable: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
) -> Any:
    found, reading = await _deps(request).product_devices.read_variable(principal, product, device, variable)
    if request.query_params.get("format") == "raw":
        return PlainTextResponse(raw_value(reading.value))
    return render_variable(found, reading)


@router.post(
    "/v1/products/{product}/devices/{device}/{function}",
    summary="Call a product device's function",
    openapi_extra=body_doc(FunctionCall),
)
async def call_function(
    request: Request,
    product: str,
    device: str,
    function: str,
    principal: Annotated[AnyPrincipal, Depends(require_any)],
    params: Annotated[FunctionCall, Depends(Params(FunctionCall))],
) -> Any:
    argument = params.arg if params.arg is not None else (params.args or "")
    found, result = await _deps(request).product_devices.call_function(
        principal, product, device, function, argument
    )
    if params.format == "raw":
        return PlainTextResponse(str(result))
    return {"id": found.id, "name": found.name, "connected": True, "return_value": result}
