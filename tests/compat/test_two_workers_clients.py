"""
particle-cli and particle-api-js, unchanged, against ``devicecloud serve --workers 2`` (SQLite, NATS): every
client run is a new connection the kernel gives to either worker, and the demo device is linked to one of
them, so calls, reads and listings cross workers through the bus and answer as on one process.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.conftest import compat_server
from tests.compat.test_devices_particle_cli import CliRunner, clean, cli
from tests.support.server import LiveServer

pytestmark = [pytest.mark.compat, pytest.mark.nats]
__all__ = ["cli"]  # fixture
RUNS = 4  # client runs per check: with two workers, each has about even odds of a given worker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with compat_server(tmp_path_factory.mktemp("two-workers"), workers=2) as s:
        yield s


def test_particle_cli_list_call_and_get_through_either_worker(cli: CliRunner) -> None:
    """list shows the demo device online; call and get answer the same from every run."""
    for _ in range(RUNS):
        listed = cli("list")
        assert 0 == listed.returncode, listed.stderr
        assert "is online" in clean(listed.stdout)
        called = cli("call", "demo", "digitalwrite", "D7,HIGH")
        assert (0, "1") == (called.returncode, clean(called.stdout).strip())
        led = cli("get", "demo", "led")
        assert (0, "true") == (led.returncode, led.stdout.strip())
    missing = cli("call", "demo", "nope")
    assert 1 == missing.returncode
    assert "Function `nope` not found: HTTP error 404" in clean(missing.stdout + missing.stderr)


def test_particle_api_js_calls_through_either_worker(node_dir: Path, server: LiveServer) -> None:
    """particle-api-js: log in, then callFunction and getVariable on the demo device, several times."""
    script = """
const Particle = require('particle-api-js');
const [url, username, password, runs] = process.argv.slice(1);
(async () => {
  const particle = new Particle({ baseUrl: url });
  const auth = (await particle.login({ username, password })).body.access_token;
  const out = [];
  for (let i = 0; i < Number(runs); i++) {
    const called = await particle.callFunction(
      { deviceId: 'demo', name: 'digitalwrite', argument: 'D7,LOW', auth });
    const got = await particle.getVariable({ deviceId: 'demo', name: 'led', auth });
    out.push([called.statusCode, called.body.return_value, got.body.result]);
  }
  console.log(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""
    result = subprocess.run(
        ["node", "-e", script, server.url, server.email, server.password, str(RUNS)],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert [[200, 1, False]] * RUNS == json.loads(result.stdout)
