"""
Cloud compile through the configured backend (a stand-in toolchain here): ``POST /v1/binaries``, downloading
the binary, flashing sources, compile errors; and ``GET /v1/build_targets``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.devices import connect_device, wait_until

from devicecloud.domain.firmware import parse_firmware
from devicecloud.runtime import Runtime
from devicecloud.virtualdevice.support import Backoff

FAKE_COMPILER = Path(__file__).resolve().parents[1] / "support" / "fake_compiler.py"
APP = b"void setup() {}\nvoid loop() {}\n"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    command = f"'{sys.executable}' '{FAKE_COMPILER}' {{sources}} {{output}} {{platform}} {{version}}"
    return {"compile_command": command}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


async def compile_app(
    client: httpx.AsyncClient, account: Account, source: bytes = APP, **form: str
) -> httpx.Response:
    return await client.post(
        "/v1/binaries",
        files={
            "file": ("app.ino", source, "text/plain"),
            "file2": ("lib/util.h", b"// util\n", "text/plain"),
        },
        data={"platform_id": "6", **form},
        headers=account.auth,
    )


async def test_compile_then_download(client: httpx.AsyncClient, ada: Account) -> None:
    reply = await compile_app(client, ada, build_target_version="2.3.0")
    assert 200 == reply.status_code, reply.text
    body = reply.json()
    assert (True, "2.3.0", f"/v1/binaries/{body['binary_id']}") == (
        body["ok"],
        body["build_target_version"],
        body["binary_url"],
    )
    assert body["expires_at"].endswith("Z")
    download = await client.get(body["binary_url"], headers=ada.auth)
    assert (200, "application/octet-stream") == (download.status_code, download.headers["content-type"])
    module = parse_firmware(download.content).main
    assert module.platform_id == 6
    assert APP in download.content


async def test_binaries_are_their_owners_only(client: httpx.AsyncClient, ada: Account) -> None:
    bob = await make_account(client, "bob@example.com")
    url = (await compile_app(client, ada)).json()["binary_url"]
    for who, path in ((bob, url), (ada, "/v1/binaries/0123456789abcdef01234567"), (ada, "/v1/binaries/../x")):
        reply = await client.get(path, headers=who.auth)
        assert 404 == reply.status_code


async def test_a_compile_error_is_the_catalogue_body(client: httpx.AsyncClient, ada: Account) -> None:
    reply = await compile_app(client, ada, source=b"void setup() {}\n#error missing loop()\n")
    assert 400 == reply.status_code
    body = reply.json()
    assert (False, "Compiler timed out or encountered an error") == (body["ok"], body["output"])
    assert ["app.ino:2: error: missing loop()"] == body["errors"]


async def test_compile_needs_a_platform_and_files(client: httpx.AsyncClient, ada: Account) -> None:
    no_platform = await client.post(
        "/v1/binaries", files={"file": ("app.ino", APP, "text/plain")}, headers=ada.auth
    )
    assert (400, "platform_id is required: the platform to compile for") == (
        no_platform.status_code,
        no_platform.json()["error_description"],
    )
    no_files = await client.post("/v1/binaries", data={"platform_id": "6"}, headers=ada.auth)
    assert (400, "No source files were sent") == (no_files.status_code, no_files.json()["error_description"])


async def test_flashing_sources_compiles_for_the_device_and_flashes(
    client: httpx.AsyncClient, ada: Account, runtime: Runtime
) -> None:
    device = await connect_device(
        client, ada, runtime, reconnect=True, backoff=Backoff(0.01, 0.05, jitter=False)
    )
    try:
        reply = await client.put(
            f"/v1/devices/{device.device_id}",
            files={"file": ("app.ino", APP, "text/plain")},
            data={"latest": "true"},
            headers=ada.auth,
        )
        assert 200 == reply.status_code, reply.text
        assert {"ok": True, "message": "Update started"} == reply.json()
        await device.wait_connected(10)

        async def flashed() -> bool:
            return device.firmware is not None

        await wait_until(flashed)
        assert device.firmware is not None
        assert APP in device.firmware
    finally:
        await device.stop()


async def test_build_targets_list_the_releases_the_server_knows(
    client: httpx.AsyncClient, ada: Account
) -> None:
    body = (await client.get("/v1/build_targets", headers=ada.auth)).json()
    assert {"Photon": 6, "P1": 8, "Electron": 10} == body["platforms"]
    versions = {t["version"]: t for t in body["targets"]}
    assert {
        "platforms": [6, 8, 10],
        "prereleases": [],
        "firmware_vendor": "Particle",
        "version": "2.3.0",
    } == versions["2.3.0"]
    assert ([], [6, 8, 10]) == (versions["1.5.0-rc.1"]["platforms"], versions["1.5.0-rc.1"]["prereleases"])
    assert "0.7.0" in versions
    newest_final = next(t["version"] for t in body["targets"] if t["platforms"])
    assert {"6": newest_final, "8": newest_final, "10": newest_final} == body["default_versions"]
    assert 400 == (await client.get("/v1/build_targets")).status_code  # no token
