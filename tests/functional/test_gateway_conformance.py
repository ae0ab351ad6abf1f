"""
Replay the Device OS 0.7.0 recordings against the gateway over real TCP.

The recorded randomness (nonce, K, RSA padding, first message id and token) is injected through
``random_bytes``, the fake sessions hand out the recorded device key, and the fake clock follows the
recording's time line. The test plays the device: it writes the recorded device bytes, asks the gateway
for each cloud-initiated operation through `DeviceControl` (or the link, for what control does not offer:
Describe flags, events to the device), and requires every server byte to match the recording. OTA is not
part of the gateway yet, so a replay stops at the first OTA operation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.support.clock import FakeClock
from tests.support.conformance import KEYS, load_transcript
from tests.support.gateway_fakes import GUARD, FakeSessions

from devicecloud.errors import DeviceOffline, DeviceTimedOut, InvalidInput
from devicecloud.gateway import DeviceGateway
from devicecloud.protocol import (
    DescribeReceived,
    RequestDescribe,
    load_private_key,
    load_public_key,
    public_key_der,
)

# Every recording; those with OTA (session_tinker, session_ota_legacy) are replayed up to the OTA part.
TRANSCRIPTS = [
    "session_tinker",
    "session_app",
    "session_ota_legacy",
    "neg_app_errors",
    "neg_wrong_device_key",
    "neg_bad_signature",
    "neg_no_server_hello",
    "neg_ping_unanswered",
]
# Operations the gateway does not offer yet.
OTA_ACTIONS = ("update_begin", "chunk_index", "update_done")
# The app's variable types (conformance README), as the Describe would give them.
VAR_TYPES = {"vbool": "bool", "vint": "int32", "vdouble": "double", "vstring": "string"}
FINAL_REPLIES = {
    "FunctionReturn",
    "VariableValue",
    "DescribeResponse",
    "SignalAck",
    "PingAck",
    "FunctionCallAck 4.00",
}
TIMEOUT = 5.0


class RecordedRandom:
    """random_bytes that hands out the recorded values in order, checking the requested sizes."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()

    def __call__(self, n: int) -> bytes:
        chunk = self.chunks.popleft()
        assert n == len(chunk), f"asked for {n} random bytes, recorded value has {len(chunk)}"
        return chunk


class Replay:
    """Walks one transcript as the device, over a socket to the gateway."""

    def __init__(self, transcript: dict[str, Any], keys: Path) -> None:
        self.t = transcript
        self.name: str = transcript["name"]
        self.records: list[dict[str, Any]] = transcript["records"]
        self.keys = keys
        self.device_id = (keys / "device_id.txt").read_text().strip()
        self.sessions = FakeSessions()
        self.random = RecordedRandom()
        self.random.chunks.extend(self._randomness())
        start = self._wall_clock_start()
        self.clock = FakeClock(start)
        self.now = 0.0
        self.gateway = DeviceGateway(
            self.sessions,
            load_private_key((keys / "server_private.pem").read_bytes()),
            clock=self.clock,
            host="127.0.0.1",
            port=0,
            request_timeout=TIMEOUT,
            random_bytes=self.random,
            describe_on_connect=False,  # the recording's cloud asked for Describe on demand
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ops: dict[int, asyncio.Task[Any]] = {}
        self.stopped = False

    def _randomness(self) -> list[bytes]:
        p = self.t["server_params"]
        out: list[bytes] = []
        for conn in sorted({r["conn"] for r in self.records if r["kind"] == "tcp_accept"}):
            mine = [r for r in self.records if r["conn"] == conn]
            out += [bytes.fromhex(p["nonce_hex"]), bytes.fromhex(p["session_key_material_hex"])]
            out += [
                bytes.fromhex(r["decoded"]["rsa_pkcs1_v15_padding_string_hex"])
                for r in mine
                if r["kind"] == "handshake_server_reply"
            ]
            if any(r.get("label") == "Hello" and r["dir"] == "d2s" for r in mine):
                out += [p["server_message_id_start"].to_bytes(2, "big"), bytes([p["token_start"]])]
        return out

    def _wall_clock_start(self) -> datetime:
        """A wall clock that reads the recorded time_value at every GetTime of the recording."""
        times = [r["t"] for r in self.records if r.get("label") == "GetTime"] or [0.0]
        assert max(times) - min(times) < 1.0, "GetTime records too far apart for one fake wall clock"
        return datetime.fromtimestamp(self.t["server_params"]["time_value"] - min(times) + 0.0001, UTC)

    # ---------------------------------------------------------------- the walk

    async def run(self) -> None:
        await self.gateway.start()
        try:
            for r in self.records:
                if r["t"] > self.now:
                    self.clock.advance(r["t"] - self.now)
                    self.now = r["t"]
                handler = getattr(self, "on_" + r["kind"], None)
                if handler is not None and not (self.stopped and r["kind"] != "tcp_accept"):
                    await handler(r)
            await self._hang_up()
            if self.ops:
                await asyncio.wait(self.ops.values(), timeout=GUARD)
        finally:
            await self.gateway.stop()

    async def _read(self, n: int) -> bytes:
        assert self.reader is not None
        async with asyncio.timeout(GUARD):
            return await self.reader.readexactly(n)

    def _write(self, r: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(bytes.fromhex(r["raw_hex"]))

    async def _hang_up(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
        self.reader = self.writer = None

    async def on_tcp_accept(self, r: dict[str, Any]) -> None:
        await self._hang_up()
        self.stopped = False
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.gateway.port)

    async def on_tcp_close(self, r: dict[str, Any]) -> None:
        await self._hang_up()

    async def on_handshake_nonce(self, r: dict[str, Any]) -> None:
        assert r["raw_hex"] == (await self._read(40)).hex(), f"{self.name}: nonce"

    async def on_handshake_device_block(self, r: dict[str, Any]) -> None:
        reply = next(
            x for x in self.records if x["conn"] == r["conn"] and x["kind"] == "handshake_server_reply"
        )
        key_file = reply["decoded"]["encrypted_for"].replace(".pem", ".der")
        if key_file == "wrong_device_public.der":  # only the PEM of the wrong key is stored
            der = public_key_der(load_public_key((self.keys / "wrong_device_public.pem").read_bytes()))
        else:
            der = (self.keys / key_file).read_bytes()
        self.sessions.keys[self.device_id] = der
        self._write(r)

    async def on_handshake_server_reply(self, r: dict[str, Any]) -> None:
        ours = await self._read(384)
        raw = bytes.fromhex(r["raw_hex"])
        if r["decoded"].get("signature_valid") is False:
            # The recorder flipped the last signature byte on purpose; ours is the valid one.
            assert (raw[:-1], raw[-1] ^ 1) == (ours[:-1], ours[-1]), f"{self.name}: server reply"
        else:
            assert raw.hex() == ours.hex(), f"{self.name}: server reply"

    async def on_coap(self, r: dict[str, Any]) -> None:
        raw = bytes.fromhex(r["raw_hex"])
        if r["dir"] == "d2s":
            self._write(r)
            request = r.get("decoded", {}).get("in_reply_to")
            if r["label"] in FINAL_REPLIES and request in self.ops:
                await asyncio.wait({self.ops[request]}, timeout=GUARD)  # settle it before time moves on
            return
        trigger = r.get("trigger", {})
        if trigger.get("type") == "api":
            action = trigger["action"]
            if any(key in action for key in OTA_ACTIONS):
                self.stopped = True  # not in the gateway yet
                return
            self._start(r, action)
        assert raw.hex() == (await self._read(len(raw))).hex(), f"{self.name} record {r['i']} ({r['label']})"

    def _start(self, r: dict[str, Any], action: dict[str, Any]) -> None:
        control, device = self.gateway.control, self.device_id
        link = self.gateway.link(device)
        assert link is not None
        if "event" in action:
            split = not action["encoding"].startswith("1 ")
            private = r["coap"]["uri_path"][0] == "E"
            assert link.send_event(
                action["event"], action["data"], private=private, max_age=action["max_age"], split_path=split
            )
            return
        if "describe_flags" in action and action["describe_flags"] is not None:
            op: Any = link.request(RequestDescribe(action["describe_flags"]), timeout=TIMEOUT)
        elif "describe_flags" in action:
            op = control.refresh_describe(device, timeout=TIMEOUT)
        elif "function" in action:
            op = control.call_function(device, action["function"], action["argument"], timeout=TIMEOUT)
        elif "variable" in action:
            op = control.read_variable(
                device, action["variable"], VAR_TYPES.get(action["variable"]), timeout=TIMEOUT
            )
        elif "signal" in action:
            op = control.signal(device, action["signal"], timeout=TIMEOUT)
        else:
            assert "ping" in action, action
            op = control.ping(device, timeout=TIMEOUT)
        self.ops[r["i"]] = asyncio.create_task(op)

    # ---------------------------------------------------------------- outcomes

    def check_outcomes(self) -> None:
        """Each operation ended as the device's answers say it should."""
        for i, task in self.ops.items():
            action = self.records[i]["trigger"]["action"]
            replies = [x for x in self.records if x.get("decoded", {}).get("in_reply_to") == i]
            final = [x for x in replies if x["label"] in FINAL_REPLIES]
            error = task.exception()
            if not final:
                t = self.records[i]["t"]
                closed = any(x["kind"] == "tcp_close" and t < x["t"] < t + TIMEOUT for x in self.records)
                assert isinstance(error, DeviceOffline if closed else DeviceTimedOut), (self.name, i, error)
                continue
            reply = final[0]
            if reply["label"] == "FunctionCallAck 4.00":
                assert isinstance(error, InvalidInput), (self.name, i, error)
                continue
            assert error is None, (self.name, i, error)
            result = task.result()
            decoded = reply["decoded"]
            if reply["label"] == "FunctionReturn":
                assert decoded["return_value_int32_be"] == result
            elif reply["label"] == "VariableValue":
                assert (decoded["variable"], decoded["value"]) == (result.name, result.value)
            elif isinstance(result, DescribeReceived):
                assert decoded["json"] == result.description.raw
            elif reply["label"] == "DescribeResponse":
                assert tuple(decoded["json"]["f"]) == result.functions
            elif "ping" in action:
                assert result is True


@pytest.mark.parametrize("name", TRANSCRIPTS)
async def test_gateway_replays_recording(name: str) -> None:
    """Every server byte the gateway sends matches the recording, and each operation gets its answer."""
    replay = Replay(load_transcript(name), KEYS)
    await replay.run()
    replay.check_outcomes()
    assert not replay.random.chunks, "recorded randomness left unused"
    handshakes = sum(1 for r in replay.records if r.get("label") == "Hello" and r["dir"] == "d2s")
    assert handshakes == replay.sessions.count("device_connected", replay.device_id)
    assert replay.sessions.count("device_connected", replay.device_id) == replay.sessions.count(
        "device_disconnected", replay.device_id
    )
