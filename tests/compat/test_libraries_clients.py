"""
The official clients' library calls, unchanged, against a running devicecloud (issue 15 §3): particle-cli
``library create`` → ``upload`` → ``publish`` → ``search`` finds it → ``view`` and ``copy`` (and ``add``) on
another account get identical files; particle-api-js ``contributeLibrary``, ``getLibrary``,
``getLibraryVersions``, ``listLibraries``, ``publishLibrary``, ``deleteLibrary`` and ``downloadFile``
(node/libraries_flow.js). Each test checks what the client printed or returned, then the server's state over
HTTP.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.compat.conftest import NodeFlow
from tests.support.libraries import library_archive, library_files, unpack
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat
OTHER_EMAIL = "reader@example.com"
OTHER_PASSWORD = "reader password"


class CliRunner:
    """The particle binary with one profile (HOME), logged in to the server."""

    def __init__(self, node_dir: Path, home: Path) -> None:
        # particle-cli falls back to its own package folder when HOME does not exist: make sure it does.
        home.mkdir(parents=True, exist_ok=True)
        self.binary = str(node_dir / "node_modules" / ".bin" / "particle")
        self.env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}
        self.home = home

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

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        result = self(*args, cwd=cwd)
        assert 0 == result.returncode, result.stdout + result.stderr
        return result.stdout

    @classmethod
    def logged_in(
        cls, node_dir: Path, home: Path, server: LiveServer, email: str, password: str
    ) -> CliRunner:
        runner = cls(node_dir, home)
        runner.ok("config", "local", "apiUrl", server.url)
        runner.ok("config", "local")
        runner.ok("login", "--username", email, "--password", password)
        assert email in runner.ok("whoami")
        assert (home / ".particle" / "local.config.json").is_file()
        return runner


@pytest.fixture(scope="module")
def other_account(server: LiveServer) -> tuple[str, str]:
    created = httpx.post(f"{server.url}/v1/users", json={"username": OTHER_EMAIL, "password": OTHER_PASSWORD})
    assert 200 == created.status_code, created.text
    return OTHER_EMAIL, OTHER_PASSWORD


def api_as(server: LiveServer, email: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=30)
    reply = client.post(
        "/oauth/token",
        auth=("particle", "particle"),
        data={"grant_type": "password", "username": email, "password": password},
    )
    assert 200 == reply.status_code, reply.text
    client.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return client


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_create_upload_publish_search_view_copy(
    node_dir: Path,
    server: LiveServer,
    other_account: tuple[str, str],
    owner_api: httpx.Client,
    tmp_path: Path,
) -> None:
    author = CliRunner.logged_in(node_dir, tmp_path / "author-home", server, server.email, server.password)
    library = tmp_path / "cliblink"
    library.mkdir()
    author.ok("library", "create", "--name", "cliblink", "--version", "1.0.0", "--author", "Ada", cwd=library)
    properties = library / "library.properties"

    # The generated properties leave the sentence commented out: the server says what is missing.
    refused = author("library", "upload", cwd=library)
    assert "sentence can't be blank" in refused.stdout + refused.stderr
    assert [] == owner_api.get("/v1/libraries", params={"scope": "mine"}).json()["data"]

    text = properties.read_text().replace(
        "# sentence=one sentence description of this library", "sentence=Blinks"
    )
    properties.write_text(text.replace("# architectures=", "architectures=photon,argon\n# was: "))
    uploaded = author.ok("library", "upload", cwd=library)
    assert "Library cliblink was successfully uploaded." in uploaded
    stored = owner_api.get("/v1/libraries/cliblink").json()["data"]["attributes"]
    assert ("1.0.0", "private", "Blinks", ["photon", "argon"]) == (
        stored["version"],
        stored["visibility"],
        stored["sentence"],
        stored["architectures"],
    )
    again = author("library", "upload", cwd=library)
    assert "This version is not valid. Version must be greater than 1.0.0" in again.stdout + again.stderr

    reader = CliRunner.logged_in(node_dir, tmp_path / "reader-home", server, *other_account)
    assert "Found 0 libraries matching clib" in reader.ok("library", "search", "clib")

    assert "Library cliblink was successfully published." in author.ok("library", "publish", "cliblink")
    assert "public" == owner_api.get("/v1/libraries/cliblink").json()["data"]["attributes"]["visibility"]

    found = reader.ok("library", "search", "clib")
    assert "Found 1 library matching clib" in found
    assert "cliblink 1.0.0 0 Blinks" in found

    # view installs the library into the reader's community folder; copy vendors it into a project.
    original = tree(library)
    viewed = reader.ok("library", "view", "cliblink")
    installed = reader.home / "Particle" / "community" / "libraries" / "cliblink@1.0.0"
    assert str(installed) in viewed
    assert original == tree(installed)

    projects = tmp_path / "projects"
    projects.mkdir()
    reader.ok("project", "create", "--name", "blinky", str(projects))
    project = projects / "blinky"
    copied = reader.ok("library", "copy", "cliblink", cwd=project)
    assert "Library cliblink 1.0.0 installed." in copied
    assert original == tree(project / "lib" / "cliblink")

    reader.ok("library", "add", "cliblink", cwd=project)
    assert "dependencies.cliblink=1.0.0" in (project / "project.properties").read_text()
    # view and copy downloaded the archive; add only reads the metadata.
    assert 2 == owner_api.get("/v1/libraries/cliblink").json()["data"]["attributes"]["installs"]


def test_cli_cannot_publish_or_view_someone_elses_private_library(
    node_dir: Path,
    server: LiveServer,
    other_account: tuple[str, str],
    owner_api: httpx.Client,
    tmp_path: Path,
) -> None:
    created = owner_api.post(
        "/v1/libraries", files={"archive": ("a.tar.gz", library_archive("secretlib", "0.1.0"))}
    )
    assert 201 == created.status_code, created.text
    reader = CliRunner.logged_in(node_dir, tmp_path / "home", server, *other_account)
    published = reader("library", "publish", "secretlib")
    assert 0 != published.returncode
    assert "Library secretlib not found" in published.stdout + published.stderr
    viewed = reader("library", "view", "secretlib")
    assert 0 != viewed.returncode
    assert "private" == owner_api.get("/v1/libraries/secretlib").json()["data"]["attributes"]["visibility"]


def test_api_js_library_calls(
    node_dir: Path, server: LiveServer, other_account: tuple[str, str], tmp_path: Path
) -> None:
    archive = tmp_path / "jslib.tar.gz"
    archive.write_bytes(library_archive("jslib", "2.1.0", architectures="photon", license="MIT"))
    out: dict[str, Any] = NodeFlow(node_dir, server, "libraries_flow.js")("publish", str(archive), "jslib")

    assert (True, 201) == (out["contribute"]["ok"], out["contribute"]["statusCode"])
    data = out["contribute"]["body"]["data"]
    assert ("libraries", "jslib", "private", True) == (
        data["type"],
        data["id"],
        data["attributes"]["visibility"],
        data["attributes"]["mine"],
    )
    assert (False, 400) == (out["contributeAgain"]["ok"], out["contributeAgain"]["statusCode"])
    message = "This version is not valid. Version must be greater than 2.1.0"
    assert [{"message": message}] == out["contributeAgain"]["body"]["errors"]
    assert message == out["contributeAgain"]["message"]  # shortErrorDescription, from error_description
    assert message == out["clientContributeAgain"]["message"]  # the Client wrapper reads errors[].message
    assert "2.1.0" == out["getLibrary"]["body"]["data"]["attributes"]["version"]
    assert "public" == out["publish"]["body"]["data"]["attributes"]["visibility"]
    assert [("2.1.0", "public")] == [
        (v["attributes"]["version"], v["attributes"]["visibility"]) for v in out["versions"]["body"]["data"]
    ]
    assert ["jslib"] == [item["id"] for item in out["list"]["body"]["data"]]
    assert "jslib" in [item["id"] for item in out["listMine"]["body"]["data"]]
    assert library_files("jslib", "2.1.0", architectures="photon", license="MIT") == unpack(
        base64.b64decode(out["download"]["base64"])
    )
    link = out["publish"]["body"]["data"]["links"]["download"]
    assert [{"name": "jslib", "version": "2.1.0", "downloadUrl": link}] == out["clientLibraries"]
    assert {"name": "jslib", "visibility": "public", "downloadUrl": link} == out["clientLibrary"]

    email, password = other_account
    reader = NodeFlow(node_dir, server, "libraries_flow.js")
    reader.command[3:5] = [email, password]
    seen = reader("other", "jslib")
    assert (False, "public") == (
        seen["getLibrary"]["body"]["data"]["attributes"]["mine"],
        seen["getLibrary"]["body"]["data"]["attributes"]["visibility"],
    )
    assert ["jslib"] == [item["id"] for item in seen["list"]["body"]["data"]]
    assert (False, 403) == (seen["deleteLibrary"]["ok"], seen["deleteLibrary"]["statusCode"])
    assert out["download"]["base64"] == seen["download"]["base64"]


def test_api_js_delete_private_library(node_dir: Path, server: LiveServer, tmp_path: Path) -> None:
    archive = tmp_path / "gone.tar.gz"
    archive.write_bytes(library_archive("gonelib", "0.0.1"))
    out = NodeFlow(node_dir, server, "libraries_flow.js")("remove", str(archive), "gonelib")
    assert 201 == out["contribute"]["statusCode"]
    assert (True, {"ok": True}) == (out["deleteLibrary"]["ok"], out["deleteLibrary"]["body"])
    assert (False, 404) == (out["getAfterDelete"]["ok"], out["getAfterDelete"]["statusCode"])
    assert [{"message": "Library gonelib not found"}] == out["getAfterDelete"]["body"]["errors"]
    assert (False, 404) == (out["downloadAfterDelete"]["ok"], out["downloadAfterDelete"]["statusCode"])
