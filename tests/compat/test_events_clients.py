"""
The official clients' event calls, unchanged, against a running devicecloud: particle-cli ``subscribe`` and
``publish``, particle-api-js ``getEventStream`` and ``publishEvent`` (node/events_flow.js), and pyparticleio's
``cloud_subscribe`` and ``publish`` (run in a child Python, since its listener threads never end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.server import LiveServer

pytestmark = pytest.mark.compat


def published_ok(api: httpx.Client, name: str, data: str, *, private: bool = True) -> None:
    reply = api.post("/v1/devices/events", json={"name": name, "data": data, "private": private})
    assert (200, {"ok": True}) == (reply.status_code, reply.json())


class Stream:
    """An SSE stream read from the test process (sync httpx), block by block."""

    def __init__(self, api: httpx.Client, path: str) -> None:
        self._context = api.stream("GET", path, timeout=30)
        self.response = self._context.__enter__()
        assert 200 == self.response.status_code
        self._chunks = self.response.iter_raw()
        self._buffer = b""
        assert b":ok" == self._block()

    def _block(self) -> bytes:
        while b"\n\n" not in self._buffer:
            self._buffer += next(self._chunks)
        block, _, self._buffer = self._buffer.partition(b"\n\n")
        return block

    def event(self) -> tuple[str, dict[str, Any]]:
        block = self._block()
        while block.startswith(b":"):
            block = self._block()
        name_line, data_line = block.decode().split("\n")
        return name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def assert_api_event(event: dict[str, Any], name: str, data: str) -> None:
    """What the clients get for an API publish: name, data, ttl 60, coreid "api", a UTC millisecond stamp."""
    assert (name, data, 60, "api") == (event["name"], event["data"], int(event["ttl"]), event["coreid"])
    assert event["published_at"].endswith("Z")
    assert 24 == len(event["published_at"])


# ---------------------------------------------------------------- particle-cli


@pytest.fixture(scope="module")
def cli_home(node_dir: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A particle-cli profile on the server, logged in as the owner."""
    home = tmp_path_factory.mktemp("cli-events-home")
    env = {**os.environ, "HOME": str(home), "NO_COLOR": "1", "FORCE_COLOR": "0"}
    binary = str(node_dir / "node_modules" / ".bin" / "particle")
    for args in (("config", "local", "apiUrl", server.url), ("config", "local")):
        assert 0 == subprocess.run([binary, *args], env=env, capture_output=True, timeout=60).returncode
    login = subprocess.run(
        [binary, "login", "--username", server.email, "--password", server.password],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == login.returncode, login.stdout + login.stderr
    return env


def particle(node_dir: Path) -> str:
    return str(node_dir / "node_modules" / ".bin" / "particle")


@pytest.mark.parametrize(("flags", "name"), [((), "cli/mine"), (("--all",), "cli/all")])
def test_cli_subscribe(
    node_dir: Path, cli_home: dict[str, str], owner_api: httpx.Client, flags: tuple[str, ...], name: str
) -> None:
    """
    ``particle subscribe NAME --max 1`` (my devices' stream, or ``--all``: /v1/events/NAME) prints the event
    the owner publishes. It runs until an event arrives, so the test publishes until the CLI has one.
    """
    process = subprocess.Popen(
        [particle(node_dir), "subscribe", name, *flags, "--max", "1"],
        env=cli_home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            published_ok(owner_api, name, "hello from the api", private=not flags)
            time.sleep(0.3)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=10)
    assert 0 == process.returncode, out + err
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert 1 == len(lines), out
    assert_api_event(json.loads(lines[0]), name, "hello from the api")
    assert "1 event(s) received. Exiting..." in out


def test_cli_publish(node_dir: Path, cli_home: dict[str, str], owner_api: httpx.Client) -> None:
    """``particle publish NAME DATA`` publishes a private event the owner's stream receives."""
    stream = Stream(owner_api, "/v1/devices/events/cli%2Fpublished")
    try:
        result = subprocess.run(
            [particle(node_dir), "publish", "cli/published", "42 degrees"],
            env=cli_home,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert 0 == result.returncode, result.stdout + result.stderr
        name, data = stream.event()
    finally:
        stream.close()
    assert_api_event({**data, "name": name}, "cli/published", "42 degrees")


# ---------------------------------------------------------------- particle-api-js


class JsFlow:
    """Runs one phase of node/events_flow.js."""

    def __init__(self, node_dir: Path, server: LiveServer) -> None:
        self.command = ["node", str(node_dir / "events_flow.js"), server.url, server.email, server.password]

    def run(self, *args: str) -> dict[str, Any]:
        result = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert 0 == result.returncode, result.stderr
        return dict(json.loads(result.stdout))

    def stream(
        self, api: httpx.Client, device: str, name: str, hold_ms: int, events: list[str], count: int = 0
    ) -> Any:
        """
        Open a stream, wait for its READY, publish ``events`` (private), and return what it received once
        ``count`` events (default: all) arrived.
        """
        process = subprocess.Popen(
            [*self.command, "stream", device, name, str(count or len(events)), str(hold_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            ready = process.stdout.readline()
            assert "READY\n" == ready, ready + (process.stderr.read() if process.stderr else "")
            for number, event in enumerate(events):
                published_ok(api, event, str(number))
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert 0 == process.returncode, err
        return json.loads(out)


@pytest.fixture(scope="module")
def js(node_dir: Path, server: LiveServer) -> JsFlow:
    return JsFlow(node_dir, server)


def test_js_get_event_stream(js: JsFlow, owner_api: httpx.Client) -> None:
    """getEventStream on my devices with a prefix (URL-encoded with its slash) gets the events in order."""
    names = ["js/a", "other", "js/b", "js/c"]
    result = js.stream(owner_api, "mine", "js/", 0, names, count=3)
    assert ["js/a", "js/b", "js/c"] == [e["name"] for e in result["events"]]
    assert ["0", "2", "3"] == [e["data"] for e in result["events"]]


def test_js_public_stream(js: JsFlow, owner_api: httpx.Client) -> None:
    """getEventStream without a device (/v1/events/NAME) sees the owner's events; with every field."""
    result = js.stream(owner_api, "-", "jsall", 0, ["jsall/1", "jsall/2"])
    assert ["jsall/1", "jsall/2"] == [e["name"] for e in result["events"]]
    assert_api_event(result["events"][0], "jsall/1", "0")
    assert (0, 0) == (result["disconnects"], result["reconnects"])


def test_js_stream_errors(js: JsFlow) -> None:
    """A refused stream (no prefix on /v1/events) rejects with the status and the server's description."""
    refused = js.run("streamError", "-", "")
    assert 400 == refused["statusCode"]
    assert refused["errorDescription"].startswith("HTTP error 400 from ")
    assert "event prefix filter is required" == refused["body"]["error"]


def test_js_publish_event(js: JsFlow, owner_api: httpx.Client) -> None:
    """publishEvent sends {name, data, private} and gets {ok: true}; the owner's stream receives it."""
    stream = Stream(owner_api, "/v1/devices/events/jspub")
    try:
        reply = js.run("publish", "jspub", "from api-js", "private")
        name, data = stream.event()
    finally:
        stream.close()
    assert (True, 200, {"ok": True}) == (reply["ok"], reply["statusCode"], reply["body"])
    assert_api_event({**data, "name": name}, "jspub", "from api-js")


def test_js_publish_invalid(js: JsFlow) -> None:
    """A name longer than 64 characters is refused with a 400 the library reports."""
    reply = js.run("publish", "n" * 65, "x", "public")
    assert (False, 400) == (reply["ok"], reply["statusCode"])


@pytest.mark.slow
def test_js_idle_stream_stays_open(js: JsFlow, owner_api: httpx.Client) -> None:
    """
    particle-api-js drops a stream after 15 s without a byte; with the default 9 s keep-alive an idle stream
    held for more than 60 s (DEVICECLOUD_TEST_IDLE_HOLD seconds, default 61) is never dropped or reopened,
    and still delivers afterwards.
    """
    hold = float(os.environ.get("DEVICECLOUD_TEST_IDLE_HOLD", "61"))
    result = js.stream(owner_api, "mine", "idle", int(hold * 1000), ["idle/after"])
    assert (0, 0) == (result["disconnects"], result["reconnects"])
    assert ["idle/after"] == [e["name"] for e in result["events"]]


# ---------------------------------------------------------------- pyparticleio

PYPARTICLEIO = """
import json, os, sys, threading, time
from pyparticleio.ParticleCloud import ParticleCloud

url, email, password, name = sys.argv[1:5]
cloud = ParticleCloud(email, password, api_prefix=url + "/v1")
received = []
arrived = threading.Event()

def callback(event):
    received.append(event)
    arrived.set()

cloud.demo.cloud_subscribe(name, callback)  # GET /v1/devices/events/NAME?access_token=...
deadline = time.monotonic() + 30
while not arrived.is_set() and time.monotonic() < deadline:
    cloud.demo.publish(name, "from pyparticleio", True, 60)  # POST /v1/devices/events (form, Bearer)
    arrived.wait(0.3)
print(json.dumps(received[:1]))
sys.stdout.flush()
os._exit(0)  # its listener thread never ends
"""


def test_pyparticleio_subscribe_and_publish(server: LiveServer) -> None:
    """
    pyparticleio's cloud_subscribe (sseclient, raw prefix with a slash, ?access_token=) receives what its
    publish (a form post, private) sent.
    """
    result = subprocess.run(
        [sys.executable, "-c", PYPARTICLEIO, server.url, server.email, server.password, "py/event"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    received = json.loads(result.stdout)
    assert 1 == len(received), result.stderr
    event = received[0]
    assert ("py/event", "from pyparticleio", 60, "api") == (
        event["event_name"],
        event["data"],
        event["ttl"],
        event["coreid"],
    )
