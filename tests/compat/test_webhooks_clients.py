"""
The official clients' webhook calls, unchanged, against a running devicecloud: particle-cli ``webhook create``
(with arguments and with a JSON file), ``webhook list`` and ``webhook delete`` (the legacy /v1/webhooks), and
particle-api-js ``createWebhook``, ``listWebhooks``, ``deleteWebhook``, ``createIntegration``,
``listIntegrations``, ``editIntegration`` and ``deleteIntegration`` (node/webhooks_flow.js). Each test checks
what the client printed or returned, then the state the server kept, over HTTP. Hooks made by the CLI then
deliver ``particle publish`` events to a local HTTP server (pytest-httpserver).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pytest_httpserver import HTTPServer
from tests.compat.conftest import NodeFlow, wait_for
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat
DEVICE_ID = "0123456789abcdef01234567"  # a device filter needs no device: the hook only stores it
DEAD_TARGET = "http://127.0.0.1:9"  # for hooks no event triggers
CREATED = re.compile(r"Successfully created webhook with ID ([0-9a-f]+)\n")


def hook(api: httpx.Client, hook_id: str) -> dict[str, Any]:
    """The hook as ``GET /v1/integrations/:id`` shows it (without its logs)."""
    reply = api.get(f"/v1/integrations/{hook_id}")
    assert 200 == reply.status_code, reply.text
    integration: dict[str, Any] = reply.json()["integration"]
    integration.pop("logs")
    return integration


def hook_ids(api: httpx.Client) -> set[str]:
    reply = api.get("/v1/webhooks")
    assert 200 == reply.status_code, reply.text
    return {h["id"] for h in reply.json()}


def settings(integration: dict[str, Any]) -> dict[str, Any]:
    """A hook's configuration, without what the server assigns (id, creation time) and its logs."""
    return {k: v for k, v in integration.items() if k not in ("id", "created_at", "logs")}


DEFAULT_FLAGS = {"noDefaults": False, "disabled": False, "rejectUnauthorized": True, "unchunked": False}


# ---------------------------------------------------------------- particle-cli


class CliRunner:
    """Runs the particle binary with one profile (HOME) and captures what it prints."""

    def __init__(self, node_dir: Path, env: dict[str, str]) -> None:
        self.binary = str(node_dir / "node_modules" / ".bin" / "particle")
        self.env = env

    def __call__(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def create(self, *args: str, cwd: Path | None = None) -> str:
        """``webhook create ARGS`` that succeeds; the new hook's id, as the CLI printed it."""
        result = self("webhook", "create", *args, cwd=cwd)
        assert 0 == result.returncode, result.stdout + result.stderr
        found = CREATED.search(result.stdout)
        assert found, result.stdout
        return found.group(1)


@pytest.fixture(scope="module")
def cli(node_dir: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    """A fresh particle-cli profile pointed at the server and logged in as the owner."""
    home = tmp_path_factory.mktemp("cli-webhooks-home")
    runner = CliRunner(node_dir, {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"})
    assert 0 == runner("config", "local", "apiUrl", server.url).returncode
    assert 0 == runner("config", "local").returncode
    login = runner("login", "--username", server.email, "--password", server.password)
    assert 0 == login.returncode, login.stdout + login.stderr
    return runner


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("create", "cli/args", f"{DEAD_TARGET}/args"), {"requestType": "POST"}),
        (
            ("create", "cli/args-get", f"{DEAD_TARGET}/get", DEVICE_ID, "GET"),
            {"requestType": "GET", "deviceID": DEVICE_ID},
        ),
        (("GET", "cli/get", f"{DEAD_TARGET}/get"), {"requestType": "GET"}),
        (
            ("POST", "cli/post", f"{DEAD_TARGET}/post", DEVICE_ID),
            {"requestType": "POST", "deviceID": DEVICE_ID},
        ),
    ],
)
def test_cli_create_with_arguments(
    cli: CliRunner, owner_api: httpx.Client, args: tuple[str, ...], expected: dict[str, Any]
) -> None:
    """
    ``webhook create EVENT URL [DEVICE] [REQUEST_TYPE]`` (and the ``webhook GET``/``POST`` shortcuts) send
    ``{event, url, deviceid, requestType}`` to POST /v1/webhooks; the CLI needs ``ok`` and ``id`` in the
    reply. The hook is kept with the hosted defaults (POST, defaults on, certificates checked).
    """
    _command, event, url, *_ = args
    result = cli("webhook", *args)
    assert 0 == result.returncode, result.stdout + result.stderr
    found = CREATED.search(result.stdout)
    assert found, result.stdout
    assert {
        "event": event,
        "url": url,
        "integration_type": "Webhook",
        **DEFAULT_FLAGS,
        **expected,
    } == settings(hook(owner_api, found.group(1)))


def test_cli_create_from_file(cli: CliRunner, owner_api: httpx.Client, tmp_path: Path) -> None:
    """
    ``webhook create hook.json`` sends every field of the file as it is (and ``deviceid`` from it); the hook
    keeps each one under its API name, and the legacy GET /v1/webhooks/:id shows the same configuration.
    """
    fields = {
        "event": "cli/file",
        "url": f"{DEAD_TARGET}/file",
        "deviceid": DEVICE_ID,
        "name": "From a file",
        "requestType": "PUT",
        "json": {"value": "{{{PARTICLE_EVENT_VALUE}}}", "temp": "{{temp}}"},
        "headers": {"X-Api-Key": "k-123"},
        "query": {"source": "cli"},
        "auth": {"username": "hook-user", "password": "hook-pass"},
        "responseTopic": "cli/file-answer",
        "errorResponseTopic": "cli/file-error",
        "responseTemplate": "{{answer}}",
        "noDefaults": True,
        "rejectUnauthorized": False,
    }
    (tmp_path / "hook.json").write_text(json.dumps(fields))
    result = cli("webhook", "create", "hook.json", cwd=tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Using settings from the file hook.json" in result.stdout
    found = CREATED.search(result.stdout)
    assert found, result.stdout
    stored = hook(owner_api, found.group(1))
    expected = {k: v for k, v in fields.items() if k != "deviceid"}
    assert {
        **expected,
        "deviceID": DEVICE_ID,
        "disabled": False,
        "unchunked": False,
        "integration_type": "Webhook",
    } == settings(stored)
    legacy = owner_api.get(f"/v1/webhooks/{stored['id']}")
    assert 200 == legacy.status_code, legacy.text
    assert stored == {k: v for k, v in legacy.json().items() if k != "logs"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": f"{DEAD_TARGET}/x"}, "Please specify an event name"),
        ({"event": "cli/no-url"}, "Please specify a url"),
    ],
)
def test_cli_create_from_incomplete_file(
    cli: CliRunner, owner_api: httpx.Client, tmp_path: Path, fields: dict[str, str], message: str
) -> None:
    """A file without event or url is refused by the CLI itself, before any request."""
    before = hook_ids(owner_api)
    (tmp_path / "hook.json").write_text(json.dumps(fields))
    result = cli("webhook", "create", "hook.json", cwd=tmp_path)
    assert 0 != result.returncode
    assert message in result.stdout + result.stderr
    assert before == hook_ids(owner_api)


@pytest.mark.parametrize(
    "args",
    [
        ("cli/bad-url", "not-a-url"),
        ("cli/bad-device", f"{DEAD_TARGET}/x", "not-a-device-id"),
        ("cli/bad-type", f"{DEAD_TARGET}/x", DEVICE_ID, "PATCH"),
    ],
)
def test_cli_create_refused(cli: CliRunner, owner_api: httpx.Client, args: tuple[str, ...]) -> None:
    """A hook the server refuses (400) makes the CLI fail with its error line, and nothing is created."""
    before = hook_ids(owner_api)
    result = cli("webhook", "create", *args)
    assert 0 != result.returncode
    assert "Error creating webhook: " in result.stdout, result.stdout + result.stderr
    assert "Successfully created webhook" not in result.stdout
    assert before == hook_ids(owner_api)


def test_cli_list(cli: CliRunner, owner_api: httpx.Client) -> None:
    """
    ``webhook list`` reads GET /v1/webhooks and prints every hook: id, event, url, device filter, creation.
    """
    with_device = cli.create("cli/list-device", f"{DEAD_TARGET}/list", DEVICE_ID)
    cli.create("cli/list", f"{DEAD_TARGET}/list")
    hooks = owner_api.get("/v1/webhooks").json()
    result = cli("webhook", "list")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert f"Found {len(hooks)} hooks registered" in result.stdout
    for number, listed in enumerate(hooks, start=1):
        lines = [
            f'    {number}.) Hook ID {listed["id"]} is watching for "{listed["event"]}"',
            f"        and sending to: {listed['url']}",
            *([f"        for device {listed['deviceID']}"] if "deviceID" in listed else []),
            f"        created at {listed['created_at']}",
        ]
        assert "\n".join(lines) + "\n" in result.stdout
    assert f"Hook ID {with_device} " in result.stdout
    assert f"        for device {DEVICE_ID}\n" in result.stdout


def test_cli_delete(cli: CliRunner, owner_api: httpx.Client) -> None:
    """
    ``webhook delete ID`` prints its success line only for a JSON ``{ok: true}`` reply; the hook is gone
    from both APIs. Deleting it again fails with the server's error.
    """
    hook_id = cli.create("cli/delete", f"{DEAD_TARGET}/delete")
    result = cli("webhook", "delete", hook_id)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "Successfully deleted webhook!" in result.stdout
    assert 404 == owner_api.get(f"/v1/integrations/{hook_id}").status_code
    assert hook_id not in hook_ids(owner_api)
    again = cli("webhook", "delete", hook_id)
    assert 1 == again.returncode
    assert "Error deleting webhook: " in again.stdout, again.stdout + again.stderr


def delivered(httpserver: HTTPServer, count: int) -> list[Any]:
    wait_for(lambda: len(httpserver.log) >= count, timeout=20)
    return [request for request, _response in httpserver.log]


def logged(api: httpx.Client, hook_id: str) -> list[dict[str, Any]]:
    """The hook's delivery logs, once there is one (they are written after the target answered)."""
    wait_for(lambda: bool(api.get(f"/v1/integrations/{hook_id}").json()["integration"]["logs"]), timeout=20)
    logs: list[dict[str, Any]] = api.get(f"/v1/integrations/{hook_id}").json()["integration"]["logs"]
    return logs


def test_cli_hook_delivers_published_event(
    cli: CliRunner, owner_api: httpx.Client, httpserver: HTTPServer
) -> None:
    """
    A hook made by ``webhook create EVENT URL`` posts the default form for a ``particle publish`` event whose
    name starts with EVENT, and the request shows in the hook's logs.
    """
    httpserver.expect_request("/cli-sink", method="POST").respond_with_data("thanks")
    hook_id = cli.create("cli/e2e", httpserver.url_for("/cli-sink"))
    published = cli("publish", "cli/e2e-temp", "21.5")
    assert 0 == published.returncode, published.stdout + published.stderr
    (request,) = delivered(httpserver, 1)
    assert "application/x-www-form-urlencoded" == request.headers["Content-Type"]
    assert "ParticleBot/1.1 (https://docs.particle.io/webhooks)" == request.headers["User-Agent"]
    form = parse_qs(request.get_data(as_text=True))
    assert ({"cli/e2e-temp"}, {"21.5"}, {"api"}) == (
        set(form["event"]),
        set(form["data"]),
        set(form["coreid"]),
    )
    assert form["published_at"][0].endswith("Z")
    (log,) = logged(owner_api, hook_id)
    assert (200, None) == (log["response"]["status"], log["error"])


def test_cli_file_hook_delivers_template(
    cli: CliRunner, owner_api: httpx.Client, httpserver: HTTPServer, tmp_path: Path
) -> None:
    """
    A hook made from a JSON file (PUT, ``json`` template, ``query``, ``headers``, ``auth``, ``noDefaults``)
    sends the rendered request: keys of JSON event data are template variables, and no default fields.
    """
    httpserver.expect_request("/file-sink", method="PUT").respond_with_json({"answer": 42})
    fields = {
        "event": "cli/file-e2e",
        "url": httpserver.url_for("/file-sink"),
        "requestType": "PUT",
        "json": {
            "value": "{{{PARTICLE_EVENT_VALUE}}}",
            "temp": "{{temp}}",
            "event": "{{PARTICLE_EVENT_NAME}}",
        },
        "query": {"source": "cli"},
        "headers": {"X-Api-Key": "k-123"},
        "auth": {"username": "hook-user", "password": "hook-pass"},
        "noDefaults": True,
    }
    (tmp_path / "hook.json").write_text(json.dumps(fields))
    hook_id = cli.create("hook.json", cwd=tmp_path)
    published = cli("publish", "cli/file-e2e", '{"temp":21.5}')
    assert 0 == published.returncode, published.stdout + published.stderr
    (request,) = delivered(httpserver, 1)
    assert {"source": ["cli"]} == parse_qs(request.query_string.decode())
    assert request.headers["Content-Type"].startswith("application/json")
    assert "k-123" == request.headers["X-Api-Key"]
    basic = base64.b64encode(b"hook-user:hook-pass").decode()
    assert f"Basic {basic}" == request.headers["Authorization"]
    assert {"value": '{"temp":21.5}', "temp": "21.5", "event": "cli/file-e2e"} == json.loads(
        request.get_data()
    )
    (log,) = logged(owner_api, hook_id)
    assert 200 == log["response"]["status"]


def test_cli_deleted_hook_stops_delivering(
    cli: CliRunner, owner_api: httpx.Client, httpserver: HTTPServer
) -> None:
    """After ``webhook delete`` an event the hook matched reaches nothing; a live hook still receives it."""
    httpserver.expect_request("/deleted", method="POST").respond_with_data("no")
    httpserver.expect_request("/kept", method="POST").respond_with_data("ok")
    deleted = cli.create("cli/stop", httpserver.url_for("/deleted"))
    assert 0 == cli("webhook", "delete", deleted).returncode
    kept = cli.create("cli/stop", httpserver.url_for("/kept"))
    assert 0 == cli("publish", "cli/stop", "x").returncode
    logged(owner_api, kept)
    assert ["/kept"] == [request.path for request in delivered(httpserver, 1)]


# ---------------------------------------------------------------- particle-api-js


@pytest.fixture(scope="module")
def webhooks(node_dir: Path, server: LiveServer) -> dict[str, Any]:
    return NodeFlow(node_dir, server, "webhooks_flow.js")("webhooks", DEAD_TARGET, DEVICE_ID)


@pytest.fixture(scope="module")
def integrations(node_dir: Path, server: LiveServer) -> dict[str, Any]:
    return NodeFlow(node_dir, server, "webhooks_flow.js")("integrations", DEAD_TARGET, DEVICE_ID)


def test_js_create_webhook(webhooks: dict[str, Any], server: LiveServer, owner_api: httpx.Client) -> None:
    """
    createWebhook({event, url}) gets 201 with the fields CreateWebhookResponse promises (ok, id, url, event,
    name, created_at, hookUrl); the hook is a POST with the defaults.
    """
    reply = webhooks["createPlain"]
    body = reply["body"]
    assert (True, 201, True) == (reply["ok"], reply["statusCode"], body["ok"])
    assert (f"{DEAD_TARGET}/plain", "js/plain", f"{server.url}/v1/webhooks/{body['id']}") == (
        body["url"],
        body["event"],
        body["hookUrl"],
    )
    assert {"name", "created_at"} <= body.keys()
    assert body["created_at"].endswith("Z")


def test_js_create_webhook_with_every_option(webhooks: dict[str, Any], owner_api: httpx.Client) -> None:
    """
    createWebhook with device, rejectUnauthorized, noDefaults and a ``hook`` (method, auth, headers, query,
    json, responseTemplate, responseEvent, errorResponseEvent) — sent as deviceId, requestType, responseTopic,
    errorResponseTopic — keeps each under its API name.
    """
    reply = webhooks["createFull"]
    assert (True, 201) == (reply["ok"], reply["statusCode"])
    assert {
        "event": "js/full",
        "url": f"{DEAD_TARGET}/full?device={{{{PARTICLE_DEVICE_ID}}}}",
        "deviceID": DEVICE_ID,
        "requestType": "PUT",
        "auth": {"username": "hook-user", "password": "hook-pass"},
        "headers": {"X-Api-Key": "k-123"},
        "query": {"source": "api-js"},
        "json": {"value": "{{{PARTICLE_EVENT_VALUE}}}", "temp": "{{temp}}"},
        "responseTemplate": "{{answer}}",
        "responseTopic": "js/full-answer",
        "errorResponseTopic": "js/full-error",
        "noDefaults": True,
        "rejectUnauthorized": False,
        "disabled": False,
        "unchunked": False,
        "integration_type": "Webhook",
    } == settings(hook(owner_api, reply["body"]["id"]))


def test_js_list_webhooks(webhooks: dict[str, Any]) -> None:
    """listWebhooks gets an array of WebhookInfo (id, event, created_at, url, requestType, deviceID)."""
    reply = webhooks["listWebhooks"]
    assert (True, 200) == (reply["ok"], reply["statusCode"])
    listed = {h["id"]: h for h in reply["body"]}
    plain, full = webhooks["createPlain"]["body"], webhooks["createFull"]["body"]
    assert {plain["id"], full["id"]} <= listed.keys()
    for created in (plain, full):
        entry = listed[created["id"]]
        assert (created["event"], created["url"], created["created_at"], created["requestType"]) == (
            entry["event"],
            entry["url"],
            entry["created_at"],
            entry["requestType"],
        )
    assert DEVICE_ID == listed[full["id"]]["deviceID"]
    assert "deviceID" not in listed[plain["id"]]


def test_js_delete_webhook(webhooks: dict[str, Any], owner_api: httpx.Client) -> None:
    """
    deleteWebhook gets ``{ok: true}`` (OKResponse); the hook leaves the list and the API; a second delete
    rejects with 404 and the server's description.
    """
    plain_id = webhooks["createPlain"]["body"]["id"]
    assert (True, 200, {"ok": True}) == (
        webhooks["deleteWebhook"]["ok"],
        webhooks["deleteWebhook"]["statusCode"],
        webhooks["deleteWebhook"]["body"],
    )
    assert plain_id not in {h["id"] for h in webhooks["listAfterDelete"]["body"]}
    assert 404 == owner_api.get(f"/v1/integrations/{plain_id}").status_code
    missing = webhooks["deleteMissing"]
    assert (False, 404, "Integration not found") == (missing["ok"], missing["statusCode"], missing["message"])


def test_js_create_webhook_refused(webhooks: dict[str, Any]) -> None:
    """A bad url rejects with 400 and a description the library shows (shortErrorDescription)."""
    refused = webhooks["createInvalid"]
    assert (False, 400, False) == (refused["ok"], refused["statusCode"], refused["body"]["ok"])
    assert "url" in refused["message"]


def test_js_create_integration(
    integrations: dict[str, Any], server: LiveServer, owner_api: httpx.Client
) -> None:
    """
    createIntegration posts ``{event, deviceid, ...settings}`` to /v1/integrations: 201 with IntegrationInfo
    (id, event, created_at, integration_type, url, requestType); every setting is kept.
    """
    reply = integrations["createIntegration"]
    body = reply["body"]
    assert (True, 201) == (reply["ok"], reply["statusCode"])
    assert ("js/int", "Webhook", f"{DEAD_TARGET}/int", "POST") == (
        body["event"],
        body["integration_type"],
        body["url"],
        body["requestType"],
    )
    assert body["created_at"].endswith("Z")
    assert f"{server.url}/v1/webhooks/{body['id']}" == body["hookUrl"]
    created = {
        "event": "js/int",
        "url": f"{DEAD_TARGET}/int",
        "requestType": "POST",
        "deviceID": DEVICE_ID,
        "form": {"reading": "{{{PARTICLE_EVENT_VALUE}}}"},
        "headers": {"X-Source": "integration"},
        "responseTopic": "js/int-answer",
        "integration_type": "Webhook",
        **DEFAULT_FLAGS,
    }
    assert created == settings(integrations["getIntegration"]["body"]["integration"])


def test_js_list_integrations(integrations: dict[str, Any]) -> None:
    """listIntegrations gets an array of IntegrationInfo holding the new integration."""
    reply = integrations["listIntegrations"]
    assert (True, 200) == (reply["ok"], reply["statusCode"])
    created = integrations["createIntegration"]["body"]
    (listed,) = [i for i in reply["body"] if i["id"] == created["id"]]
    assert (created["event"], created["created_at"], "Webhook", created["url"], "POST") == (
        listed["event"],
        listed["created_at"],
        listed["integration_type"],
        listed["url"],
        listed["requestType"],
    )


def test_js_get_integration(integrations: dict[str, Any]) -> None:
    """
    GET /v1/integrations/:id through the library (12.0.3 has no getIntegration; particle.get) gets
    ``{integration: {..., logs: []}}``.
    """
    reply = integrations["getIntegration"]
    assert (True, 200) == (reply["ok"], reply["statusCode"])
    integration = reply["body"]["integration"]
    assert (integrations["createIntegration"]["body"]["id"], []) == (integration["id"], integration["logs"])


def test_js_edit_integration(integrations: dict[str, Any]) -> None:
    """
    editIntegration (PUT, ``{event, ...settings}``) replaces the whole configuration: the form, headers,
    response topic and device filter not given again are gone.
    """
    reply = integrations["editIntegration"]
    assert (True, 200) == (reply["ok"], reply["statusCode"])
    created = integrations["createIntegration"]["body"]
    edited = {
        "event": "js/int-edited",
        "url": f"{DEAD_TARGET}/edited",
        "requestType": "GET",
        "integration_type": "Webhook",
        **DEFAULT_FLAGS,
    }
    assert edited == settings(reply["body"]["integration"])
    after = integrations["getAfterEdit"]["body"]["integration"]
    assert (created["id"], created["created_at"]) == (after["id"], after["created_at"])
    assert edited == settings(after)


def test_js_delete_integration(integrations: dict[str, Any], owner_api: httpx.Client) -> None:
    """deleteIntegration gets 204 (the library makes it an empty body); the integration is gone."""
    integration_id = integrations["createIntegration"]["body"]["id"]
    reply = integrations["deleteIntegration"]
    assert (True, 204, {}) == (reply["ok"], reply["statusCode"], reply["body"])
    gone = integrations["getAfterDelete"]
    assert (False, 404, "Integration not found") == (gone["ok"], gone["statusCode"], gone["message"])
    assert integration_id not in {i["id"] for i in integrations["listAfterDelete"]["body"]}
    assert integration_id not in hook_ids(owner_api)


def test_js_create_unsupported_integration(integrations: dict[str, Any]) -> None:
    """Another integration type (Azure IoT Hub) rejects with 400 and says this server does not support it."""
    refused = integrations["createUnsupported"]
    assert (False, 400, "integration_type_not_supported") == (
        refused["ok"],
        refused["statusCode"],
        refused["body"]["error"],
    )
    assert "not supported by this server" in refused["message"]
