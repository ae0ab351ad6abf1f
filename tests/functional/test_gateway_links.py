"""
The device gateway over real TCP: what a well-behaved device gets, and what services hear about it.

A test device (a device-role protocol.Connection on asyncio streams) connects to a gateway on 127.0.0.1;
time is a FakeClock, so timeouts and keep-alives move only when a test advances it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.clock import FakeClock
from tests.support.gateway_fakes import (
    DeviceApp,
    FakeSessions,
    TestDevice,
    connected_device,
    running_gateway,
    until,
)

from devicecloud.clock import SystemClock
from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo, VariableReading
from devicecloud.errors import DeviceOffline, DeviceTimedOut, NotFound
from devicecloud.gateway import DeviceGateway
from devicecloud.protocol import (
    DescribeRequested,
    EventPublished,
    PingReceived,
    PublishEvent,
    RequestTime,
    ResponseStyle,
    SignalRequested,
    TimeReceived,
    VariableType,
)

STYLES = [ResponseStyle.PIGGYBACK, ResponseStyle.SEPARATE]
TIMEOUT = 5.0


def demo_app() -> DeviceApp:
    return DeviceApp(
        functions={"len": len, "neg": lambda _: -123456, "zero": lambda _: 0},
        variables={
            "vbool": (VariableType.BOOL, True),
            "vint": (VariableType.INT, -42),
            "vdouble": (VariableType.DOUBLE, 1234.5678),
            "vstring": (VariableType.STRING, "hello, cloud"),
        },
        phantoms=("ghost",),
    )


@pytest.fixture
def sessions() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
async def gateway(sessions: FakeSessions, clock: FakeClock) -> AsyncIterator[DeviceGateway]:
    async with running_gateway(
        sessions, clock, ping_after=20.0, idle_timeout=35.0, request_timeout=30.0
    ) as gw:
        yield gw


@pytest.fixture(params=STYLES, ids=["piggyback", "separate"])
async def device(
    request: pytest.FixtureRequest, gateway: DeviceGateway, sessions: FakeSessions
) -> AsyncIterator[TestDevice]:
    dev = await connected_device(gateway, sessions, TestDevice(1, demo_app(), style=request.param))
    yield dev
    await dev.close()


async def test_connect_reports_key_check_connected_and_describe_in_order(
    device: TestDevice, sessions: FakeSessions
) -> None:
    """A device's key is checked, then it is reported connected with its Hello, then described."""
    expected = ["check_device_key", "device_connected", "device_described"]
    assert expected == [c[0] for c in sessions.calls if c[0] != "device_heard"][:3]
    assert ("check_device_key", device.id, "127.0.0.1") == sessions.calls[0]
    assert DeviceHelloInfo(6, 0xFFFF, 0xFFFF, sessions.hellos[device.id].flags) == sessions.hellos[device.id]
    expected_description = DeviceDescription(
        functions=("len", "neg", "zero", "ghost"),
        variables={
            "vbool": "bool",
            "vint": "int32",
            "vdouble": "double",
            "vstring": "string",
            "ghost": "int32",
        },
        system_firmware_version=None,
        modules=[],
    )
    assert expected_description == sessions.descriptions[device.id][0]


async def test_device_initiated_describe_is_not_requested(
    gateway: DeviceGateway, sessions: FakeSessions
) -> None:
    """A 2.x device that announces its own Describe is not asked for one; its Describe is reported."""
    dev = await connected_device(gateway, sessions, TestDevice(2, demo_app(), style=ResponseStyle.SEPARATE))
    try:
        assert [] == [e for e in dev.events if isinstance(e, DescribeRequested)]
        assert 1 == len(sessions.descriptions[dev.id])
    finally:
        await dev.close()


@pytest.mark.parametrize("argument", ["", "x" * 63, "y" * 622])
async def test_function_call_returns_the_device_value(
    gateway: DeviceGateway, device: TestDevice, argument: str
) -> None:
    """A function call carries its argument (empty, 63 and 622 bytes) and returns the int32 result."""
    assert len(argument) == await gateway.control.call_function(device.id, "len", argument, timeout=TIMEOUT)


async def test_function_call_negative_result(gateway: DeviceGateway, device: TestDevice) -> None:
    """Negative return values come back signed."""
    assert -123456 == await gateway.control.call_function(device.id, "neg", "", timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("name", "api_type", "expected"),
    [
        ("vbool", "bool", True),
        ("vint", "int32", -42),
        ("vdouble", "double", 1234.5678),
        ("vstring", "string", "hello, cloud"),
    ],
)
async def test_variable_read_every_type(
    gateway: DeviceGateway, device: TestDevice, name: str, api_type: str, expected: Any
) -> None:
    """Each variable type reads back exactly, with or without the type given by the caller."""
    given = await gateway.control.read_variable(device.id, name, api_type, timeout=TIMEOUT)
    learned = await gateway.control.read_variable(device.id, name, None, timeout=TIMEOUT)
    assert VariableReading(name, expected, api_type) == given
    assert given == learned


async def test_unknown_function_or_variable_is_not_found(gateway: DeviceGateway, device: TestDevice) -> None:
    """A name missing from the Describe is refused without asking the device."""
    with pytest.raises(NotFound, match="Function nope not found"):
        await gateway.control.call_function(device.id, "nope", "", timeout=TIMEOUT)
    with pytest.raises(NotFound, match="Variable nope not found"):
        await gateway.control.read_variable(device.id, "nope", None, timeout=TIMEOUT)


async def test_device_answering_404_is_not_found(gateway: DeviceGateway, device: TestDevice) -> None:
    """A device that answers 4.04 for a function or variable gives NotFound."""
    with pytest.raises(NotFound, match="Function ghost not found"):
        await gateway.control.call_function(device.id, "ghost", "", timeout=TIMEOUT)
    with pytest.raises(NotFound, match="Variable ghost not found"):
        await gateway.control.read_variable(device.id, "ghost", "int32", timeout=TIMEOUT)


async def test_signal_ping_and_refresh_describe(
    gateway: DeviceGateway, device: TestDevice, sessions: FakeSessions
) -> None:
    """Signal reaches the device, a ping is answered, and a refreshed Describe is returned and reported."""
    await gateway.control.signal(device.id, True, timeout=TIMEOUT)
    await gateway.control.signal(device.id, False, timeout=TIMEOUT)
    assert await gateway.control.ping(device.id, timeout=TIMEOUT)
    description = await gateway.control.refresh_describe(device.id, timeout=TIMEOUT)
    await sessions.wait_for(lambda: 2 == len(sessions.descriptions[device.id]))
    assert [True, False] == [e.on for e in device.events if isinstance(e, SignalRequested)]
    assert ("len", "neg", "zero", "ghost") == description.functions
    assert description == sessions.descriptions[device.id][-1]


async def test_offline_device(gateway: DeviceGateway) -> None:
    """Without a link every request raises DeviceOffline, and ping says False."""
    absent = "00000000000000000000abcd"
    assert not gateway.control.is_online(absent)
    assert not await gateway.control.ping(absent, timeout=TIMEOUT)
    with pytest.raises(DeviceOffline):
        await gateway.control.call_function(absent, "len", "", timeout=TIMEOUT)
    with pytest.raises(DeviceOffline):
        await gateway.control.read_variable(absent, "vint", "int32", timeout=TIMEOUT)
    with pytest.raises(DeviceOffline):
        await gateway.control.signal(absent, True, timeout=TIMEOUT)
    with pytest.raises(DeviceOffline):
        await gateway.control.refresh_describe(absent, timeout=TIMEOUT)


async def test_time_request_gets_the_clock_wall_time(device: TestDevice, clock: FakeClock) -> None:
    """A device asking for the time gets the injected clock's Unix time."""
    device.send(RequestTime())
    [answer] = await device.wait_event(TimeReceived)
    assert isinstance(answer, TimeReceived)
    assert int(clock.now().timestamp()) == answer.unix_time


async def test_published_events_reach_the_hook(sessions: FakeSessions, clock: FakeClock) -> None:
    """Events a device publishes are handed to the on_event hook with the device id."""
    received: list[tuple[str, EventPublished]] = []

    async def hook(device_id: str, event: EventPublished) -> bool:
        received.append((device_id, event))
        return True

    async with running_gateway(sessions, clock, on_event=hook) as gateway:
        dev = await connected_device(gateway, sessions, TestDevice(3, demo_app()))
        dev.send(PublishEvent("temp", "21.5", private=False))
        await gateway.control.ping(dev.id, timeout=TIMEOUT)  # the event was read before the ping's answer
        await dev.close()
    assert [(dev.id, "temp", b"21.5", False)] == [(i, e.name, e.data, e.private) for i, e in received]


async def test_silent_device_times_out_then_goes_offline_after_the_keepalive_window(
    gateway: DeviceGateway, device: TestDevice, sessions: FakeSessions, clock: FakeClock
) -> None:
    """A device that stops answering mid-call: DeviceTimedOut at the timeout, offline at idle_timeout."""
    device.silent = True
    call = asyncio.create_task(gateway.control.call_function(device.id, "len", "abc", timeout=TIMEOUT))
    await until(lambda: 1 == gateway.statistics().requests)  # sent, its timeout armed on the clock
    clock.advance(TIMEOUT - 0.001)
    await asyncio.sleep(0)
    assert not call.done()
    clock.advance(0.001)
    with pytest.raises(DeviceTimedOut, match=r"^Timed out\.$"):
        await call
    clock.advance(35.0 - TIMEOUT - 0.001)  # just inside the window: still online
    assert gateway.control.is_online(device.id)
    clock.advance(0.001)
    await sessions.wait_for(lambda: device.id not in sessions.online)
    assert not gateway.control.is_online(device.id)
    assert 1 == sessions.count("device_disconnected", device.id)
    await device.wait_closed()


async def test_quiet_live_device_is_pinged_and_stays_online(
    gateway: DeviceGateway, device: TestDevice, sessions: FakeSessions, clock: FakeClock
) -> None:
    """After ping_after seconds of silence the gateway pings; the device's ACK keeps the link alive."""
    heard = sessions.count("device_heard", device.id)
    for round_ in range(1, 4):
        clock.advance(20.0)
        await device.wait_event(PingReceived, round_)
        await sessions.wait_count("device_heard", device.id, heard + round_)
    assert gateway.control.is_online(device.id)
    assert 1 == gateway.statistics().online


async def test_wait_online_and_disconnect(gateway: DeviceGateway, sessions: FakeSessions) -> None:
    """wait_online returns once the device is linked; disconnect closes the link and it goes offline."""
    dev = TestDevice(4, demo_app())
    waiting = asyncio.create_task(gateway.wait_online(dev.id))
    await connected_device(gateway, sessions, dev)
    await waiting
    assert gateway.control.is_online(dev.id)
    await gateway.control.disconnect(dev.id)
    await dev.wait_closed()
    await sessions.wait_for(lambda: dev.id not in sessions.online)
    assert not gateway.control.is_online(dev.id)


async def test_runs_on_the_system_clock(sessions: FakeSessions) -> None:
    """With the real clock, timers are loop callbacks: a device connects, answers and reads the time."""
    async with running_gateway(sessions, SystemClock()) as gateway:
        dev = await connected_device(gateway, sessions, TestDevice(5, demo_app()))
        assert 3 == await gateway.control.call_function(dev.id, "len", "abc", timeout=TIMEOUT)
        dev.send(RequestTime())
        [answer] = await dev.wait_event(TimeReceived)
        assert isinstance(answer, TimeReceived)
        assert abs(time.time() - answer.unix_time) < 5
        await dev.close()


async def test_stop_reports_every_device_offline(sessions: FakeSessions, clock: FakeClock) -> None:
    """Stopping the gateway closes every link and reports each device disconnected once."""
    async with running_gateway(sessions, clock) as gateway:
        devices = [await connected_device(gateway, sessions, TestDevice(n, demo_app())) for n in (10, 11)]
    for dev in devices:
        await dev.wait_closed()
        assert 1 == sessions.count("device_disconnected", dev.id)
    assert set() == sessions.online
