"""
VirtualDevice against a minimal cloud peer: a TCP server on 127.0.0.1 driving a cloud-role Connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    AcknowledgeEvent,
    CallFunction,
    Code,
    Command,
    Connection,
    DescribeFlags,
    DescribeReceived,
    DeviceIdentified,
    DiagnosticsReceived,
    Event,
    EventPublished,
    FunctionReturned,
    HelloFlags,
    HelloReceived,
    Ping,
    PingReceived,
    ReadVariable,
    RejectDevice,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    ResponseStyle,
    Role,
    SendEvent,
    SendTime,
    Signal,
    SubscribeRequested,
    SubscriptionScope,
    TimeRequested,
    Timing,
    VariableType,
    VariableValue,
    load_public_key,
    vitals_payload,
)
from devicecloud.virtualdevice import (
    Backoff,
    DeviceIdentity,
    NotConnectedError,
    VirtualDevice,
    generate_identity,
    load_or_create_identity,
)

E = TypeVar("E", bound=Event)
NO_TIMERS = Timing(handshake_timeout=None, request_timeout=None, ping_after=None, idle_timeout=None)
STYLES = [ResponseStyle.PIGGYBACK, ResponseStyle.SEPARATE]


class CloudSession(asyncio.Protocol):
    """One accepted device connection on the cloud side, with an event log tests can wait on."""

    def __init__(self, server_key: rsa.RSAPrivateKey, known: dict[str, rsa.RSAPublicKey] | None) -> None:
        self.connection = Connection(
            Role.CLOUD, now=time.monotonic(), server_private_key=server_key, timing=NO_TIMERS
        )
        self.known = known
        self.events: list[Event] = []
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.connection.receive_data(data, time.monotonic())
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._changed.set()

    def _process(self) -> None:
        while (event := self.connection.next_event()) is not NEED_DATA:
            assert isinstance(event, Event)
            if isinstance(event, DeviceIdentified):
                stored = self.known.get(event.device_id) if self.known is not None else None
                if self.known is None:  # accept whatever key the device offers
                    stored = load_public_key(event.offered_public_key_der)
                command: Command = AcceptDevice(stored) if stored else RejectDevice()
                self.connection.send(command, time.monotonic())
            elif isinstance(event, EventPublished) and event.request_id is not None:
                self.connection.send(AcknowledgeEvent(event.request_id), time.monotonic())
            self.events.append(event)
        self._flush()
        self._changed.set()

    def _flush(self) -> None:
        data = self.connection.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, command: Command) -> int | None:
        request_id = self.connection.send(command, time.monotonic())
        self._process()
        return request_id

    async def wait_for(
        self, kind: type[E], where: Callable[[E], bool] = lambda e: True, timeout: float = 5
    ) -> E:
        """The first logged event of this type matching ``where`` (waiting for it if needed)."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and where(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def request(self, command: Command) -> Event:
        """Send a request and wait for the event that answers it."""
        rid = self.send(command)
        return await self.wait_for(Event, lambda e: getattr(e, "request_id", None) == rid)

    async def drop(self) -> None:
        """The server drops the link."""
        assert self.transport is not None
        self.transport.abort()
        await self.closed


class CloudPeer:
    """A minimal cloud: accepts connections and keeps one CloudSession per connection."""

    def __init__(
        self, server_key: rsa.RSAPrivateKey, known: dict[str, rsa.RSAPublicKey] | None = None
    ) -> None:
        self.server_key = server_key
        self.known = known
        self.sessions: list[CloudSession] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._new_session = asyncio.Event()

    def _factory(self) -> CloudSession:
        session = CloudSession(self.server_key, self.known)
        self.sessions.append(session)
        self._new_session.set()
        return session

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(self._factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for session in self.sessions:
            if session.transport is not None:
                session.transport.abort()
            await session.closed
        await self._server.wait_closed()

    async def session(self, index: int, timeout: float = 5) -> CloudSession:
        """The index-th connection, once its device said Hello."""
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= index:
                self._new_session.clear()
                await self._new_session.wait()
        session = self.sessions[index]
        await session.wait_for(HelloReceived, timeout=timeout)
        return session


@pytest.fixture(scope="module")
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def identity() -> DeviceIdentity:
    return generate_identity()


@pytest.fixture
async def cloud(server_key: rsa.RSAPrivateKey) -> AsyncIterator[CloudPeer]:
    peer = CloudPeer(server_key)
    await peer.start()
    yield peer
    await peer.close()


def make_device(cloud: CloudPeer, identity: DeviceIdentity, **options: Any) -> VirtualDevice:
    options.setdefault("reconnect", False)
    options.setdefault("server_public_key", cloud.server_key.public_key())
    return VirtualDevice(
        "127.0.0.1", cloud.port, device_id=identity.device_id, device_key=identity.private_key, **options
    )


@pytest.fixture(params=STYLES, ids=["0x", "2x"])
async def connected(
    request: pytest.FixtureRequest, cloud: CloudPeer, identity: DeviceIdentity
) -> AsyncIterator[tuple[VirtualDevice, CloudSession]]:
    device = make_device(cloud, identity, response_style=request.param)
    device.variables["flag"] = True
    device.variables["count"] = -123456
    device.variables["ratio"] = 3.141592653589793
    device.variables["tiny"] = 5e-324
    device.variables["label"] = "héllo wörld"
    device.add_function("neg", lambda arg: -len(arg) - 1)
    async with device:
        await device.wait_connected(5)
        yield device, await cloud.session(0)


async def test_handshake_and_hello(
    connected: tuple[VirtualDevice, CloudSession], identity: DeviceIdentity
) -> None:
    """The device completes the handshake and its Hello names a Photon with the style's flags."""
    device, session = connected
    hello = await session.wait_for(HelloReceived)
    assert (6, 6) == (hello.platform_id, hello.product_id)
    expected_flags = HelloFlags.DIAGNOSTICS_SUPPORT | (
        HelloFlags.DEVICE_INITIATED_DESCRIBE if device.response_style is ResponseStyle.SEPARATE else 0
    )
    assert expected_flags == hello.flags
    assert identity.device_id == session.connection.device_id
    assert device.connected
    assert 1 == device.statistics().connects


async def test_describe_lists_functions_and_variable_types(
    connected: tuple[VirtualDevice, CloudSession],
) -> None:
    """A Describe request is answered with every function and each variable's type."""
    _, session = connected
    answer = await session.request(RequestDescribe())
    assert isinstance(answer, DescribeReceived)
    assert ("neg",) == answer.description.functions
    expected = {
        "flag": VariableType.BOOL,
        "count": VariableType.INT,
        "ratio": VariableType.DOUBLE,
        "tiny": VariableType.DOUBLE,
        "label": VariableType.STRING,
    }
    assert expected == answer.description.variables
    assert 6 == answer.description.platform_id


async def test_metrics_describe_answers_vitals(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """The metrics Describe is answered in Device OS's binary format, with figures tests can set."""
    device, session = connected
    device.vitals.round_trip = 777
    answer = await session.request(RequestDescribe(DescribeFlags.METRICS))
    assert isinstance(answer, DiagnosticsReceived)
    vitals = vitals_payload(answer.report)["device"]
    assert 777 == vitals["cloud"]["coap"]["round_trip"]
    assert "connected" == vitals["cloud"]["connection"]["status"]
    assert 1 == vitals["cloud"]["connection"]["attempts"]
    assert "Wi-Fi" == vitals["network"]["signal"]["at"]
    assert -70 < vitals["network"]["signal"]["strengthv"] < -45
    assert 0 < vitals["system"]["memory"]["used"] < vitals["system"]["memory"]["total"] == 82_944
    assert {"err": -120} == vitals["power"]["battery"]["charge"]  # a Photon has no fuel gauge


async def test_device_os_0_7_has_no_vitals(cloud: CloudPeer, identity: DeviceIdentity) -> None:
    """Without diagnostics the Hello does not announce them and the metrics Describe is empty JSON."""
    device = make_device(cloud, identity, diagnostics=False, response_style=ResponseStyle.PIGGYBACK)
    async with device:
        await device.wait_connected(5)
        session = await cloud.session(0)
        hello = await session.wait_for(HelloReceived)
        assert 0 == hello.flags
        answer = await session.request(RequestDescribe(DescribeFlags.METRICS))
        assert isinstance(answer, RequestFailed)


async def test_separate_style_volunteers_describe_after_hello(
    cloud: CloudPeer, identity: DeviceIdentity
) -> None:
    """In 2.x style the device sends its Describe unasked right after the Hello, and again when it changes."""
    device = make_device(cloud, identity, demo=True)
    async with device:
        await device.wait_connected(5)
        session = await cloud.session(0)
        first = await session.wait_for(DescribeReceived, lambda e: e.request_id is None)
        assert {"digitalread", "digitalwrite", "analogread", "analogwrite"} == set(
            first.description.functions or ()
        )
        device.variables["added"] = 1
        later = await session.wait_for(DescribeReceived, lambda e: "added" in (e.description.variables or {}))
        assert VariableType.INT == (later.description.variables or {})["added"]


@pytest.mark.parametrize(
    ("name", "var_type", "expected"),
    [
        ("flag", VariableType.BOOL, True),
        ("count", VariableType.INT, -123456),
        ("ratio", VariableType.DOUBLE, 3.141592653589793),
        ("tiny", VariableType.DOUBLE, 5e-324),
        ("label", VariableType.STRING, "héllo wörld"),
    ],
)
async def test_each_variable_type_reads_back_exactly(
    connected: tuple[VirtualDevice, CloudSession], name: str, var_type: VariableType, expected: object
) -> None:
    """Every variable type arrives at the cloud with exactly the value the device holds."""
    _, session = connected
    answer = await session.request(ReadVariable(name, var_type))
    assert isinstance(answer, VariableValue)
    assert expected == answer.value
    assert type(expected) is type(answer.value)


async def test_variable_set_at_run_time_is_read(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """A new value assigned while connected is what the next read returns."""
    device, session = connected
    device.variables["count"] = 7
    device.set_variable("flag", False)
    count = await session.request(ReadVariable("count", VariableType.INT))
    flag = await session.request(ReadVariable("flag", VariableType.BOOL))
    assert (7, False) == (getattr(count, "value", None), getattr(flag, "value", None))


@pytest.mark.parametrize("size", [0, 63, 622])
async def test_function_calls_with_arguments_up_to_622_bytes(
    connected: tuple[VirtualDevice, CloudSession], size: int
) -> None:
    """The function gets the whole argument and its negative return value reaches the cloud."""
    device, session = connected
    seen: list[str] = []
    device.add_function("record", lambda arg: seen.append(arg) or -(2**31))
    argument = ("x" * size)[:size]
    answer = await session.request(CallFunction("neg", argument))
    recorded = await session.request(CallFunction("record", argument))
    assert FunctionReturned(getattr(answer, "request_id", 0), -size - 1) == answer
    assert isinstance(recorded, FunctionReturned)
    assert -(2**31) == recorded.return_value
    assert [argument] == seen


async def test_async_function(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """A coroutine function is awaited and its result returned."""
    device, session = connected

    async def slow(arg: str) -> int:
        await asyncio.sleep(0.01)
        return int(arg) * 2

    device.add_function("slow", slow)
    answer = await session.request(CallFunction("slow", "21"))
    assert isinstance(answer, FunctionReturned)
    assert 42 == answer.return_value


@pytest.mark.parametrize(
    "command",
    [CallFunction("nope", "x"), ReadVariable("nope", VariableType.INT)],
    ids=["function", "variable"],
)
async def test_unknown_name_is_rejected_with_not_found(
    connected: tuple[VirtualDevice, CloudSession], command: Command
) -> None:
    """A function or variable the device lacks is refused with 4.04."""
    device, session = connected
    answer = await session.request(command)
    assert isinstance(answer, RequestFailed)
    assert Code.NOT_FOUND == answer.code
    assert 1 == device.statistics().rejected_requests


async def test_argument_longer_than_622_bytes_is_refused(
    connected: tuple[VirtualDevice, CloudSession],
) -> None:
    """Device OS 2.x refuses an over-long function argument with 4.00."""
    _, session = connected
    answer = await session.request(CallFunction("neg", "y" * 623))
    assert isinstance(answer, RequestFailed)
    assert Code.BAD_REQUEST == answer.code


async def test_publish_arrives_as_event_published(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """NON and CON publishes arrive at the cloud with name, data, visibility and ttl."""
    device, session = connected
    await device.publish("temp", "21.5", private=False, ttl=120)
    await device.publish("acked", b"\x01", with_ack=True)
    temp = await session.wait_for(EventPublished, lambda e: e.name == "temp")
    acked = await session.wait_for(EventPublished, lambda e: e.name == "acked")
    assert EventPublished("temp", b"21.5", private=False, ttl=120, confirmable=False) == temp
    assert (
        EventPublished("acked", b"\x01", private=True, ttl=60, confirmable=True, request_id=acked.request_id)
        == acked
    )
    assert acked.request_id is not None
    assert 2 == device.statistics().events_published


async def test_cloud_event_reaches_subscribed_handler(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """A subscription reaches the cloud, and a matching cloud event reaches sync and async handlers."""
    device, session = connected
    got: list[tuple[str, str | None]] = []
    done = asyncio.Event()

    async def async_handler(name: str, data: str | None) -> None:
        got.append((name, data))
        done.set()

    await device.subscribe("alerts/", handler=lambda name, data: got.append((name, data)))
    await device.subscribe("alerts/", async_handler, scope=SubscriptionScope.MY_DEVICES)
    sub = await session.wait_for(SubscribeRequested)
    assert ("alerts/", SubscriptionScope.ALL_DEVICES) == (sub.prefix, sub.scope)
    session.send(SendEvent("other", "ignored"))
    session.send(SendEvent("alerts/fire", "now", private=True))
    await asyncio.wait_for(done.wait(), 5)
    assert [("alerts/fire", "now"), ("alerts/fire", "now")] == got
    assert 2 == device.statistics().events_received


async def test_signal_on_and_off(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """Signal requests switch the device's signaling state and are acknowledged."""
    device, session = connected
    on = await session.request(Signal(on=True))
    assert isinstance(on, RequestCompleted)
    assert device.signaling
    await session.request(Signal(on=False))
    assert (False, 2) == (device.signaling, device.statistics().signals)


async def test_pings_and_time(connected: tuple[VirtualDevice, CloudSession]) -> None:
    """The device answers cloud pings, pings the cloud, and asks it the time."""
    device, session = connected
    assert isinstance(await session.request(Ping()), RequestCompleted)
    await device.ping()
    await session.wait_for(PingReceived)
    asking = asyncio.ensure_future(device.request_time())
    asked = await session.wait_for(TimeRequested)
    session.send(SendTime(asked.request_id, 1_700_000_000))
    assert 1_700_000_000 == await asking


async def test_reconnects_after_the_server_drops_the_link(cloud: CloudPeer, identity: DeviceIdentity) -> None:
    """After the server drops the link the device connects again and re-subscribes."""
    device = make_device(cloud, identity, reconnect=True, backoff=Backoff(initial=0.05, jitter=False))
    async with device:
        await device.wait_connected(5)
        await device.subscribe("spark/", handler=lambda name, data: None)
        await (await cloud.session(0)).drop()
        second = await cloud.session(1)
        await second.wait_for(SubscribeRequested, lambda e: e.prefix == "spark/")
        await device.wait_connected(5)
        stats = device.statistics()
    assert (2, "peer closed the connection") == (stats.connects, stats.last_disconnect_reason)


async def test_wrong_server_key_never_connects(cloud: CloudPeer, identity: DeviceIdentity) -> None:
    """A device expecting another server key fails the handshake and, without reconnects, gives up."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    device = make_device(cloud, identity, server_public_key=other.public_key())
    async with device:
        with pytest.raises(NotConnectedError):
            await device.wait_connected(5)
    assert not device.connected


async def test_no_server_means_not_connected(identity: DeviceIdentity, server_key: rsa.RSAPrivateKey) -> None:
    """Nothing listening: wait_connected reports why instead of hanging."""
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    device = VirtualDevice(
        "127.0.0.1",
        port,
        device_id=identity.device_id,
        device_key=identity.private_key,
        server_public_key=server_key.public_key(),
        reconnect=False,
    )
    async with device:
        with pytest.raises(NotConnectedError, match="cannot connect"):
            await device.wait_connected(5)


async def test_identity_persists_across_restarts(tmp_path: Path, server_key: rsa.RSAPrivateKey) -> None:
    """A restarted device loads its id and key from the state dir; a cloud that stored the key accepts it."""
    first, created = load_or_create_identity(tmp_path / "vd")
    again, created_again = load_or_create_identity(tmp_path / "vd")
    assert (True, False) == (created, created_again)
    assert first.device_id == again.device_id
    assert first.public_key_pem() == again.public_key_pem()
    peer = CloudPeer(server_key, known={first.device_id: first.public_key})
    await peer.start()
    try:
        for index, identity in enumerate((first, again)):
            async with make_device(peer, identity) as device:
                await device.wait_connected(5)
                await peer.session(index)
    finally:
        await peer.close()


async def test_keep_alive_pings_on_a_quiet_link(cloud: CloudPeer, identity: DeviceIdentity) -> None:
    """With nothing received for ping_after seconds, the device pings the cloud."""
    timing = Timing(handshake_timeout=5, request_timeout=5, ping_after=0.05, idle_timeout=None)
    async with make_device(cloud, identity, timing=timing) as device:
        await device.wait_connected(5)
        session = await cloud.session(0)
        await session.wait_for(PingReceived)
        assert 0 < device.statistics().bytes_sent
