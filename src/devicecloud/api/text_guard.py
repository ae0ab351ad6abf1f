"""
The API's text door: every string a request brings in is text that every layer behind it can hold, or the
request is refused with the catalogue's 400 before any route runs.

Text here means valid UTF-8 (so no lone UTF-16 surrogates, which JSON's ``\\ud800`` escapes and Python's own
JSON reader let through) without NUL: PostgreSQL text cannot store U+0000, SQLite would store what PostgreSQL
refuses, and devices read names and data as C strings. Invalid UTF-8 is refused rather than quietly replaced
with U+FFFD, so what is stored is what was sent.

Two edges, one per door: `TextGuardMiddleware` checks what arrives before the body (the path, the query string
and the ``Authorization`` header: a Bearer token or Basic credentials), and `api/params.py`, the one reader of
request bodies, decodes forms with `decode_urlencoded`/`StrictMultiPartParser` and checks every parsed body
with `check_tree` (text, nesting depth, numbers).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from devicecloud.api.errors import error_response
from devicecloud.domain.text import is_valid_text
from devicecloud.errors import DomainError, InvalidInput, OAuthError

# The deepest JSON a request may carry, the body object counting as one level. Particle's deepest documented
# body (an integration's json/headers/query templates) is 2-3 levels; 32 leaves room for nested template
# objects and keeps every walk over a body far from Python's recursion limit.
MAX_DEPTH = 32
# Integers must fit in 64 bits: what a database BIGINT holds (JavaScript cannot send bigger ones exactly).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Fields per urlencoded body or query string, as Starlette's own form parser allows.
MAX_FIELDS = 1000
NOT_TEXT = "must be UTF-8 text without NUL characters"
# The OAuth token endpoints answer in the OAuth error shape (no "ok"), catalogue §2.1.
OAUTH_PATH = re.compile(r"^(?:/v1/devices)?/oauth/token/?$")


def _shown(name: str) -> str:
    """A caller's field name as an error message repeats it: cut short (it may be most of the body)."""
    return name if len(name) <= 60 else name[:57] + "..."


def text_problem(value: str) -> bool:
    """
    Whether ``value`` holds a NUL or a lone surrogate (the only ways a Python str fails to be UTF-8 text).
    """
    return "\x00" in value or not is_valid_text(value)


def decode_text(raw: bytes, where: str, encoding: str = "utf-8") -> str:
    """
    ``raw`` decoded strictly (UTF-8 refuses encoded surrogates too), without NUL; else `InvalidInput`.
    """
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{where} {NOT_TEXT}") from exc
    if text_problem(text):
        raise InvalidInput(f"{where} {NOT_TEXT}")
    return text


def decode_urlencoded(raw: bytes, where: str) -> list[tuple[str, str]]:
    """
    ``a=1&b=%C3%A9`` → ``[("a", "1"), ("b", "é")]``, every name and value decoded strictly.

    Fields are separated by ``&`` only, as Python's and the WHATWG's parsers do.
    """
    items: list[tuple[str, str]] = []
    for chunk in raw.split(b"&"):
        if not chunk:
            continue
        if len(items) == MAX_FIELDS:
            raise InvalidInput(f"{where} has more than {MAX_FIELDS} fields")
        name, _, value = chunk.replace(b"+", b" ").partition(b"=")
        key = decode_text(unquote_to_bytes(name), f"{where}: a field name")
        items.append((key, decode_text(unquote_to_bytes(value), f"{where}: {_shown(key)}")))
    return items


def _describe(path: list[str]) -> str:
    return _shown(".".join(path)) or "body"


def check_tree(data: Any, where: str = "body") -> None:
    """
    Walk a parsed body (iteratively: it may be as deep as the parser allowed) and refuse text that is not
    text, containers deeper than `MAX_DEPTH`, non-finite floats and integers outside 64 bits.
    """
    stack: list[tuple[Any, list[str], int]] = [(data, [] if where == "body" else [where], 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if text_problem(value):
                raise InvalidInput(f"{_describe(path)} {NOT_TEXT}")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise InvalidInput(f"{_describe(path)} is outside the 64-bit integer range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"{_describe(path)} must be a finite number")
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise InvalidInput(f"The request nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    if text_problem(key):
                        raise InvalidInput(f"{_describe(path)}: a field name {NOT_TEXT}")
                    stack.append((item, [*path, key], depth + 1))
            else:
                stack.extend((item, [*path, str(index)], depth + 1) for index, item in enumerate(value))


#: The most bytes of one uploaded file kept in memory while a multipart body arrives; the rest goes to disk.
SPOOL_BYTES = 64 * 1024


class StrictMultiPartParser(MultiPartParser):
    """
    Starlette's multipart parser, except that a field whose name or value is not text in the body's charset
    is refused: Starlette falls back to Latin-1 there, which would store something other than what was sent.

    Files past `SPOOL_BYTES` are streamed to a temporary file as they arrive rather than grown in memory
    (Starlette keeps up to 1 MB per file in memory): a hundred firmware uploads at once then hold a few
    KB each until their body is complete, and a firmware binary is then sent from its file
    (`domain.images.FileImage`, decision 0033).
    """

    spool_max_size = SPOOL_BYTES

    def _refuse_unless_text(self, raw: bytes, where: str) -> None:
        try:
            decode_text(raw, where, self._charset or "utf-8")
        except InvalidInput as exc:
            raise MultiPartException(exc.description) from exc

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._current_part.content_disposition)
        if b"name" in options:
            self._refuse_unless_text(options[b"name"], "A multipart field name")
        super().on_headers_finished()

    def on_part_end(self) -> None:
        if self._current_part.file is None:
            self._refuse_unless_text(bytes(self._current_part.data), _shown(self._current_part.field_name))
        super().on_part_end()


def _url_problem(scope: Scope) -> str | None:
    raw_path: bytes | None = scope.get("raw_path")
    try:
        if raw_path is None:
            if text_problem(scope["path"]):
                return f"The path {NOT_TEXT}"
        elif b"%" in raw_path or b"\x00" in raw_path or not raw_path.isascii():
            decode_text(unquote_to_bytes(raw_path.split(b"?", 1)[0]), "The path")
        query: bytes = scope.get("query_string", b"")
        if query:
            decode_urlencoded(query, "The query string")
    except InvalidInput as exc:
        return exc.description
    return None


def _authorization_problem(scope: Scope) -> str | None:
    """
    The Authorization header's token or Basic credentials must be text; a header that is malformed in other
    ways is the route's to refuse (with the catalogue's own messages).
    """
    for name, value in scope["headers"]:
        if name != b"authorization":
            continue
        scheme, _, credentials = value.partition(b" ")
        raw = credentials.strip()
        if scheme.lower() == b"basic":
            try:
                raw = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return None
        try:
            decode_text(raw, "The Authorization header")
        except InvalidInput as exc:
            return exc.description
    return None


class TextGuardMiddleware:
    """
    Refuse a request whose path, query string or Authorization header is not text, before routing: 400
    ``invalid_request`` in the Particle shape, or in the OAuth shape on the token endpoints.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _url_problem(scope) or _authorization_problem(scope)
            if problem is not None:
                error: DomainError = (
                    OAuthError(problem) if OAUTH_PATH.match(scope["path"]) else InvalidInput(problem)
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
