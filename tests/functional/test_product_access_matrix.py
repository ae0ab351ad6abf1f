"""
The access matrix (issue 11, decision 0016): every product route of the application's route table, called
by every kind of principal, answers the expected status. A product route without a row here fails the
suite, so a new route cannot ship without saying who may use it.

Columns: the product's Owner; a member in each role; an API user holding the route's scope and one holding
another scope; an Administrator of another product; a plain user; a client of another product and one of
this product (``*:*``); a customer of this product and one of another product (issue 11 section 6).

The roles that may use a route are written out here by hand, not derived from `ROLE_ACTIONS`, so the test
checks the table rather than repeating it.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.devices import connect_device
from tests.support.sse import Served, serve_app

from devicecloud.domain.access import SCOPES
from devicecloud.domain.firmware import build_module
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.device import VirtualDevice

PW = "correct horse battery"
ALL_ROLES = "ADSV"  # Administrator, Developer, Support, View-only (the Owner may use every route)
ROLE_LETTERS = {"administrator": "A", "developer": "D", "support": "S", "view_only": "V"}
_counter = itertools.count()


@dataclass
class World:
    client: httpx.AsyncClient
    runtime: Runtime
    owner: Account
    tokens: dict[str, str] = field(default_factory=dict)  # column → bearer token
    api_users: dict[str, str] = field(default_factory=dict)  # scope → token of an API user holding only it
    online: VirtualDevice | None = None  # a device of alpha, connected (for the device twins)

    async def as_owner(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, url, headers=self.owner.auth, **kwargs)
        assert response.status_code < 300, (url, response.text)
        return response

    async def fresh_account(self) -> str:
        email = f"someone{next(_counter)}@example.com"
        created = await self.client.post(
            "/v1/users", json={"username": email, "password": "correct horse battery"}
        )
        assert created.status_code == 200, created.text
        return email

    async def fresh_member(self) -> str:
        email = await self.fresh_account()
        await self.as_owner("POST", "/v1/products/alpha/team", json={"username": email, "role": "Support"})
        return email

    async def fresh_device(self) -> str:
        """
        A device id imported into alpha (never connected: a bare record).
        """
        device_id = f"{next(_counter):024x}"
        await self.as_owner("POST", "/v1/products/alpha/devices", json={"id": device_id})
        return device_id

    async def online_device(self) -> str:
        if self.online is None:
            self.online = await connect_device(self.client, None, self.runtime, demo=True)
            await self.as_owner("POST", "/v1/products/alpha/devices", json={"id": self.online.device_id})
        return self.online.device_id

    async def fresh_hook(self) -> str:
        # Port 9 (discard) refuses at once: a test request through it fails fast and offline.
        made = await self.as_owner(
            "POST", "/v1/products/alpha/integrations", json={"event": "m", "url": "http://127.0.0.1:9/"}
        )
        hook_id: str = made.json()["id"]
        return hook_id

    async def fresh_client(self) -> str:
        made = await self.as_owner(
            "POST", "/v1/products/alpha/clients", json={"name": "matrix", "type": "installed"}
        )
        client_id: str = made.json()["client"]["id"]
        return client_id

    async def fresh_sim(self) -> str:
        iccid = f"8901{next(_counter):016d}"
        await self.as_owner("POST", "/v1/products/alpha/sims", json={"sims": [iccid]})
        return iccid

    async def fresh_firmware(self) -> int:
        """
        A version of alpha's firmware (uploaded by the owner, never released).
        """
        version = next(_counter) + 1
        await self.as_owner("POST", "/v1/products/alpha/firmware", **_firmware_upload(version))
        return version

    async def running_firmware(self) -> int:
        """
        A fresh version of alpha's firmware that a device of alpha reports running (a first release needs
        one): a bare product-device record with that version, as the presence write-behind leaves it.
        """
        version = await self.fresh_firmware()
        alpha_id = (await self.as_owner("GET", "/v1/products/alpha")).json()["product"]["id"]
        device_id = f"{0xF1F1 + version:024x}"
        async with self.runtime.store.transaction() as tx:
            await tx.devices.add(device_id, now=self.runtime.clock.now())
            await tx.products.add_device(
                alpha_id, device_id, firmware_version=version, now=self.runtime.clock.now()
            )
        return version

    async def fresh_group(self) -> str:
        name = f"g{next(_counter)}"
        await self.as_owner("POST", "/v1/products/alpha/groups", json={"name": name})
        return name


Request = tuple[str, dict[str, Any]]  # concrete URL, keyword arguments for httpx


def _firmware_upload(version: int) -> dict[str, Any]:
    binary = build_module(b"matrix firmware", platform_id=6)  # alpha is a Photon product
    return {
        "data": {"version": str(version), "title": f"v{version}"},
        "files": {"binary": ("firmware.bin", binary, "application/octet-stream")},
    }


async def _new_firmware(_world: World) -> Request:
    return "/v1/products/alpha/firmware", _firmware_upload(next(_counter) + 1)


def _firmware_route(suffix: str = "", **kwargs: Any) -> Callable[[World], Awaitable[Request]]:
    async def prepare(world: World) -> Request:
        return f"/v1/products/alpha/firmware/{await world.fresh_firmware()}{suffix}", kwargs

    return prepare


async def _release_firmware(world: World) -> Request:
    body = {"version": await world.running_firmware(), "groups": ["shared"]}
    return "/v1/products/alpha/firmware/release", {"json": body}


@dataclass(frozen=True)
class Row:
    scope: str | None  # the catalogue scope (or devicecloud action); None: people only, no product yet
    ok: int
    roles: str  # which roles may use it besides the Owner
    prepare: Callable[[World], Awaitable[Request]]
    listing: bool = False  # answers every person (their own products), not 404
    stream: bool = False  # an event stream: called over a real server, only its status read
    customer: int = 403  # what a customer of this product gets (its standing shows the product: not 404)
    people_only: bool = False  # API users and product clients are refused whatever their scopes


async def _plain(url: str, **kwargs: Any) -> Request:
    return url, kwargs


def fixed(url: str, **kwargs: Any) -> Callable[[World], Awaitable[Request]]:
    return lambda _world: _plain(url, **kwargs)


async def _invite(world: World) -> Request:
    return "/v1/products/alpha/team", {"json": {"username": await world.fresh_account(), "role": "View-only"}}


async def _change_role(world: World) -> Request:
    return f"/v1/products/alpha/team/{await world.fresh_member()}", {"json": {"role": "View-only"}}


async def _remove_member(world: World) -> Request:
    return f"/v1/products/alpha/team/{await world.fresh_member()}", {}


async def _get_group(world: World) -> Request:
    return "/v1/products/alpha/groups/shared", {}


async def _edit_group(world: World) -> Request:
    return f"/v1/products/alpha/groups/{await world.fresh_group()}", {"json": {"color": "#123456"}}


async def _delete_group(world: World) -> Request:
    return f"/v1/products/alpha/groups/{await world.fresh_group()}", {}


async def _new_group(world: World) -> Request:
    return "/v1/products/alpha/groups", {"json": {"name": f"n{next(_counter)}"}}


async def _import(world: World) -> Request:
    return "/v1/products/alpha/devices", {"json": {"id": f"{next(_counter) + 10**6:024x}"}}


async def _device(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.online_device()}", {}


async def _edit_device(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.fresh_device()}", {
        "json": {"notes": "n", "groups": ["shared"]}
    }


async def _remove_device(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.fresh_device()}", {}


async def _batch_groups(world: World) -> Request:
    body = {"action": "groups", "devices": [await world.fresh_device()], "metadata": {"add": ["shared"]}}
    return "/v1/products/alpha/devices", {"json": body}


async def _release(world: World) -> Request:
    device_id = await world.fresh_device()
    await world.as_owner("POST", "/v1/devices", json={"id": device_id})  # the owner is in the team
    return f"/v1/products/alpha/devices/{device_id}/owner", {}


async def _ping(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.online_device()}/ping", {}


async def _variable(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.online_device()}/temperature", {}


async def _function(world: World) -> Request:
    return f"/v1/products/alpha/devices/{await world.online_device()}/digitalread", {"json": {"arg": "D7"}}


async def _new_sims(_world: World) -> Request:
    return "/v1/products/alpha/sims", {"json": {"sims": [f"8902{next(_counter):016d}"]}}


async def _deactivate_sim(world: World) -> Request:
    return f"/v1/products/alpha/sims/{await world.fresh_sim()}", {"json": {"action": "deactivate"}}


async def _new_customer(_world: World) -> Request:
    return "/v1/products/alpha/customers", {
        "json": {"email": f"c{next(_counter)}@example.com", "password": PW}
    }


async def _customer_route(world: World) -> Request:
    email = f"c{next(_counter)}@example.com"
    await world.as_owner("POST", "/v1/products/alpha/customers", json={"email": email, "password": PW})
    return f"/v1/products/alpha/customers/{email}", {"json": {"password": "another passphrase"}}


async def _release_sim(world: World) -> Request:
    return f"/v1/products/alpha/sims/{await world.fresh_sim()}", {}


SHARED_SIM = "/v1/products/alpha/sims/89030000000000000001"  # never a fresh one (8901…, 8902…)


def _vitals(suffix: str = "", *, reported: bool = False) -> Callable[[World], Awaitable[Request]]:
    async def prepare(world: World) -> Request:
        base = f"/v1/products/alpha/diagnostics/{await world.online_device()}"
        if reported:  # a report to read back (else "no vitals" is a 404 like a refusal)
            await world.as_owner("POST", f"{base}/update")
        return base + suffix, {}

    return prepare


async def _agreement(world: World) -> str:
    answer = await world.as_owner("GET", "/v1/products/alpha/service_agreements")
    agreement: str = answer.json()["data"][0]["id"]
    return agreement


REPORT = {"report_type": "devices", "date_period_start": "2026-01-01", "date_period_end": "2026-01-31"}


async def _new_report(world: World) -> Request:
    return f"/v1/products/alpha/service_agreements/{await _agreement(world)}/usage_reports", {"json": REPORT}


async def _report(world: World) -> Request:
    made = await world.as_owner("POST", (await _new_report(world))[0], json=REPORT)
    return f"/v1/products/alpha/usage_reports/{made.json()['data']['id']}", {}


async def _notifications(world: World) -> Request:
    return f"/v1/products/alpha/service_agreements/{await _agreement(world)}/notifications", {}


MATRIX: dict[tuple[str, str], Row] = {
    ("GET", "/v1/user/products"): Row(
        "products:list", 200, ALL_ROLES, fixed("/v1/user/products"), listing=True
    ),
    ("GET", "/v1/products"): Row("products:list", 200, ALL_ROLES, fixed("/v1/products"), listing=True),
    ("POST", "/v1/products"): Row(
        None, 201, ALL_ROLES, lambda _w: _plain("/v1/products", json={"name": "P", "platform_id": 6})
    ),
    ("GET", "/v1/products/{product}"): Row("products:get", 200, ALL_ROLES, fixed("/v1/products/alpha")),
    ("PUT", "/v1/products/{product}"): Row(
        "products:update", 200, "A", fixed("/v1/products/alpha", json={"description": "edited"})
    ),
    ("GET", "/v1/products/{product}/team"): Row(
        "teams.users:list", 200, ALL_ROLES, fixed("/v1/products/alpha/team")
    ),
    ("POST", "/v1/products/{product}/team"): Row("teams.users:invite", 200, "A", _invite),
    ("PUT", "/v1/products/{product}/team/{username}"): Row("teams.users:update", 200, "A", _change_role),
    ("POST", "/v1/products/{product}/team/{username}"): Row("teams.users:update", 200, "A", _change_role),
    ("DELETE", "/v1/products/{product}/team/{username}"): Row("teams.users:remove", 200, "A", _remove_member),
    ("GET", "/v1/products/{product}/groups"): Row(
        "groups:list", 200, ALL_ROLES, fixed("/v1/products/alpha/groups")
    ),
    ("POST", "/v1/products/{product}/groups"): Row("groups:create", 201, "AD", _new_group),
    ("GET", "/v1/products/{product}/groups/{group}"): Row("groups:get", 200, ALL_ROLES, _get_group),
    ("PUT", "/v1/products/{product}/groups/{group}"): Row("groups:update", 200, "AD", _edit_group),
    ("DELETE", "/v1/products/{product}/groups/{group}"): Row("groups:remove", 204, "AD", _delete_group),
    ("GET", "/v1/products/{product}/devices"): Row(
        "devices:list", 200, ALL_ROLES, fixed("/v1/products/alpha/devices", params={"perPage": "5"})
    ),
    ("POST", "/v1/products/{product}/devices"): Row("devices:import", 200, "AD", _import),
    ("PUT", "/v1/products/{product}/devices"): Row("devices:update", 200, "ADS", _batch_groups),
    ("GET", "/v1/products/{product}/devices/{device}"): Row("devices:get", 200, ALL_ROLES, _device),
    ("PUT", "/v1/products/{product}/devices/{device}"): Row("devices:update", 200, "ADS", _edit_device),
    ("DELETE", "/v1/products/{product}/devices/{device}"): Row("devices:remove", 204, "AD", _remove_device),
    ("PUT", "/v1/products/{product}/devices/{device}/ping"): Row("devices:ping", 200, "ADS", _ping),
    ("DELETE", "/v1/products/{product}/devices/{device}/owner"): Row("devices:release", 200, "AD", _release),
    ("GET", "/v1/products/{product}/devices/{device}/{variable}"): Row(
        "devices.variable:get", 200, "ADS", _variable
    ),
    ("POST", "/v1/products/{product}/devices/{device}/{function}"): Row(
        "devices.function:call", 200, "ADS", _function
    ),
    ("GET", "/v1/products/{product}/impact"): Row(
        "groups.impact:get",
        200,
        ALL_ROLES,
        fixed(
            "/v1/products/alpha/impact",
            params={"action": "edit_groups_for_firmware", "firmware_version": "2", "groups": "shared"},
        ),
    ),
    ("GET", "/v1/products/{product}/firmware"): Row(
        "firmware:list", 200, ALL_ROLES, fixed("/v1/products/alpha/firmware")
    ),
    ("POST", "/v1/products/{product}/firmware"): Row("firmware:create", 201, "AD", _new_firmware),
    ("GET", "/v1/products/{product}/firmware/{version}"): Row(
        "firmware:get", 200, ALL_ROLES, _firmware_route()
    ),
    ("PUT", "/v1/products/{product}/firmware/{version}"): Row(
        "firmware:update", 200, "AD", _firmware_route(json={"title": "renamed"})
    ),
    ("GET", "/v1/products/{product}/firmware/{version}/binary"): Row(
        "firmware.binary:get", 200, "AD", _firmware_route("/binary")
    ),
    ("PUT", "/v1/products/{product}/firmware/release"): Row("firmware:release", 200, "AD", _release_firmware),
    ("DELETE", "/v1/products/{product}/firmware/{version}"): Row(
        "firmware:remove", 204, "AD", _firmware_route()
    ),
    ("GET", "/v1/products/{product}/sims"): Row(
        "sims:list", 200, ALL_ROLES, fixed("/v1/products/alpha/sims")
    ),
    ("POST", "/v1/products/{product}/sims"): Row("sims:import", 200, "AD", _new_sims),
    ("GET", "/v1/products/{product}/sims/data_usage"): Row(
        "sims.usage:get", 200, ALL_ROLES, fixed("/v1/products/alpha/sims/data_usage")
    ),
    ("GET", "/v1/products/{product}/sims/{iccid}"): Row("sims:get", 200, ALL_ROLES, fixed(SHARED_SIM)),
    ("PUT", "/v1/products/{product}/sims/{iccid}"): Row("sims:update", 200, "AD", _deactivate_sim),
    ("DELETE", "/v1/products/{product}/sims/{iccid}"): Row("sims:remove", 204, "AD", _release_sim),
    ("GET", "/v1/products/{product}/sims/{iccid}/data_usage"): Row(
        "sims.usage:get", 200, ALL_ROLES, fixed(f"{SHARED_SIM}/data_usage")
    ),
    ("GET", "/v1/products/{product}/sims/{iccid}/status"): Row(
        "sims.status:get", 202, ALL_ROLES, fixed(f"{SHARED_SIM}/status")
    ),
    ("POST", "/v1/products/{product}/diagnostics/{device}/update"): Row(
        "devices.diagnostics:update", 202, "ADS", _vitals("/update")
    ),
    ("GET", "/v1/products/{product}/diagnostics/{device}/last"): Row(
        "devices.diagnostics:get", 200, ALL_ROLES, _vitals("/last", reported=True)
    ),
    ("GET", "/v1/products/{product}/diagnostics/{device}"): Row(
        "devices.diagnostics:get", 200, ALL_ROLES, _vitals()
    ),
    ("GET", "/v1/products/{product}/diagnostics/{device}/metadata"): Row(
        "devices.diagnostics.metadata:get", 200, ALL_ROLES, _vitals("/metadata")
    ),
    ("GET", "/v1/products/{product}/diagnostics/{device}/summary"): Row(
        "devices.diagnostics.summary:get", 200, ALL_ROLES, _vitals("/summary")
    ),
    ("GET", "/v1/products/{product}/service_agreements"): Row(
        "service_agreements:list", 200, ALL_ROLES, fixed("/v1/products/alpha/service_agreements")
    ),
    ("POST", "/v1/products/{product}/service_agreements/{agreement}/usage_reports"): Row(
        "service_agreements.usage_reports:create", 202, "AD", _new_report
    ),
    ("GET", "/v1/products/{product}/usage_reports/{report}"): Row(
        "service_agreements.usage_reports:get", 200, ALL_ROLES, _report
    ),
    ("GET", "/v1/products/{product}/service_agreements/{agreement}/notifications"): Row(
        "service_agreements.notifications:list", 200, ALL_ROLES, _notifications
    ),
}

HOOK = {"event": "matrix", "url": "http://127.0.0.1:9/"}


def hook_route(
    suffix: str = "", legacy: bool = False, **kwargs: Any
) -> Callable[[World], Awaitable[Request]]:
    async def prepare(world: World) -> Request:
        base = "webhooks" if legacy else "integrations"
        return f"/v1/products/alpha/{base}/{await world.fresh_hook()}{suffix}", kwargs

    return prepare


async def _client_route(world: World) -> Request:
    return f"/v1/products/alpha/clients/{await world.fresh_client()}", {"json": {"name": "renamed"}}


DEVICE = "0123456789abcdef01234567"  # a device of the product (world building puts it there)


def _product_device_stream(suffix: str) -> Callable[[World], Awaitable[Request]]:
    return fixed(f"/v1/products/alpha/devices/{DEVICE}/events{suffix}")


MATRIX.update(
    {
        ("GET", "/v1/products/{product}/clients"): Row(
            "clients:list", 200, ALL_ROLES, fixed("/v1/products/alpha/clients")
        ),
        ("POST", "/v1/products/{product}/clients"): Row(
            "clients:create",
            200,
            "AD",
            fixed("/v1/products/alpha/clients", json={"name": "made", "type": "installed"}),
        ),
        ("PUT", "/v1/products/{product}/clients/{client_id}"): Row(
            "clients:update", 200, "AD", _client_route
        ),
        ("DELETE", "/v1/products/{product}/clients/{client_id}"): Row(
            "clients:remove", 204, "AD", _client_route
        ),
        ("POST", "/v1/products/{product}/integrations"): Row(
            "integrations:create", 201, "AD", fixed("/v1/products/alpha/integrations", json=HOOK)
        ),
        ("GET", "/v1/products/{product}/integrations"): Row(
            "integrations:list", 200, ALL_ROLES, fixed("/v1/products/alpha/integrations")
        ),
        ("GET", "/v1/products/{product}/integrations/{integration_id}"): Row(
            "integrations:get", 200, ALL_ROLES, hook_route()
        ),
        ("PUT", "/v1/products/{product}/integrations/{integration_id}"): Row(
            "integrations:update", 200, "AD", hook_route(json=HOOK)
        ),
        ("POST", "/v1/products/{product}/integrations/{integration_id}/test"): Row(
            "integrations:test", 200, "AD", hook_route("/test")
        ),
        ("DELETE", "/v1/products/{product}/integrations/{integration_id}"): Row(
            "integrations:remove", 204, "AD", hook_route()
        ),
        ("POST", "/v1/products/{product}/webhooks"): Row(
            "integrations:create", 201, "AD", fixed("/v1/products/alpha/webhooks", json=HOOK)
        ),
        ("GET", "/v1/products/{product}/webhooks"): Row(
            "integrations:list", 200, ALL_ROLES, fixed("/v1/products/alpha/webhooks")
        ),
        ("GET", "/v1/products/{product}/webhooks/{hook_id}"): Row(
            "integrations:get", 200, ALL_ROLES, hook_route(legacy=True)
        ),
        ("DELETE", "/v1/products/{product}/webhooks/{hook_id}"): Row(
            "integrations:remove", 200, "AD", hook_route(legacy=True)
        ),
        ("GET", "/v1/products/{product}/events"): Row(
            "events:get", 200, ALL_ROLES, fixed("/v1/products/alpha/events"), stream=True
        ),
        ("GET", "/v1/products/{product}/events/{prefix}"): Row(
            "events:get", 200, ALL_ROLES, fixed("/v1/products/alpha/events/temp/x"), stream=True
        ),
        ("GET", "/v1/products/{product}/devices/{device}/events"): Row(
            "events:get", 200, ALL_ROLES, _product_device_stream(""), stream=True
        ),
        ("GET", "/v1/products/{product}/devices/{device}/events/{prefix}"): Row(
            "events:get", 200, ALL_ROLES, _product_device_stream("/temp"), stream=True
        ),
        ("POST", "/v1/products/{product}/events"): Row(
            "events:send", 200, "AD", fixed("/v1/products/alpha/events", json={"name": "matrix"})
        ),
        ("POST", "/v1/products/{product}/customers"): Row("customers:create", 201, "AD", _new_customer),
        ("GET", "/v1/products/{product}/customers"): Row(
            "customers:list", 200, ALL_ROLES, fixed("/v1/products/alpha/customers")
        ),
        ("PUT", "/v1/products/{product}/customers/{email}"): Row(
            "customers:update", 200, "AD", _customer_route
        ),
        ("DELETE", "/v1/products/{product}/customers/{email}"): Row(
            "customers:remove", 200, "AD", _customer_route
        ),
        # A member's own claim code (any role), or a customer's: API users and clients own no devices.
        ("POST", "/v1/products/{product}/device_claims"): Row(
            "products:get",
            200,
            ALL_ROLES,
            fixed("/v1/products/alpha/device_claims"),
            customer=200,
            people_only=True,
        ),
    }
)

COLUMNS = (
    "owner",
    "administrator",
    "developer",
    "support",
    "view_only",
    "api_user_with_scope",
    "api_user_without_scope",
    "member_of_another_product",
    "plain_user",
    "client_of_another_product",
    "client_of_this_product",
    "customer_of_this_product",
    "customer_of_another_product",
)


def product_routes(runtime: Runtime) -> set[tuple[str, str]]:
    """
    (method, path) of every product route, from the application's route table as its OpenAPI document
    lists it (every API route is in the document; FastAPI nests included routers out of ``app.routes``).
    """
    paths = runtime.asgi_app(manage_lifecycle=False).openapi()["paths"]
    return {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith(("/v1/products", "/v1/user/products"))
        for method in operations
    }


def expected(row: Row, column: str) -> int:
    people = ("owner", *ROLE_LETTERS, "member_of_another_product", "plain_user")
    if row.scope is None:  # creating a product: any person, no product principal
        return row.ok if column in people else 403
    if column.startswith("customer_of_") and row.listing:  # customers list no products
        return 403
    if column == "customer_of_this_product":
        return row.customer
    if column == "owner":
        return row.ok
    if column in ROLE_LETTERS:
        return row.ok if ROLE_LETTERS[column] in row.roles else 403
    if column in ("api_user_with_scope", "client_of_this_product"):  # the client has *:*
        return (
            row.ok if row.scope in SCOPES and not row.people_only else 403
        )  # no scope, not even *:*, grants devicecloud actions
    if column == "api_user_without_scope":
        return 403
    if row.listing:  # everyone lists their own products; a product client has *:*
        return row.ok
    return 404  # no standing in this product: it cannot even be seen


async def _token(client: httpx.AsyncClient, account: Account) -> str:
    return account.token


async def build_world(client: httpx.AsyncClient, runtime: Runtime) -> World:
    owner = await make_account(client, "owner@example.com")
    world = World(client, runtime, owner)
    world.tokens["owner"] = owner.token
    await world.as_owner("POST", "/v1/products", json={"name": "Alpha", "platform_id": 6})
    for role in ROLE_LETTERS:
        member = await make_account(client, f"{role}@example.com")
        await world.as_owner("POST", "/v1/products/alpha/team", json={"username": member.email, "role": role})
        world.tokens[role] = member.token
    await world.as_owner("POST", "/v1/products/alpha/groups", json={"name": "shared"})
    alpha_id = (await world.as_owner("GET", "/v1/products/alpha")).json()["product"]["id"]
    async with runtime.store.transaction() as tx:  # the product-device import door comes with section 3
        await tx.devices.add(DEVICE, now=runtime.clock.now())
        await tx.products.add_device(alpha_id, DEVICE, firmware_version=None, now=runtime.clock.now())
    await world.as_owner("POST", "/v1/products/alpha/sims", json={"sims": [SHARED_SIM.rsplit("/", 1)[1]]})
    scopes = {row.scope for row in MATRIX.values() if row.scope in SCOPES} | {"locations:get"}
    for scope in sorted(s for s in scopes if s is not None):
        created = await world.as_owner(
            "POST", "/v1/products/alpha/team", json={"friendly_name": scope, "scopes": [scope]}
        )
        world.api_users[scope] = created.json()["created"]["tokens"][0]["token"]
    world.tokens["api_user_without_scope"] = world.api_users["locations:get"]
    other = await make_account(client, "other@example.com")
    created = await client.post("/v1/products", json={"name": "Beta", "platform_id": 6}, headers=other.auth)
    assert created.status_code == 201
    world.tokens["member_of_another_product"] = other.token
    world.tokens["plain_user"] = (await make_account(client, "plain@example.com")).token
    user = await runtime.accounts.get_by_username(other.email)
    beta = created.json()["product"]["id"]
    made = await runtime.clients.create(user, name="Beta server", type="installed", product_id=beta)
    assert made.secret is not None
    granted = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(made.client.id, made.secret)
    )
    assert granted.status_code == 200, granted.text
    world.tokens["client_of_another_product"] = granted.json()["access_token"]
    alpha = (await world.as_owner("GET", "/v1/products/alpha")).json()["product"]["id"]
    owner_user = await runtime.accounts.get_by_username(owner.email)
    ours = await runtime.clients.create(owner_user, name="Alpha server", type="installed", product_id=alpha)
    assert ours.secret is not None
    granted = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(ours.client.id, ours.secret)
    )
    world.tokens["client_of_this_product"] = granted.json()["access_token"]
    for column, (made_by, secret) in (
        ("customer_of_this_product", (ours.client.id, ours.secret)),
        ("customer_of_another_product", (made.client.id, made.secret)),
    ):
        product = alpha if column == "customer_of_this_product" else beta
        created = await client.post(
            f"/v1/products/{product}/customers",
            data={"email": f"{column}@example.com", "password": PW},
            auth=(made_by, secret),
        )
        assert created.status_code == 201, created.text
        world.tokens[column] = created.json()["access_token"]
    return world


async def test_every_product_route_has_a_row(runtime: Runtime) -> None:
    routes = product_routes(runtime)
    missing = sorted(routes - set(MATRIX))
    stale = sorted(set(MATRIX) - routes)
    assert not missing, f"product routes without a row in the access matrix: {missing}"
    assert not stale, f"rows for routes that no longer exist: {stale}"


async def _call(
    client: httpx.AsyncClient, served: Served, row: Row, method: str, url: str, token: str, **kwargs: Any
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if not row.stream:
        response = await client.request(method, url, headers=headers, **kwargs)
        return response.status_code, response.text
    async with served.http.stream(method, url, headers=headers, **kwargs) as streamed:
        return streamed.status_code, "" if streamed.status_code == 200 else (await streamed.aread()).decode()


async def test_every_principal_gets_the_expected_status(client: httpx.AsyncClient, runtime: Runtime) -> None:
    world = await build_world(client, runtime)
    try:
        async with serve_app(runtime) as served:
            wrong = await _walk(client, world, served)
    finally:
        if world.online is not None:
            await world.online.stop()
    assert not wrong, "\n".join(wrong)


async def _walk(client: httpx.AsyncClient, world: World, served: Served) -> list[str]:
    wrong: list[str] = []
    for (method, path), row in sorted(MATRIX.items()):
        for column in COLUMNS:
            if column == "api_user_with_scope":
                token = world.api_users.get(row.scope or "", world.api_users["locations:get"])
            else:
                token = world.tokens[column]
            url, kwargs = await row.prepare(world)
            status, text = await _call(client, served, row, method, url, token, **kwargs)
            want = expected(row, column)
            if status != want:
                wrong.append(f"{method} {path} as {column}: {status} (expected {want}) {text}")
    return wrong


@pytest.mark.parametrize("column", ["api_user_without_scope", "plain_user"])
async def test_refused_calls_change_nothing(client: httpx.AsyncClient, runtime: Runtime, column: str) -> None:
    world = await build_world(client, runtime)
    before = (await world.as_owner("GET", "/v1/products/alpha/team")).json()
    groups = (await world.as_owner("GET", "/v1/products/alpha/groups")).json()
    auth = {"Authorization": f"Bearer {world.tokens[column]}"}
    await client.post("/v1/products/alpha/team", json={"username": "plain@example.com"}, headers=auth)
    await client.delete("/v1/products/alpha/groups/shared", headers=auth)
    await client.put("/v1/products/alpha", json={"name": "mine"}, headers=auth)
    await client.delete(SHARED_SIM, headers=auth)
    await client.put(SHARED_SIM, json={"action": "deactivate"}, headers=auth)
    assert (await world.as_owner("GET", "/v1/products/alpha/team")).json() == before
    assert (await world.as_owner("GET", "/v1/products/alpha/groups")).json() == groups
    assert (await world.as_owner("GET", "/v1/products/alpha")).json()["product"]["name"] == "Alpha"
    assert (await world.as_owner("GET", SHARED_SIM)).json()["status"] == "active"
