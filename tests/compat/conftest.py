"""
Fixtures for the official-client tests: the pinned npm clients and a live server.

The npm packages live in tests/compat/node (package.json + package-lock.json); `.ci/run` installs them with
`npm ci`. Locally, run the same once. Without them these tests skip and say how to install.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support import unavailable
from tests.support.server import LiveServer, live_server

NODE_DIR = Path(__file__).with_name("node")


@pytest.fixture(scope="session")
def node_dir() -> Path:
    if shutil.which("node") is None:
        unavailable("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "particle-api-js").is_dir():
        unavailable(f"official npm clients missing: run `npm ci` in {NODE_DIR} (./dev test does)")
    return NODE_DIR


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("compat"), email="owner@example.com", password="owner password"
    ) as s:
        yield s


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """
    A clean HOME for particle-cli, so its profiles never touch the developer's own.
    """
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}
