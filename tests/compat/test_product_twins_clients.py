"""
The official clients' product twins (issue 11 sections 4 and 7), unchanged, against a running devicecloud:
particle-cli ``subscribe --product`` and ``publish --product``; particle-api-js getEventStream and
publishEvent with a product, createWebhook/listWebhooks/deleteWebhook, createIntegration/listIntegrations/
deleteIntegration and the OAuth client calls with a product (node/product_twins_flow.js).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import NodeFlow
from tests.compat.test_events_clients import Stream, particle
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def product(owner_api: httpx.Client) -> dict[str, Any]:
    created = owner_api.post("/v1/products", json={"name": "Twin Bot", "platform_id": 6})
    assert created.status_code == 201, created.text
    return dict(created.json()["product"])


def publish_for(api: httpx.Client, product: dict[str, Any], name: str) -> None:
    reply = api.post(f"/v1/products/{product['slug']}/events", json={"name": name, "data": "d"})
    assert (reply.status_code, reply.json()) == (200, {"ok": True})


@pytest.fixture(scope="module")
def calls(node_dir: Path, server: LiveServer, product: dict[str, Any]) -> dict[str, Any]:
    return NodeFlow(node_dir, server, "product_twins_flow.js")(
        "calls", product["slug"], "http://127.0.0.1:9/in"
    )


def test_js_publish_event_with_product(calls: dict[str, Any]) -> None:
    assert (calls["publish"]["statusCode"], calls["publish"]["body"]) == (200, {"ok": True})


def test_js_webhooks_with_product(calls: dict[str, Any], product: dict[str, Any]) -> None:
    created = calls["createWebhook"]
    assert (created["statusCode"], created["body"]["ok"], created["body"]["event"]) == (201, True, "js/hook")
    assert [hook["event"] for hook in calls["listWebhooks"]["body"]] == ["js/hook"]
    assert (calls["deleteWebhook"]["ok"], calls["deleteWebhook"]["body"]) == (True, {"ok": True})


def test_js_integrations_with_product(calls: dict[str, Any]) -> None:
    created = calls["createIntegration"]
    assert (created["statusCode"], created["body"]["event"]) == (201, "js/int")
    assert [hook["event"] for hook in calls["listIntegrations"]["body"]] == ["js/int"]
    assert (calls["deleteIntegration"]["ok"], calls["deleteIntegration"]["statusCode"]) == (True, 204)


def test_js_oauth_clients_with_product(calls: dict[str, Any], product: dict[str, Any]) -> None:
    made = calls["createClient"]["body"]["client"]
    assert (made["name"], made["type"], made["product_id"]) == ("JS server", "installed", product["id"])
    assert len(made["secret"]) == 40
    assert calls["updateClient"]["body"]["client"]["name"] == "JS renamed"
    assert [c["name"] for c in calls["listClients"]["body"]["clients"]] == ["JS renamed"]
    assert calls["deleteClient"]["statusCode"] == 204
    assert calls["listClientsAfter"]["body"] == {"ok": True, "clients": []}


def test_js_get_event_stream_with_product(
    node_dir: Path, server: LiveServer, owner_api: httpx.Client, product: dict[str, Any]
) -> None:
    flow = NodeFlow(node_dir, server, "product_twins_flow.js")
    process = subprocess.Popen(
        [*flow.command, "stream", str(product["id"]), "js/stream", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready == "READY\n", ready + (process.stderr.read() if process.stderr else "")
        for name in ("js/stream/1", "other", "js/stream/2"):
            publish_for(owner_api, product, name)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    events = json.loads(out)["events"]
    assert [e["name"] for e in events] == ["js/stream/1", "js/stream/2"]
    assert {e["productID"] for e in events} == {product["id"]}


# ---------------------------------------------------------------- particle-cli


@pytest.fixture(scope="module")
def cli_home(node_dir: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A particle-cli profile on the server, logged in as the owner."""
    home = tmp_path_factory.mktemp("cli-product-home")
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}
    for args in (("config", "local", "apiUrl", server.url), ("config", "local")):
        assert (
            subprocess.run([particle(node_dir), *args], env=env, capture_output=True, timeout=60).returncode
            == 0
        )
    login = subprocess.run(
        [particle(node_dir), "login", "--username", server.email, "--password", server.password],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stdout + login.stderr
    return env


def test_cli_subscribe_product(
    node_dir: Path, cli_home: dict[str, str], owner_api: httpx.Client, product: dict[str, Any]
) -> None:
    """
    ``particle subscribe NAME --product P --max 1`` prints an event of the product's stream. It runs until
    an event arrives, so the test publishes for the product until the CLI has one.
    """
    process = subprocess.Popen(
        [particle(node_dir), "subscribe", "cli/prod", "--product", product["slug"], "--max", "1"],
        env=cli_home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            publish_for(owner_api, product, "cli/prod")
            time.sleep(0.3)  # the CLI's subscription is not observable from here: publish until it answers
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=10)
    assert process.returncode == 0, out + err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["name"], e["data"], e["coreid"], e["productID"]) for e in lines] == [
        ("cli/prod", "d", "api", product["id"])
    ]
    assert f"from product {product['slug']}'s stream" in out


def test_cli_publish_product(
    node_dir: Path, cli_home: dict[str, str], owner_api: httpx.Client, product: dict[str, Any]
) -> None:
    """``particle publish NAME DATA --product P`` publishes an event the product's stream receives."""
    stream = Stream(owner_api, f"/v1/products/{product['id']}/events/cli%2Fpub")
    try:
        result = subprocess.run(
            [particle(node_dir), "publish", "cli/pub", "42", "--product", product["slug"]],
            env=cli_home,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        name, data = stream.event()
    finally:
        stream.close()
    assert (name, data["data"], data["coreid"], data["productID"]) == ("cli/pub", "42", "api", product["id"])
