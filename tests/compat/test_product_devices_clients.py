"""
Product devices with the official clients, unchanged, against a running devicecloud (issue 11 sections 3
and 7): particle-api-js's addDeviceToProduct (an id, a file), listDevices with a product and filters,
getDevice, removeDevice (and deny) and removeDeviceOwner with a product; particle-cli's ``product device
add|list|remove``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import NodeFlow
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat


def did(n: int) -> str:
    return f"{n:024x}"


@pytest.fixture(scope="module")
def product(server: LiveServer) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        login = http.post(
            "/oauth/token",
            data={"grant_type": "password", "username": server.email, "password": server.password},
            auth=("particle", "particle"),
        )
        created = http.post(
            "/v1/products",
            json={"name": "Brew Bot", "platform_id": 6},
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
        )
    assert created.status_code == 201, created.text
    return dict(created.json()["product"])


def test_particle_api_js_product_device_calls(
    node_dir: Path, server: LiveServer, product: dict[str, Any]
) -> None:
    """Import by id and by file, list with filters and pages, get, remove, deny: as the clients read them."""
    first, second, third = did(0xA1), did(0xB2), did(0xC3)
    out = NodeFlow(node_dir, server, "product_devices_flow.js")(
        "owner", product["slug"], first, second, third
    )
    assert out["addOne"]["body"]["updatedDeviceIds"] == [first]
    added = out["addFile"]["body"]
    assert (added["updatedDeviceIds"], added["existingDeviceIds"], added["invalidDeviceIds"]) == (
        [second, third],
        [first],
        ["not-a-device"],
    )
    listed = out["listAll"]["body"]
    assert [d["id"] for d in listed["devices"]] == [first, second, third]
    assert listed["meta"]["total_pages"] == 1
    page = out["listPage"]["body"]
    assert ([d["id"] for d in page["devices"]], page["meta"]["total_pages"]) == ([third], 2)
    assert [d["id"] for d in out["listById"]["body"]["devices"]] == [second]
    assert out["listGroups"]["body"]["devices"] == []
    device = out["getDevice"]["body"]
    assert (device["id"], device["product_id"], device["quarantined"], device["groups"]) == (
        first,
        product["id"],
        False,
        [],
    )
    assert (out["remove"]["ok"], out["remove"]["statusCode"]) == (True, 204)
    assert (out["deny"]["ok"], out["deny"]["statusCode"]) == (True, 204)
    assert (out["getRemoved"]["ok"], out["getRemoved"]["statusCode"]) == (False, 404)
    assert out["getDenied"]["body"]["denied"] is True
    assert out["claim"]["ok"] is True
    assert out["removeOwner"]["body"] == {"ok": True}
    assert out["getReleased"]["body"]["owner"] is None


def test_particle_cli_product_device_add_list_remove(
    node_dir: Path, server: LiveServer, product: dict[str, Any], tmp_path: Path
) -> None:
    """particle product device add (an id, --file), list (--json), remove."""
    env = {**os.environ, "HOME": str(tmp_path), "NO_COLOR": "1", "FORCE_COLOR": "0"}
    binary = str(node_dir / "node_modules" / ".bin" / "particle")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    assert cli("config", "local", "apiUrl", server.url).returncode == 0
    assert cli("config", "local").returncode == 0
    login = cli("login", "--username", server.email, "--password", server.password)
    assert login.returncode == 0, login.stdout + login.stderr
    slug = product["slug"]
    one = cli("product", "device", "add", slug, did(0xD4))
    assert one.returncode == 0, one.stdout + one.stderr
    assert did(0xD4) in one.stdout
    listing = tmp_path / "devices.txt"
    listing.write_text(f"{did(0xE5)}\n{did(0xF6)}\nbogus\n")
    many = cli("product", "device", "add", slug, "--file", str(listing))
    assert many.returncode == 0, many.stdout + many.stderr
    assert "Skipped Invalid IDs:" in many.stdout
    assert "bogus" in many.stdout
    listed = cli("product", "device", "list", slug, "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    ids = {d["id"] for d in json.loads(listed.stdout)["data"]}
    assert {did(0xD4), did(0xE5), did(0xF6)} <= ids
    removed = cli("product", "device", "remove", slug, did(0xD4))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert f"Removed device {did(0xD4)}" in removed.stdout
    after = cli("product", "device", "list", slug, "--json")
    assert did(0xD4) not in {d["id"] for d in json.loads(after.stdout)["data"]}
