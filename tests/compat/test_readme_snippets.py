"""
The README's client snippets run as written: a newcomer copies them into a file and they work.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(after: str, language: str) -> str:
    """The first fenced ``language`` block that follows the line containing ``after``."""
    text = README.read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no {language} block after {after!r}"
    return match.group(1)


def test_particle_api_js_snippet_runs_as_a_file(node_dir: Path, server: LiveServer, tmp_path: Path) -> None:
    """The particle-api-js snippet, saved as try.js with the reader's address and account, runs."""
    snippet = (
        readme_block("**particle-api-js**", "js")
        .replace("http://127.0.0.1:8080", server.url)
        .replace("you@example.com", server.email)
        .replace("your password", server.password)
    )
    script = tmp_path / "try.js"
    script.write_text(snippet)
    env = {**os.environ, "NODE_PATH": str(node_dir / "node_modules")}
    result = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert 0 == result.returncode, result.stderr
    assert result.stdout.startswith(server.email), result.stdout
