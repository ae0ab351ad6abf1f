"""
The library registry (catalogue §13) over HTTP: upload, visibility, publish, lists and their parameters,
versions, download through ``links.download``, delete, and ownership.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.libraries import library_archive, library_files, unpack, upload

from devicecloud.runtime import Runtime


def attributes(reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code in (200, 201), reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data["attributes"]


async def names(client: httpx.AsyncClient, account: Account, **params: str) -> list[str]:
    reply = await client.get("/v1/libraries", params=params, headers=account.auth)
    assert 200 == reply.status_code, reply.text
    return [item["id"] for item in reply.json()["data"]]


def archive_files(runtime: Runtime) -> list[str]:
    root = runtime.settings.data_dir / "libraries"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_upload_is_private_until_published(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    created = await upload(
        client, ada, library_archive("Blinker", "1.0.0", license="MIT", architectures="photon")
    )
    assert 201 == created.status_code, created.text
    data = created.json()["data"]
    assert ("libraries", "Blinker") == (data["type"], data["id"])
    assert {
        "name": "Blinker",
        "version": "1.0.0",
        "installs": 0,
        "license": "MIT",
        "author": "Ada <ada@example.com>",
        "sentence": "A test library",
        "url": "",
        "repository": "",
        "architectures": ["photon"],
        "visibility": "private",
        "official": False,
        "mine": True,
        "verified": False,
    } == data["attributes"]
    assert data["links"]["download"].startswith("http://testserver/v1/library-archives/")
    assert data["links"]["download"].endswith("/Blinker-1.0.0.tar.gz")

    # Private: the owner sees it, nobody else does (as if it did not exist).
    assert ["Blinker"] == await names(client, ada)
    assert [] == await names(client, bob)
    missing = await client.get("/v1/libraries/blinker", headers=bob.auth)
    assert 404 == missing.status_code
    assert [{"message": "Library blinker not found"}] == missing.json()["errors"]
    assert "private" == attributes(await client.get("/v1/libraries/BLINKER", headers=ada.auth))["visibility"]
    assert (
        404
        == (
            await client.patch("/v1/libraries/Blinker", json={"visibility": "public"}, headers=bob.auth)
        ).status_code
    )

    published = await client.patch("/v1/libraries/blinker", data={"visibility": "public"}, headers=ada.auth)
    assert ("public", "1.0.0") == (attributes(published)["visibility"], attributes(published)["version"])
    seen = await client.get("/v1/libraries/Blinker", headers=bob.auth)
    assert (False, "public") == (attributes(seen)["mine"], attributes(seen)["visibility"])
    assert ["Blinker"] == await names(client, bob)

    # A new private version: the owner sees it, everyone else still the public one.
    assert 201 == (await upload(client, ada, library_archive("Blinker", "1.1.0"))).status_code
    assert "1.1.0" == attributes(await client.get("/v1/libraries/Blinker", headers=ada.auth))["version"]
    assert "1.0.0" == attributes(await client.get("/v1/libraries/Blinker", headers=bob.auth))["version"]
    assert (
        404
        == (
            await client.get("/v1/libraries/Blinker", params={"version": "1.1.0"}, headers=bob.auth)
        ).status_code
    )
    got = await client.get("/v1/libraries/Blinker", params={"version": "1.1.0"}, headers=ada.auth)
    assert "private" == attributes(got)["visibility"]
    public_only = await client.get("/v1/libraries/Blinker", params={"scope": "public"}, headers=ada.auth)
    assert "1.0.0" == attributes(public_only)["version"]

    versions = await client.get("/v1/libraries/Blinker/versions", headers=ada.auth)
    assert [("1.0.0", "public"), ("1.1.0", "private")] == [
        (v["attributes"]["version"], v["attributes"]["visibility"]) for v in versions.json()["data"]
    ]
    theirs = await client.get("/v1/libraries/Blinker/versions", headers=bob.auth)
    assert ["1.0.0"] == [v["attributes"]["version"] for v in theirs.json()["data"]]

    # Someone else may not add versions to, publish or delete another's library.
    taken = await upload(client, bob, library_archive("BLINKER", "9.0.0"))
    assert 403 == taken.status_code
    assert [{"message": "You are not an owner of library Blinker"}] == taken.json()["errors"]
    assert (
        403
        == (
            await client.patch("/v1/libraries/Blinker", json={"visibility": "public"}, headers=bob.auth)
        ).status_code
    )
    assert 403 == (await client.delete("/v1/libraries/Blinker", headers=bob.auth)).status_code


async def test_versions_must_grow(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ada = await make_account(client, "ada@example.com")
    assert 201 == (await upload(client, ada, library_archive("Grow", "1.0.2"))).status_code
    for version in ("1.0.2", "1.0.1", "0.9.9"):
        refused = await upload(client, ada, library_archive("Grow", version))
        assert 400 == refused.status_code
        message = "This version is not valid. Version must be greater than 1.0.2"
        assert [{"message": message}] == refused.json()["errors"]
        assert (False, message) == (refused.json()["ok"], refused.json()["error_description"])
    assert 201 == (await upload(client, ada, library_archive("Grow", "1.0.10"))).status_code
    assert 2 == len(archive_files(runtime))
    # The name in the path must be the archive's.
    wrong = await upload(client, ada, library_archive("Grow", "2.0.0"), path="/v1/libraries/Other")
    assert 400 == wrong.status_code
    right = await upload(
        client, ada, library_archive("Grow", "2.0.0"), path="/v1/libraries/grow", field="file"
    )
    assert "2.0.0" == attributes(right)["version"]


async def test_download_link_serves_the_checked_files_without_a_token(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    link = (await upload(client, ada, library_archive("Fetch", "0.1.0"))).json()["data"]["links"]["download"]
    path = link.removeprefix("http://testserver")
    archive = await client.get(path)
    assert 200 == archive.status_code
    assert "application/gzip" == archive.headers["content-type"]
    assert library_files("Fetch", "0.1.0") == unpack(archive.content)
    assert 1 == attributes(await client.get("/v1/libraries/Fetch", headers=ada.auth))["installs"]
    # The key is the capability: a wrong key or file name is a 404, and so is a deleted library's archive.
    key = path.split("/")[3]
    assert 404 == (await client.get(path.replace(key, "0" * 32))).status_code
    assert 404 == (await client.get(path.replace("Fetch-0.1.0", "Fetch-0.2.0"))).status_code
    assert 404 == (await client.get(path.replace("Fetch-0.1.0", "Fétch-0.1.0"))).status_code
    assert 404 == (await client.get(f"/v1/library-archives/{'é' * 40}/x.tar.gz")).status_code
    deleted = await client.delete("/v1/libraries/Fetch", headers=ada.auth)
    assert {"ok": True} == deleted.json()
    assert 404 == (await client.get(path)).status_code


async def test_delete_private_library_only(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ada = await make_account(client, "ada@example.com")
    await upload(client, ada, library_archive("Gone", "1.0.0"))
    await upload(client, ada, library_archive("Gone", "1.0.1"))
    await upload(client, ada, library_archive("Kept", "1.0.0"))
    await client.patch("/v1/libraries/Kept", json={"visibility": "public"}, headers=ada.auth)
    assert 3 == len(archive_files(runtime))
    assert 200 == (await client.delete("/v1/libraries/gone", headers=ada.auth)).status_code
    assert 404 == (await client.get("/v1/libraries/Gone", headers=ada.auth)).status_code
    assert 1 == len(archive_files(runtime))
    refused = await client.delete("/v1/libraries/Kept", headers=ada.auth)
    assert 400 == refused.status_code
    assert "public and cannot be deleted" in refused.json()["errors"][0]["message"]
    forced = await client.request("DELETE", "/v1/libraries/Kept", json={"force": "key"}, headers=ada.auth)
    assert 400 == forced.status_code
    assert ["Kept"] == await names(client, ada)
    # The name is free again once deleted.
    bob = await make_account(client, "bob@example.com")
    assert 201 == (await upload(client, bob, library_archive("Gone", "0.0.1"))).status_code


async def test_list_parameters(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    for name, arch in (("alpha-led", "photon"), ("Beta_led", "argon,boron"), ("gamma", "*")):
        await upload(client, ada, library_archive(name, "1.0.0", architectures=arch))
        await client.patch(f"/v1/libraries/{name}", json={"visibility": "public"}, headers=ada.auth)
    await upload(client, ada, library_archive("delta", "1.0.0"))  # private
    await upload(client, bob, library_archive("bobs", "1.0.0"))
    await client.patch("/v1/libraries/bobs", json={"visibility": "public"}, headers=bob.auth)

    assert ["alpha-led", "Beta_led", "bobs", "delta", "gamma"] == await names(client, ada, sort="name")
    assert ["gamma", "delta", "bobs", "Beta_led", "alpha-led"] == await names(client, ada, sort="-name")
    assert ["alpha-led", "Beta_led", "bobs", "gamma"] == await names(client, bob, sort="name")
    assert ["alpha-led", "Beta_led"] == await names(client, ada, filter="LED", sort="name")
    assert ["Beta_led"] == await names(client, ada, filter="a_l")  # _ is no wildcard
    assert ["alpha-led", "Beta_led", "delta", "gamma"] == await names(client, ada, scope="mine", sort="name")
    assert ["delta"] == await names(client, ada, scope="private")
    assert ["alpha-led", "Beta_led", "bobs", "gamma"] == await names(client, ada, scope="public", sort="name")
    assert ["bobs"] == await names(client, ada, scope="public", excludeScopes="mine", sort="name")
    assert [] == await names(client, ada, scope="official")
    assert ["Beta_led", "bobs", "delta", "gamma"] == await names(
        client, ada, architectures="boron", sort="name"
    )
    assert ["alpha-led", "Beta_led", "bobs", "delta", "gamma"] == await names(
        client, ada, architectures="photon,argon", sort="name"
    )
    assert ["alpha-led", "Beta_led"] == await names(client, ada, sort="name", limit="2")
    assert ["bobs", "delta"] == await names(client, ada, sort="name", limit="2", page="2")
    assert [] == await names(client, ada, sort="name", limit="2", page="4")

    # Popularity (the default, most installed first) follows downloads.
    link = (await client.get("/v1/libraries/gamma", headers=ada.auth)).json()["data"]["links"]["download"]
    await client.get(link.removeprefix("http://testserver"))
    assert "gamma" == (await names(client, bob))[0]

    for bad in (
        {"scope": "everything"},
        {"limit": "101"},
        {"limit": "0"},
        {"page": "x"},
        {"sort": "size"},
        {"excludeScopes": "all,nope"},
        {"architectures": "pho%ton"},
        {"category": "Sensors"},
    ):
        refused = await client.get("/v1/libraries", params=bad, headers=ada.auth)
        assert 400 == refused.status_code, bad
        assert refused.json()["errors"][0]["message"]


async def test_publish_needs_public_visibility(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    await upload(client, ada, library_archive("Pub", "1.0.0"))
    for body in ({}, {"visibility": "private"}, {"visibility": "hidden"}):
        refused = await client.patch("/v1/libraries/Pub", json=body, headers=ada.auth)
        assert 400 == refused.status_code
    assert "private" == attributes(await client.get("/v1/libraries/Pub", headers=ada.auth))["visibility"]
    once = await client.patch("/v1/libraries/Pub", json={"visibility": "public"}, headers=ada.auth)
    twice = await client.patch("/v1/libraries/Pub", json={"visibility": "public"}, headers=ada.auth)
    assert attributes(once) == attributes(twice)
    assert (
        404
        == (
            await client.patch("/v1/libraries/Nope", json={"visibility": "public"}, headers=ada.auth)
        ).status_code
    )


@pytest.mark.parametrize("path", ["/v1/libraries", "/v1/libraries/x", "/v1/libraries/x/versions"])
async def test_token_required(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.get(path)
    assert 400 == reply.status_code
    assert "invalid_request" == reply.json()["error"]


async def test_a_deleted_owner_leaves_public_libraries(client: httpx.AsyncClient) -> None:
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    await upload(client, ada, library_archive("Lasting", "1.0.0"))
    await client.patch("/v1/libraries/Lasting", json={"visibility": "public"}, headers=ada.auth)
    await upload(client, ada, library_archive("Hidden", "1.0.0"))
    deleted = await client.request("DELETE", "/v1/user", json={"password": ada.password}, headers=ada.auth)
    assert 200 == deleted.status_code, deleted.text
    assert ["Lasting"] == await names(client, bob)
    assert 403 == (await upload(client, bob, library_archive("Lasting", "2.0.0"))).status_code


async def test_the_catalogues_curl_forms(client: httpx.AsyncClient) -> None:
    """``curl -F archive=@… '/v1/libraries?access_token=…'`` and ``curl -X PATCH -d visibility=public …``."""
    ada = await make_account(client, "ada@example.com")
    created = await client.post(
        "/v1/libraries",
        params={"access_token": ada.token},
        files={"archive": ("library.tar.gz", library_archive("testlib43", "1.0.2"))},
    )
    assert ("testlib43", "private") == (created.json()["data"]["id"], attributes(created)["visibility"])
    published = await client.patch(
        "/v1/libraries/testlib43", params={"access_token": ada.token}, data={"visibility": "public"}
    )
    assert "public" == attributes(published)["visibility"]
    # A token in a multipart body is refused with the catalogue's words, before anything is stored.
    in_body = await client.post(
        "/v1/libraries",
        data={"access_token": ada.token},
        files={"archive": ("library.tar.gz", library_archive("testlib43", "1.0.3"))},
    )
    assert 400 == in_body.status_code
    assert "content type must be application/x-www-form-urlencoded" in in_body.json()["error_description"]
    assert "1.0.2" == attributes(await client.get("/v1/libraries/testlib43", headers=ada.auth))["version"]


async def test_sorts_by_time(client: httpx.AsyncClient, clock: FakeClock) -> None:
    ada = await make_account(client, "ada@example.com")
    for name in ("aa", "bb", "cc"):
        await upload(client, ada, library_archive(name, "1.0.0"))
        clock.advance(60)
    for name in ("cc", "aa"):
        await client.patch(f"/v1/libraries/{name}", json={"visibility": "public"}, headers=ada.auth)
        clock.advance(60)
    await upload(client, ada, library_archive("bb", "1.1.0"))
    assert ["aa", "bb", "cc"] == await names(client, ada, sort="created")
    assert ["cc", "bb", "aa"] == await names(client, ada, sort="-created")
    assert ["cc", "aa", "bb"] == await names(client, ada, sort="published")  # never published: last
    assert ["aa", "cc", "bb"] == await names(client, ada, sort="-published")
    assert ["aa", "cc", "bb"] == await names(client, ada, sort="updated")
    assert ["bb", "cc", "aa"] == await names(client, ada, sort="-updated")


async def test_version_scopes(client: httpx.AsyncClient) -> None:
    """Publishing makes only the latest version public: an older private one stays the owner's."""
    ada = await make_account(client, "ada@example.com")
    bob = await make_account(client, "bob@example.com")
    await upload(client, ada, library_archive("Scoped", "1.0.0"))
    await upload(client, ada, library_archive("Scoped", "1.1.0"))
    await client.patch("/v1/libraries/Scoped", json={"visibility": "public"}, headers=ada.auth)

    async def version(account: Account, **params: str) -> str | int:
        reply = await client.get("/v1/libraries/Scoped", params=params, headers=account.auth)
        return str(attributes(reply)["version"]) if reply.status_code == 200 else reply.status_code

    async def listed(account: Account, **params: str) -> list[str] | int:
        reply = await client.get("/v1/libraries/Scoped/versions", params=params, headers=account.auth)
        if reply.status_code != 200:
            return reply.status_code
        return [item["attributes"]["version"] for item in reply.json()["data"]]

    assert ("1.1.0", "1.1.0", "1.0.0") == (
        await version(ada),
        await version(ada, scope="public"),
        await version(ada, scope="private"),
    )
    assert ("1.1.0", 404, 404) == (
        await version(bob),
        await version(bob, scope="private"),
        await version(bob, version="1.0.0"),
    )
    assert (["1.0.0", "1.1.0"], ["1.1.0"], ["1.0.0"]) == (
        await listed(ada),
        await listed(ada, scope="public"),
        await listed(ada, scope="private"),
    )
    assert (["1.1.0"], 404) == (await listed(bob), await listed(bob, scope="private"))
    assert ([], 400, 400) == (
        await listed(ada, page="2"),
        await listed(ada, scope="mine"),
        await version(ada, version="1.0"),
    )
