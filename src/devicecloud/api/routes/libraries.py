"""
Firmware libraries (catalogue §13): JSON:API resources ``{"data": …}`` of type ``libraries``.

Errors carry the JSON:API ``errors: [{"message"}]`` that particle-cli and particle-api-js show, beside the
usual ``ok``/``error``/``error_description`` (the service puts both in the domain error). Uploads are read
with a hard cap on the body before the multipart parser sees it; archives are served from
``/v1/library-archives/<key>/<name>-<version>.tar.gz``, a link shown only to those who may see the version,
because particle-api-js downloads ``links.download`` without a token.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from devicecloud.api.auth import require
from devicecloud.api.deps import ApiDeps
from devicecloud.api.params import MULTIPART, body_doc, content_type, query_doc, read_params, unflatten
from devicecloud.api.text_guard import StrictMultiPartParser, check_tree
from devicecloud.domain.accounts import Principal
from devicecloud.domain.libraries import LibraryView, library_error
from devicecloud.errors import InvalidInput

router = APIRouter(tags=["Libraries"])
MULTIPART_OVERHEAD = 65_536  # boundaries and part headers around the archive


class ListParams(BaseModel):
    """
    ``GET /v1/libraries`` (documentation only: the service reads and checks them).
    """

    filter: str | None = Field(default=None, description="Part of the name, any case")
    page: int | None = Field(default=None, description="Page number, from 1")
    limit: int | None = Field(default=None, description="Libraries per page, 1–100 (10)")
    sort: str | None = Field(
        default=None,
        description="name, installs, popularity, published, updated, created, official or verified; "
        "- first for descending (default -popularity)",
    )
    scope: str | None = Field(
        default=None, description="all (default), official, verified, public, mine, private"
    )
    excludeScopes: str | None = Field(default=None, description="Comma-separated scopes to leave out")
    architectures: str | None = Field(default=None, description="Comma-separated architectures")


class VersionParams(BaseModel):
    version: str | None = Field(default=None, description="MAJOR.MINOR.PATCH or latest (default)")
    scope: str | None = Field(default=None, description="all (default), public or private")


class PublishParams(BaseModel):
    visibility: str = Field(description="public (the only change a version can make)")


class VersionListParams(BaseModel):
    scope: str | None = Field(default=None, description="all (default), public or private")
    page: int | None = Field(default=None, description="Page number, from 1")
    limit: int | None = Field(default=None, description="Versions per page, 1–100 (100)")


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "tar.gz of the library, library.properties at its top",
                        }
                    },
                    "required": ["archive"],
                }
            }
        },
    }
}


def _deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


def _base_url(request: Request) -> str:
    configured = _deps(request).settings.public_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/")


def render(request: Request, view: LibraryView, viewer_id: int) -> dict[str, Any]:
    library, version = view.library, view.version
    meta = version.metadata
    attributes: dict[str, Any] = {
        "name": library.name,
        "version": meta.version,
        "installs": library.installs,
        "license": meta.license,
        "author": meta.author,
        "sentence": meta.sentence,
        "url": meta.url,
        "repository": meta.repository,
        "architectures": list(meta.architectures),
        "visibility": version.visibility.value,
        "official": library.official,
        "mine": library.owner_id == viewer_id,
        "verified": library.verified,
    }
    if meta.paragraph:
        attributes["paragraph"] = meta.paragraph
    file_name = f"{library.name}-{meta.version}.tar.gz"
    download = f"{_base_url(request)}/v1/library-archives/{version.download_key}/{file_name}"
    return {
        "type": "libraries",
        "id": library.name,
        "links": {"download": download},
        "attributes": attributes,
    }


async def _params(request: Request) -> dict[str, Any]:
    params = await read_params(request)
    params.pop("access_token", None)
    return params


@router.get(
    "/v1/libraries", summary="List libraries (public ones and your own)", openapi_extra=query_doc(ListParams)
)
async def list_libraries(
    request: Request, principal: Annotated[Principal, Depends(require(None))]
) -> dict[str, Any]:
    views = await _deps(request).libraries.search(principal.user, await _params(request))
    return {"data": [render(request, view, principal.user.id) for view in views]}


@router.get(
    "/v1/libraries/{name}/versions",
    summary="A library's versions, oldest first",
    openapi_extra=query_doc(VersionListParams),
)
async def library_versions(
    request: Request, name: str, principal: Annotated[Principal, Depends(require(None))]
) -> dict[str, Any]:
    views = await _deps(request).libraries.versions(principal.user, name, await _params(request))
    return {"data": [render(request, view, principal.user.id) for view in views]}


@router.get(
    "/v1/libraries/{name}",
    summary="A library version (default: the latest you may see)",
    openapi_extra=query_doc(VersionParams),
)
async def get_library(
    request: Request, name: str, principal: Annotated[Principal, Depends(require(None))]
) -> dict[str, Any]:
    view = await _deps(request).libraries.get(principal.user, name, await _params(request))
    return {"data": render(request, view, principal.user.id)}


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise library_error(f"The upload is larger than {limit} bytes")
        yield chunk


async def read_upload(request: Request, max_archive: int) -> bytes:
    """
    The one archive of a multipart upload (field ``archive``, or ``file`` as particle-api-js names it).

    The body is read here, capped, before the token is looked for: the parameter reader (which also finds a
    token sent in a form body) keeps no files, so the upload's text fields are handed to it as the request's
    parameters and it never reads the body again.
    """
    if content_type(request) != MULTIPART:
        raise library_error("Upload the library as multipart/form-data with a tar.gz file named archive")
    limit = max_archive + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise library_error(f"The upload is larger than {limit} bytes")
    parser = StrictMultiPartParser(request.headers, _capped(request, limit), max_files=2, max_fields=20)
    try:
        form = await parser.parse()
    except InvalidInput:
        raise
    except MultiPartException as exc:
        raise library_error(f"The upload could not be parsed: {exc.message}") from exc
    except Exception as exc:  # python-multipart raises several types for broken bodies
        raise library_error("The upload could not be parsed") from exc
    try:
        fields = unflatten([(key, value) for key, value in form.multi_items() if isinstance(value, str)])
        check_tree(fields)
        files = [
            value
            for key, value in form.multi_items()
            if isinstance(value, UploadFile) and (key == "archive" or key.startswith("file"))
        ]
        if len(files) != 1:
            raise library_error("Upload exactly one tar.gz file, in the field archive")
        data = await files[0].read()
    finally:
        await form.close()
    request.state.params = {**unflatten(list(request.query_params.multi_items())), **fields}
    request.state.body_params = fields
    if len(data) > max_archive:
        raise library_error(f"The archive is larger than {max_archive} bytes")
    return data


async def _upload(request: Request, name: str | None) -> JSONResponse:
    service = _deps(request).libraries
    data = await read_upload(request, service.max_upload)
    principal = await require(None)(request)
    view = await service.upload(principal.user, data, name)
    return JSONResponse({"data": render(request, view, principal.user.id)}, status_code=201)


@router.post(
    "/v1/libraries",
    status_code=201,
    summary="Upload a private library version (tar.gz)",
    openapi_extra=UPLOAD_BODY,
)
async def upload_library(request: Request) -> JSONResponse:
    return await _upload(request, None)


@router.post(
    "/v1/libraries/{name}",
    status_code=201,
    summary="Upload a private version of this library",
    openapi_extra=UPLOAD_BODY,
)
async def upload_library_version(request: Request, name: str) -> JSONResponse:
    return await _upload(request, name)


@router.patch(
    "/v1/libraries/{name}",
    summary="Publish the latest private version (visibility=public)",
    openapi_extra=body_doc(PublishParams),
)
async def publish_library(
    request: Request, name: str, principal: Annotated[Principal, Depends(require(None))]
) -> dict[str, Any]:
    view = await _deps(request).libraries.publish(principal.user, name, await _params(request))
    return {"data": render(request, view, principal.user.id)}


@router.delete("/v1/libraries/{name}", summary="Delete a private library and all its versions")
async def delete_library(
    request: Request, name: str, principal: Annotated[Principal, Depends(require(None))]
) -> dict[str, Any]:
    await _deps(request).libraries.delete(principal.user, name, await _params(request))
    return {"ok": True}


@router.get(
    "/v1/library-archives/{download_key}/{file_name}",
    summary="A library archive (the link in links.download; no token needed)",
    response_class=Response,
)
async def download_archive(request: Request, download_key: str, file_name: str) -> Response:
    _, data = await _deps(request).libraries.download(download_key, file_name)
    return Response(
        data,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{file_name}"', "Cache-Control": "private"},
    )
