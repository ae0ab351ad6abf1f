"""
A product's customer app flow with particle-api-js, unchanged, against a running devicecloud and virtual
devices (issue 11 section 6 acceptance): createCustomer with the product client's credentials, getClaimCode
with the product, a product device presents the code and becomes the customer's, and the customer lists and
calls only its own device; getEventStream with the customer's token carries its own device's events and
not another device's of the product (decision 0032).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import DeviceRunner, NodeFlow, wait_for
from tests.support.server import LiveServer

from devicecloud.virtualdevice import VirtualDevice, generate_identity

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def product(owner_api: httpx.Client) -> dict[str, Any]:
    created = owner_api.post("/v1/products", json={"name": "Kettle Co", "platform_id": 6})
    assert created.status_code == 201, created.text
    return dict(created.json()["product"])


@pytest.fixture(scope="module")
def app_client(owner_api: httpx.Client, product: dict[str, Any]) -> dict[str, Any]:
    made = owner_api.post(
        f"/v1/products/{product['slug']}/clients", json={"name": "Kettle app", "type": "installed"}
    )
    assert made.status_code == 200, made.text
    return dict(made.json()["client"])


def product_device(runner: DeviceRunner, owner_api: httpx.Client, product: dict[str, Any]) -> VirtualDevice:
    """A device whose key the owner registered, imported into the product, connected, owned by nobody."""
    identity = generate_identity()
    sent = owner_api.post(
        f"/v1/provisioning/{identity.device_id}",
        json={"deviceID": identity.device_id, "publicKey": identity.public_key_pem(), "algorithm": "rsa"},
    )
    assert sent.status_code == 200, sent.text
    imported = owner_api.post(f"/v1/products/{product['slug']}/devices", json={"id": identity.device_id})
    assert imported.status_code == 200, imported.text
    return runner.connect(identity)


def test_customer_app_flow(
    node_dir: Path,
    server: LiveServer,
    device_runner: DeviceRunner,
    owner_api: httpx.Client,
    product: dict[str, Any],
    app_client: dict[str, Any],
) -> None:
    flow = NodeFlow(node_dir, server, "customers_flow.js")
    made = flow("create", product["slug"], app_client["id"], app_client["secret"], "jane@example.com")
    created = made["createCustomer"]
    assert (created["ok"], created["statusCode"]) == (True, 201), created
    token = created["body"]["access_token"]
    assert (created["body"]["token_type"], len(token)) == ("bearer", 40)
    assert (made["createAgain"]["ok"], made["createAgain"]["statusCode"]) == (False, 400)
    claim = made["getClaimCode"]
    assert (claim["ok"], claim["body"]["device_ids"]) == (True, []), claim
    mine = product_device(device_runner, owner_api, product)
    other = product_device(device_runner, owner_api, product)
    device_runner.run(mine.publish("spark/device/claim/code", claim["body"]["claim_code"], private=True))

    def claimed() -> bool:
        listed = owner_api.get(f"/v1/products/{product['slug']}/customers").json()["customers"]
        return [c["devices"] for c in listed] == [[mine.device_id]]

    wait_for(claimed)
    used = flow("use", token, mine.device_id, other.device_id)
    assert [d["id"] for d in used["listDevices"]["body"]] == [mine.device_id]
    assert used["getMine"]["body"]["id"] == mine.device_id
    assert (used["callMine"]["ok"], used["callMine"]["body"]["id"]) == (True, mine.device_id)
    assert used["readMine"]["body"]["result"] == 21.5
    for refused in ("getOther", "callOther"):
        assert (used[refused]["ok"], used[refused]["statusCode"]) == (False, 403), used[refused]


def test_customer_event_stream(
    node_dir: Path,
    server: LiveServer,
    device_runner: DeviceRunner,
    owner_api: httpx.Client,
    product: dict[str, Any],
) -> None:
    """getEventStream (``mine`` and the device's id) with a customer's token gets its device's event only."""
    made = owner_api.post(
        f"/v1/products/{product['slug']}/customers",
        json={"email": "kim@example.com", "password": "customer passphrase"},
    )
    assert made.status_code == 201, made.text
    token = made.json()["access_token"]
    code = httpx.post(
        f"{server.url}/v1/products/{product['slug']}/device_claims",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert code.status_code == 200, code.text
    mine = product_device(device_runner, owner_api, product)
    other = product_device(device_runner, owner_api, product)
    device_runner.run(mine.publish("spark/device/claim/code", code.json()["claim_code"], private=True))

    def claimed() -> bool:
        listed = owner_api.get(f"/v1/products/{product['slug']}/customers").json()["customers"]
        return [mine.device_id] in [c["devices"] for c in listed if c["username"] == "kim@example.com"]

    wait_for(claimed)
    command = ["node", str(node_dir / "customers_flow.js"), server.url, server.email, server.password]
    process = subprocess.Popen(
        [*command, "stream", token, f"mine,{mine.device_id}", "kettle/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready == "READY\n", ready + (process.stderr.read() if process.stderr else "")
        device_runner.run(other.publish("kettle/other", "not kim's", private=True, with_ack=True))
        device_runner.run(mine.publish("kettle/mine", "kim's", private=True, with_ack=True))
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    events = json.loads(out)["events"]
    assert [(e["name"], e["data"], e["coreid"]) for e in events] == [
        ("kettle/mine", "kim's", mine.device_id)
    ] * 2
