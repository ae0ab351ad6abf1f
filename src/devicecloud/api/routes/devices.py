"""
The devices API (catalogue §4): list, get, claim, unclaim, rename, notes, signal, ping, variables, functions.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from devicecloud.api.auth import device_caller, require, require_device
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import MULTIPART, Params, Upload, body_doc, content_type, query_doc, uploads
from devicecloud.api.routes.firmware import sources
from devicecloud.domain.access import ProductPrincipal
from devicecloud.domain.accounts import Principal
from devicecloud.domain.devices import Device, VariableReading
from devicecloud.domain.timestamps import iso
from devicecloud.errors import InvalidInput

router = APIRouter(tags=["Devices"])
# A person, or a product's customer on the routes it may use for its own devices (issue 11 section 6).
Caller = Principal | ProductPrincipal


class Claim(BaseModel):
    id: str = Field(description="Device id (24 hex characters)")
    request_transfer: bool = False


class DeviceUpdate(BaseModel):
    name: str | None = None
    notes: str | None = None
    signal: bool | None = Field(default=None, description="1 starts the rainbow LED, 0 stops it")
    firmware_updates_forced: bool | None = None
    file_type: str | None = Field(
        default=None, description="binary: the multipart `file` is a firmware binary"
    )
    build_target_version: str | None = None
    latest: str | None = None


class FunctionCall(BaseModel):
    arg: str | None = Field(default=None, description="Argument (also accepted as args)")
    args: str | None = None
    format: str | None = Field(default=None, description="raw: reply with the bare return value")


class VariableQuery(BaseModel):
    format: str | None = Field(default=None, description="raw: reply with the bare value")


def render_device(device: Device) -> dict[str, Any]:
    """
    The device object of catalogue §4.1, with the legacy fields the official clients still read.
    """
    return {
        "id": device.id,
        "name": device.name,
        "owner": device.owner_username,
        "last_app": None,
        "last_ip_address": device.last_ip_address,
        "last_heard": iso(device.last_heard),
        "last_handshake_at": iso(device.last_handshake_at),
        "product_id": device.product_id if device.product_id is not None else device.platform_id,
        "online": device.online,
        "connected": device.online,
        "platform_id": device.platform_id,
        "cellular": device.cellular,
        "notes": device.notes,
        "functions": list(device.functions),
        "variables": dict(device.variables),
        "status": "normal",
        "serial_number": device.serial_number,
        "iccid": None,
        "imei": None,
        "system_firmware_version": device.system_firmware_version,
        "current_build_target": device.system_firmware_version,
        "pinned_build_target": None,
        "default_build_target": None,
        "firmware_updates_enabled": True,
        "firmware_updates_forced": False,
    }


def raw_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


@router.get("/v1/devices", summary="List your devices")
async def list_devices(
    request: Request, principal: Annotated[Caller, Depends(require_device("devices:list"))]
) -> list[dict[str, Any]]:
    devices = await _deps(request).devices.list_devices(device_caller(principal))
    return [render_device(d) for d in devices]


@router.post("/v1/devices", summary="Claim a device", openapi_extra=body_doc(Claim))
async def claim_device(
    request: Request,
    principal: Annotated[Principal, Depends(require())],
    params: Annotated[Claim, Depends(Params(Claim))],
) -> dict[str, Any]:
    device = await _deps(request).devices.claim(
        principal.user, params.id, request_transfer=params.request_transfer
    )
    return {"ok": True, "deviceID": device.id, "claimed": True, "user_id": str(principal.user.id)}


@router.post("/v1/device_claims", summary="Create a claim code")
async def create_claim_code(
    request: Request, principal: Annotated[Principal, Depends(require())]
) -> dict[str, Any]:
    code, owned = await _deps(request).devices.create_claim_code(principal.user)
    return {"claim_code": code, "device_ids": owned}


@router.get("/v1/devices/{device}", summary="Get a device")
async def get_device(
    request: Request, device: str, principal: Annotated[Caller, Depends(require_device("devices:get"))]
) -> dict[str, Any]:
    return render_device(await _deps(request).devices.access_device(device_caller(principal), device))


@router.put(
    "/v1/devices/{device}",
    summary="Rename, set notes or signal a device",
    openapi_extra=body_doc(DeviceUpdate),
)
async def update_device(
    request: Request,
    device: str,
    principal: Annotated[Principal, Depends(require("devices:update"))],
    params: Annotated[DeviceUpdate, Depends(Params(DeviceUpdate))],
) -> dict[str, Any]:
    service = _deps(request).devices
    await service.access_device(principal.user, device)  # ownership first, whatever the request asks
    if params.firmware_updates_forced is not None:
        raise InvalidInput("Forcing firmware updates is not supported by this server yet", code="unsupported")
    files = await uploads(request) if content_type(request) == MULTIPART else []
    if files:
        return await _flash(request, principal, device, files, params)
    reply: dict[str, Any] = {}
    if params.name is not None:
        renamed = await service.rename(principal.user, device, params.name)
        reply.update(id=renamed.id, name=renamed.name, updated_at=iso(renamed.updated_at))
    if "notes" in params.model_fields_set:
        noted = await service.set_notes(principal.user, device, params.notes)
        reply.update(id=noted.id, notes=noted.notes, updated_at=iso(noted.updated_at))
    if params.signal is not None:
        signalled = await service.signal(principal.user, device, params.signal)
        reply.update(id=signalled.id, connected=True, signaling=params.signal)
    if not reply:
        raise InvalidInput("Nothing to do? Give name, notes or signal", code="Nothing to do?")
    return reply


async def _flash(
    request: Request, principal: Principal, device: str, files: list[Upload], params: DeviceUpdate
) -> dict[str, Any]:
    """
    ``PUT /v1/devices/:id`` with files: a binary (``file_type=binary``, or one ``.bin`` file as the
    official clients send it) is flashed; sources would need a compile backend.
    """
    firmware = _deps(request).firmware
    binary = params.file_type == "binary" or (len(files) == 1 and files[0].filename.lower().endswith(".bin"))
    if not binary:  # sources: compiled by the compile backend first (catalogue §11 row 1)
        version = params.build_target_version
        await firmware.flash_sources(principal.user, device, sources(files), version)
        return {"ok": True, "message": "Update started"}
    flashed = await firmware.flash_binary(principal.user, device, files[0].content)
    return {"id": flashed.id, "status": "Update started"}


@router.delete("/v1/devices/{device}", summary="Unclaim a device")
async def unclaim_device(
    request: Request, device: str, principal: Annotated[Principal, Depends(require("devices:release"))]
) -> dict[str, Any]:
    await _deps(request).devices.unclaim(principal.user, device)
    return {"ok": True}


@router.put("/v1/devices/{device}/ping", summary="Ping a device")
async def ping_device(
    request: Request, device: str, principal: Annotated[Caller, Depends(require_device("devices:ping"))]
) -> dict[str, Any]:
    online = await _deps(request).devices.ping(device_caller(principal), device)
    return {"online": online, "ok": True}


@router.get(
    "/v1/devices/{device}/{variable}", summary="Read a variable", openapi_extra=query_doc(VariableQuery)
)
async def read_variable(
    request: Request,
    device: str,
    variable: str,
    principal: Annotated[Caller, Depends(require_device("devices.variable:get"))],
) -> Any:
    found, reading = await _deps(request).devices.read_variable(device_caller(principal), device, variable)
    if request.query_params.get("format") == "raw":
        return PlainTextResponse(raw_value(reading.value))
    return render_variable(found, reading)


def render_variable(device: Device, reading: VariableReading) -> dict[str, Any]:
    return {
        "cmd": "VarReturn",
        "name": reading.name,
        "result": reading.value,
        "coreInfo": {
            "name": device.name,
            "deviceID": device.id,
            "connected": True,
            "last_app": "",
            "last_heard": iso(device.last_heard),
            "last_handshake_at": iso(device.last_handshake_at),
            "product_id": device.product_id if device.product_id is not None else device.platform_id,
        },
    }


@router.post(
    "/v1/devices/{device}/{function}", summary="Call a function", openapi_extra=body_doc(FunctionCall)
)
async def call_function(
    request: Request,
    device: str,
    function: str,
    principal: Annotated[Caller, Depends(require_device("devices.function:call"))],
    params: Annotated[FunctionCall, Depends(Params(FunctionCall))],
) -> Any:
    argument = params.arg if params.arg is not None else (params.args or "")
    caller = device_caller(principal)
    found, result = await _deps(request).devices.call_function(caller, device, function, argument)
    if params.format == "raw":
        return PlainTextResponse(str(result))
    return {"id": found.id, "name": found.name, "connected": True, "return_value": result}
