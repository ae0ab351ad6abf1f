"""
Request parameters, whatever the body's encoding.

The Particle API takes the same parameters as JSON, as a urlencoded form (with ``a[b]=`` objects and ``a[]=``
arrays) or as multipart; GET takes them from the query string. `read_params` turns each of these into one
plain dict, cached on the request. `Params(Model)` is a FastAPI dependency that validates that dict with a
pydantic model and turns a failure into a Particle-shaped 400, and `body_doc(Model)` documents the body in
OpenAPI under all three encodings.

This is the one reader of request bodies, so it is also the body's half of the text door
(`api/text_guard.py`): forms are decoded strictly, and every parsed body is checked for text, depth and
numbers before a route sees it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from devicecloud.api.text_guard import StrictMultiPartParser, check_tree, decode_urlencoded
from devicecloud.domain.images import FileImage, Image, image_bytes
from devicecloud.errors import InvalidInput

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
_BRACKETS = re.compile(r"\[([^\]]*)\]")
MAX_BODY = 1_000_000
#: The most bytes of uploaded files one multipart request may carry (firmware binaries, sources).
MAX_UPLOAD = 5 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Upload:
    """
    A file from a multipart body: its field name (``file``, ``file1``…), its filename and content. A file
    that was spooled to disk stays there (`FileImage`): a firmware binary is sent from it, `data` reads it.
    """

    field: str
    filename: str
    content: Image

    @property
    def data(self) -> bytes:
        return image_bytes(self.content)


def content_type(request: Request) -> str:
    """
    The media type of the request body, lower-cased, without parameters.
    """
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _assign(target: dict[str, Any], key: str, value: Any) -> None:
    head, _, rest = key.partition("[")
    if not rest:
        target[key] = value
        return
    path = [head, *_BRACKETS.findall("[" + rest)]
    node: Any = target
    for index, part in enumerate(path):
        last = index == len(path) - 1
        nxt = None if last else path[index + 1]
        if isinstance(node, list):
            if last:
                node.append(value)
                return
            child: Any = [] if nxt == "" else {}
            node.append(child)
            node = child
            continue
        if last:
            node[part] = value
            return
        if part not in node or not isinstance(node[part], (dict, list)):
            node[part] = [] if nxt == "" else {}
        node = node[part]


def unflatten(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    ``[("a[b]", "1"), ("c[]", "x"), ("c[]", "y")]`` → ``{"a": {"b": "1"}, "c": ["x", "y"]}``.
    """
    result: dict[str, Any] = {}
    for key, value in items:
        try:
            _assign(result, key, value)
        except (TypeError, KeyError):
            result[key] = value
    return result


async def read_body_params(request: Request) -> dict[str, Any]:
    """
    The body's parameters (empty for GET/HEAD), checked by `text_guard.check_tree`. Uploaded files are
    read into memory (at most `MAX_UPLOAD` bytes in all) and kept apart (`uploads`); the form is closed
    here, since an unclosed upload leaks a temporary file.
    """
    if request.method in ("GET", "HEAD"):
        return {}
    data = await _parse_body(request)
    check_tree(data)
    return data


async def _parse_body(request: Request) -> dict[str, Any]:
    kind = content_type(request)
    request.state.uploads = []
    if kind == MULTIPART:
        return unflatten(await _multipart_fields(request))
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput("The request body is too large")
    if kind == FORM:
        return unflatten(decode_urlencoded(raw, "The request body"))
    if not raw.strip():
        return {}
    if kind in ("application/json", "") or kind.endswith("+json") or kind == "text/plain":
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidInput("The request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise InvalidInput("The request body must be a JSON object")
        return data
    raise InvalidInput(f"Unsupported content type {kind}")


async def _multipart_fields(request: Request) -> list[tuple[str, Any]]:
    parser = StrictMultiPartParser(request.headers, request.stream())
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(f"The request body could not be parsed: {exc.message}") from exc
    except Exception as exc:  # python-multipart raises several types for broken bodies
        raise InvalidInput("The request body could not be parsed") from exc
    try:
        fields = [(key, value) for key, value in form.multi_items() if isinstance(value, str)]
        uploads: list[Upload] = []
        total = 0
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                total += value.size or 0
                if total > MAX_UPLOAD:
                    raise InvalidInput(f"The uploaded files are larger than {MAX_UPLOAD} bytes")
                uploads.append(Upload(key, value.filename or "", await _content(value)))
        request.state.uploads = uploads
    finally:
        await form.close()
    return fields


async def _content(file: UploadFile) -> Image:
    """The spooled file itself (the form closes its own descriptor), else its bytes (small, or too many)."""
    if getattr(file.file, "_rolled", False):  # SpooledTemporaryFile past SPOOL_BYTES: a real file now
        await file.seek(0)
        image = FileImage.adopt(file.file.fileno())
        if image is not None:
            return image
    return await file.read()


async def uploads(request: Request) -> list[Upload]:
    """
    The files of a multipart body, in the order sent (empty for other bodies).
    """
    await read_params(request)
    found: list[Upload] = getattr(request.state, "uploads", [])
    return list(found)


async def read_params(request: Request) -> dict[str, Any]:
    """
    Query parameters merged with body parameters (the body wins), cached on the request.
    """
    cached = getattr(request.state, "params", None)
    if cached is not None:
        return dict(cached)
    body = await read_body_params(request)
    merged: dict[str, Any] = unflatten(list(request.query_params.multi_items()))
    merged.update(body)
    request.state.params = merged
    request.state.body_params = body
    return dict(merged)


def describe_validation_error(error: ValidationError) -> str:
    """
    One readable line from pydantic's errors: ``name: Field required; expires_in: ...``.
    """
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class Params:
    """
    FastAPI dependency: the request's parameters validated by ``model``.
    """

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    async def __call__(self, request: Request) -> Any:
        data = await read_params(request)
        data.pop("access_token", None)
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from exc


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """
    OpenAPI ``requestBody`` for a model accepted as JSON, form or multipart.
    """
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": bool(schema.get("required")),
            "content": {
                "application/json": {"schema": schema},
                FORM: {"schema": schema},
                MULTIPART: {"schema": schema},
            },
        }
    }


def query_doc(model: type[BaseModel]) -> dict[str, Any]:
    """
    OpenAPI query ``parameters`` for a model read from the query string.
    """
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return {
        "parameters": [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()
        ]
    }
