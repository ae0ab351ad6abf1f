"""
The API half of issue 10's property test: arbitrary Unicode (lone surrogates and NUL included) and arbitrary
bytes, as JSON, urlencoded, multipart and raw bodies, in path parameters and query strings, sent with a valid
token to every route that takes a body (read from the app's own route table, so a new route is covered the
day it is added): never a 5xx, and nothing is stored that a later read answers 5xx for.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.api import Account, login, make_account
from tests.support.devices import register_and_claim

from devicecloud.runtime import Runtime, build_runtime
from devicecloud.services.accounts import ACCOUNT_INFO_KEYS
from devicecloud.settings import Settings
from devicecloud.virtualdevice.identity import generate_identity

pytestmark = pytest.mark.slow

BODY_METHODS = ("post", "put", "patch", "delete")
OAUTH = re.compile(r"/oauth/token$")
PARAM = re.compile(r"\{(\w+)\}")
HOOK = {"integration_type": "Webhook", "event": "temp", "url": "https://example.com/in"}
# Valid bodies for the routes that store something, so that one hostile field reaches the service (and the
# store) instead of failing on a missing neighbour. A route that is not listed gets hostile fields only.
BASES: dict[str, dict[str, Any]] = {
    "/v1/users": {"username": "new@example.com", "password": "long enough"},
    "/v1/clients": {"name": "app", "type": "installed"},
    "/v1/devices/events": {"name": "temp", "data": "21"},
    "/v1/integrations": HOOK,
    "/v1/webhooks": HOOK,
    "/v1/integrations/{integration_id}": HOOK,
}

# Every code point, lone surrogates included (Hypothesis leaves them out unless asked), with the troublemakers
# often enough that a few hundred examples meet them on every route.
SPICE = st.sampled_from(["\ud800", "\udfff", "\x00", "\ufffd", "\U0010ffff", "é", "\u202e"])
TEXT = st.lists(st.characters(exclude_categories=()) | SPICE, max_size=12).map("".join)
# Field names of nested objects the services read (account_info's), besides arbitrary ones.
NESTED_NAMES = st.sampled_from(sorted(ACCOUNT_INFO_KEYS)) | TEXT
RAW = st.binary(max_size=48)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NESTED_NAMES, inner, max_size=3),
    max_leaves=8,
)
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b0undary",
    "multipart/form-data",
    "text/plain",
    "application/octet-stream",
    "",
]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    fields: tuple[str, ...]  # the documented body fields
    objects: tuple[str, ...]  # those of them that take an object (account_info, json, headers…)


def _takes_object(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" or any(_takes_object(s) for s in schema.get("anyOf", []))


def body_routes(spec: dict[str, Any]) -> list[Route]:
    """Every documented operation that can carry a body, with the field names its body documents."""
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in BODY_METHODS:
                continue
            properties: dict[str, Any] = {}
            for content in operation.get("requestBody", {}).get("content", {}).values():
                properties.update(content.get("schema", {}).get("properties", {}))
            objects = tuple(sorted(name for name, schema in properties.items() if _takes_object(schema)))
            routes.append(Route(method.upper(), path, tuple(sorted(properties)), objects))
    return routes


def as_bytes(value: str | bytes) -> bytes:
    """Text as UTF-8, lone surrogates as the bytes a careless encoder would write for them."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def urlencoded(pairs: list[tuple[str | bytes, str | bytes]]) -> bytes:
    return b"&".join(
        f"{quote_from_bytes(as_bytes(k))}={quote_from_bytes(as_bytes(v))}".encode() for k, v in pairs
    )


def multipart(pairs: list[tuple[str | bytes, str | bytes]]) -> bytes:
    parts = [
        b'--b0undary\r\nContent-Disposition: form-data; name="'
        + as_bytes(k)
        + b'"\r\n\r\n'
        + as_bytes(v)
        + b"\r\n"
        for k, v in pairs
    ]
    return b"".join(parts) + b"--b0undary--\r\n"


@st.composite
def requests(draw: st.DrawFn, route: Route, known: dict[str, list[str]]) -> dict[str, Any]:
    """
    One hostile request for ``route``: path parameters, maybe a query string, and a body of some kind in which
    each documented field may be present with a hostile value (the rest of a valid body around it).
    """

    def segment(name: str) -> str:
        value = draw(st.sampled_from(known[name]) | TEXT) if known.get(name) else draw(TEXT)
        return quote_from_bytes(as_bytes(value), safe="") or "x"

    url = PARAM.sub(lambda match: segment(match.group(1)), route.path)
    if draw(st.booleans()):
        names = st.sampled_from(route.fields) | TEXT if route.fields else TEXT
        url += "?" + urlencoded(draw(st.lists(st.tuples(names, TEXT | RAW), max_size=2))).decode()
    kind = draw(st.sampled_from(["json", "json", "form", "multipart", "raw"]))
    if kind == "raw":
        return {"url": url, "content": draw(RAW), "content_type": draw(st.sampled_from(CONTENT_TYPES))}
    base = BASES.get(route.path, {})
    if kind == "json":
        # Mostly text, the type most fields take, so that values get past the models to the services.
        value = st.one_of(TEXT, TEXT, JSON_VALUES)
        nested = st.dictionaries(NESTED_NAMES, value, max_size=3)
        fields = {name: nested if name in route.objects else value for name in route.fields}
        hostile = draw(st.fixed_dictionaries({}, optional=fields))
        extra = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=1))
        body = json.dumps({**base, **extra, **hostile}).encode()
        return {"url": url, "content": body, "content_type": "application/json"}
    # Forms: plain fields, and object fields in the a[b]= form.
    names = st.sampled_from(route.fields) if route.fields else TEXT
    if route.objects:
        names |= st.builds("{}[{}]".format, st.sampled_from(route.objects), NESTED_NAMES)
    pairs: list[tuple[str | bytes, str | bytes]] = [(k, str(v)) for k, v in base.items()]
    pairs += draw(st.lists(st.tuples(names | TEXT | RAW, TEXT | RAW), min_size=1, max_size=3))
    if kind == "form":
        return {"url": url, "content": urlencoded(pairs), "content_type": "application/x-www-form-urlencoded"}
    return {"url": url, "content": multipart(pairs), "content_type": "multipart/form-data; boundary=b0undary"}


@pytest.fixture
def database_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The door is in front of the store; the per-case tests in test_hostile_text.py run on both databases."""
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


class World:
    """An account with a device, a client and an integration to aim at, and a token kept valid."""

    def __init__(self, client: httpx.AsyncClient, account: Account, known: dict[str, list[str]]) -> None:
        self.client = client
        self.account = account
        self.known = known

    async def token(self) -> str:
        """The account's token, renewed when a fuzzed request revoked it (DELETE /v1/access_tokens does)."""
        me = await self.client.get("/v1/user", headers=self.account.auth)
        if me.status_code == 401:
            response = await login(self.client, self.account.email, self.account.password)
            assert 200 == response.status_code, response.text
            self.account.token = response.json()["access_token"]
            me = await self.client.get("/v1/user", headers=self.account.auth)
        assert 200 == me.status_code, me.text
        return self.account.token

    async def reads_still_work(self) -> None:
        """Whatever was stored reads back without a server error."""
        await self.token()
        reads = ["/v1/user", "/v1/clients", "/v1/integrations", "/v1/webhooks", "/v1/devices"]
        reads += [f"/v1/devices/{d}" for d in self.known["device"]]
        reads += [f"/v1/integrations/{i}" for i in self.known["integration_id"]]
        for path in reads:
            response = await self.client.get(path, headers=self.account.auth)
            assert response.status_code < 500, (path, response.text)

    async def restore(self) -> None:
        """Bring back what a fuzzed DELETE took away, so later examples still aim at real things."""
        auth = self.account.auth
        for device_id in self.known["device"]:
            if (await self.client.get(f"/v1/devices/{device_id}", headers=auth)).status_code != 200:
                await self.client.post("/v1/devices", json={"id": device_id}, headers=auth)
        clients = (await self.client.get("/v1/clients", headers=auth)).json()["clients"]
        if self.known["client_id"][0] not in [c["id"] for c in clients]:
            made = await self.client.post("/v1/clients", json=BASES["/v1/clients"], headers=auth)
            self.known["client_id"] = [made.json()["client"]["id"]]
        hook_id = self.known["integration_id"][0]
        if (await self.client.get(f"/v1/integrations/{hook_id}", headers=auth)).status_code != 200:
            hook = await self.client.post("/v1/integrations", json=HOOK, headers=auth)
            self.known["integration_id"] = self.known["hook_id"] = [hook.json()["id"]]


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    account = await make_account(client, "ada@example.com")
    identity = generate_identity()
    await register_and_claim(client, account, identity.device_id, identity.public_key_pem())
    made = await client.post("/v1/clients", json={"name": "app", "type": "installed"}, headers=account.auth)
    hook = await client.post("/v1/integrations", json=HOOK, headers=account.auth)
    client_id, hook_id = made.json()["client"]["id"], hook.json()["id"]
    known = {
        "device": [identity.device_id],
        "device_id": [identity.device_id],
        "function": ["digitalwrite"],
        "client_id": [client_id],
        "integration_id": [hook_id],
        "hook_id": [hook_id],
    }
    return World(client, account, known)


def app_routes() -> list[Route]:
    """
    The app's own route table, read at collection so that each route is a test of its own (a few hundred
    examples spread evenly, instead of left to chance). Building a runtime opens no connection.
    """
    settings = Settings(data_dir=Path(tempfile.gettempdir()) / "devicecloud-route-table")
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - never used: only routes are read
    runtime = build_runtime(settings, server_key=key)
    return body_routes(runtime.asgi_app(manage_lifecycle=False).openapi())


ROUTES = app_routes()


async def test_the_route_table_is_the_running_apps(runtime: Runtime) -> None:
    """The routes fuzzed are the running app's: publish, sign-up and the integrations among them."""
    running = body_routes(runtime.asgi_app(manage_lifecycle=False).openapi())
    assert running == ROUTES
    expected = {
        ("POST", "/v1/devices/events"),
        ("POST", "/v1/users"),
        ("PUT", "/v1/integrations/{integration_id}"),
    }
    assert expected <= {(r.method, r.path) for r in ROUTES}


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_hostile_requests_never_answer_5xx(world: World, route: Route, data: st.DataObject) -> None:
    """Any text or bytes, in any encoding: a 2xx/4xx reply, and every read afterwards still works."""
    request = data.draw(requests(route, world.known), label="request")
    headers = {"Content-Type": request["content_type"]} if request["content_type"] else {}
    if OAUTH.search(route.path):
        auth: httpx.BasicAuth | None = httpx.BasicAuth("particle", "particle")
    else:
        auth = None
        headers["Authorization"] = f"Bearer {await world.token()}"
    response = await world.client.request(
        route.method, request["url"], content=request["content"], headers=headers, auth=auth
    )
    assert response.status_code < 500, (request, response.text)
    await world.reads_still_work()
    await world.restore()
