"""
``devicecloud libraries mark``: an operator marks libraries official or verified; the API's scopes and
attributes follow.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from tests.support.api import make_account
from tests.support.libraries import library_archive, upload

from devicecloud.cli import main
from devicecloud.runtime import Runtime


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


async def cli(runtime: Runtime, *args: str) -> Result:
    env = {
        "DEVICECLOUD_DATA_DIR": str(runtime.settings.data_dir),
        "DEVICECLOUD_DATABASE_URL": runtime.settings.effective_database_url,
    }
    return await asyncio.to_thread(CliRunner(env=env).invoke, main, list(args))


async def test_mark_official_and_verified(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ada = await make_account(client, "ada@example.com")
    for name in ("neopixel", "draft"):
        await upload(client, ada, library_archive(name, "1.0.0"))
    await client.patch("/v1/libraries/neopixel", json={"visibility": "public"}, headers=ada.auth)

    marked = await cli(runtime, "libraries", "mark", "NeoPixel", "--official", "--verified")
    assert 0 == marked.exit_code, marked.output
    assert "neopixel\tofficial=yes\tverified=yes\n" == marked.output
    for scope in ("official", "verified"):
        listed = await client.get("/v1/libraries", params={"scope": scope}, headers=ada.auth)
        assert ["neopixel"] == [item["id"] for item in listed.json()["data"]]
    got = (await client.get("/v1/libraries/neopixel", headers=ada.auth)).json()["data"]["attributes"]
    assert (True, True) == (got["official"], got["verified"])

    # A private library marked official stays out of the official scope until it is published.
    assert 0 == (await cli(runtime, "libraries", "mark", "draft", "--official")).exit_code
    listed = await client.get("/v1/libraries", params={"scope": "official", "sort": "name"}, headers=ada.auth)
    assert ["neopixel"] == [item["id"] for item in listed.json()["data"]]

    unmarked = await cli(runtime, "libraries", "mark", "neopixel", "--not-verified")
    assert "neopixel\tofficial=yes\tverified=no\n" == unmarked.output
    assert (
        []
        == (await client.get("/v1/libraries", params={"scope": "verified"}, headers=ada.auth)).json()["data"]
    )

    missing = await cli(runtime, "libraries", "mark", "nothing", "--official")
    assert 1 == missing.exit_code
    assert "Library nothing not found" in missing.output
