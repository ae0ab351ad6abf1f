"""
Test doubles for the gateway tests: an in-memory `DeviceSessions`, a scripted device over real TCP, keys.

`TestDevice` is a device-role `protocol.Connection` on asyncio streams, written here rather than taken
from `devicecloud.virtualdevice` so the gateway is tested against the protocol alone. Its own timers are
off: only the gateway's clock matters in these tests.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.clock import Clock
from devicecloud.domain.devices import DeviceDescription, DeviceHelloInfo
from devicecloud.gateway import DeviceGateway
from devicecloud.protocol import (
    NEED_DATA,
    Command,
    Connection,
    ConnectionState,
    DescribeRequested,
    DeviceHello,
    Event,
    FunctionCallRequested,
    HelloFlags,
    RejectRequest,
    RemoteProtocolError,
    RespondDescribe,
    RespondFunction,
    RespondVariable,
    ResponseStyle,
    Role,
    SendDescribe,
    ServerHelloReceived,
    Timing,
    VariableRequested,
    VariableType,
    build_describe,
    public_key_der,
)

# A guard against hanging tests, in real seconds; no test waits on it to pass.
GUARD = 10.0
NO_TIMERS = Timing(handshake_timeout=None, request_timeout=None, ping_after=None, idle_timeout=None)


@functools.cache
def server_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def device_key(n: int) -> rsa.RSAPrivateKey:
    # The protocol fixes device keys at RSA-1024.
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


def device_id(n: int) -> str:
    return f"{n:024x}"


class FakeSessions:
    """
    `DeviceSessions` in memory: known keys, and a log of every call in order.
    """

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.online: set[str] = set()
        self.hellos: dict[str, DeviceHelloInfo] = {}
        self.descriptions: dict[str, list[DeviceDescription]] = {}
        self.vitals: list[tuple[str, dict[str, Any]]] = []  # what devices sent unasked, in order
        self.fail_on: tuple[str, str] | None = None  # (method, device id) that raises: a broken service
        # What wait_for() waits on: each predicate is checked after every call (no task, no lock).
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def register(self, device: str, key: rsa.RSAPrivateKey) -> None:
        self.keys[device] = public_key_der(key.public_key())

    async def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self._wake()
        if call[:2] == self.fail_on:
            raise RuntimeError(f"{call[0]} is broken")

    async def check_device_key(self, device_id: str, offered: bytes, ip_address: str | None) -> bytes | None:
        await self._record("check_device_key", device_id, ip_address)
        return self.keys.get(device_id)

    async def device_connected(self, device_id: str, ip_address: str | None, hello: DeviceHelloInfo) -> None:
        self.online.add(device_id)
        self.hellos[device_id] = hello
        await self._record("device_connected", device_id)

    async def device_described(self, device_id: str, description: DeviceDescription) -> None:
        self.descriptions.setdefault(device_id, []).append(description)
        await self._record("device_described", device_id)

    def device_vitals(self, device_id: str, vitals: Mapping[str, Any]) -> None:
        self.vitals.append((device_id, dict(vitals)))

    def device_heard(self, device_id: str) -> None:
        self.calls.append(("device_heard", device_id))  # the port's one synchronous call
        self._wake()

    def _wake(self) -> None:
        for predicate, waiter in self._waiters:
            if not waiter.done() and predicate():
                waiter.set_result(None)

    async def device_disconnected(self, device_id: str) -> None:
        self.online.discard(device_id)
        await self._record("device_disconnected", device_id)

    def count(self, method: str, device: str) -> int:
        return sum(1 for c in self.calls if c[:2] == (method, device))

    async def wait_count(self, method: str, device: str, at_least: int) -> None:
        await self.wait_for(lambda: self.count(method, device) >= at_least)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """
        Wait until ``predicate()`` holds after some call (or already holds).
        """
        if predicate():
            return
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(GUARD):
                await entry[1]
        finally:
            self._waiters.remove(entry)


@dataclass
class DeviceApp:
    """
    What a test device answers: functions (argument → return value) and typed variables.
    """

    functions: dict[str, Callable[[bytes], int]] = field(default_factory=dict)
    variables: dict[str, tuple[VariableType, Any]] = field(default_factory=dict)
    platform_id: int = 6
    # Listed in the Describe (as functions and int32 variables) but refused with 4.04 when asked for.
    phantoms: tuple[str, ...] = ()

    def describe(self, flags: int) -> bytes:
        return build_describe(
            functions=[*self.functions, *self.phantoms],
            variables={name: t for name, (t, _) in self.variables.items()}
            | dict.fromkeys(self.phantoms, VariableType.INT),
            platform_id=self.platform_id,
            flags=flags,
        )


class TestDevice:
    """
    A device on a real socket. It answers requests from its `DeviceApp` unless `silent`.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        n: int,
        app: DeviceApp | None = None,
        *,
        style: ResponseStyle = ResponseStyle.PIGGYBACK,
        key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.id = device_id(n)
        self.app = app or DeviceApp()
        self.style = style
        flags = HelloFlags.DEVICE_INITIATED_DESCRIBE if style is ResponseStyle.SEPARATE else 0
        self.conn = Connection(
            Role.DEVICE,
            now=0.0,
            server_public_key=server_key().public_key(),
            device_private_key=key or device_key(n),
            device_id=self.id,
            hello=DeviceHello(flags=flags, platform_id=self.app.platform_id),
            response_style=style,
            timing=NO_TIMERS,
        )
        self.events: list[Event] = []
        self.silent = False  # stop reading: neither requests nor pings get an answer
        self.error: RemoteProtocolError | None = None
        self.closed = asyncio.Event()
        self.ready = asyncio.Event()
        self._seen = asyncio.Condition()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._task = asyncio.create_task(self._run())

    async def online(self) -> None:
        """
        Connect flow finished: the server Hello arrived (raises if the link closed first).
        """
        async with asyncio.timeout(GUARD):
            done = asyncio.create_task(self.closed.wait())
            ready = asyncio.create_task(self.ready.wait())
            await asyncio.wait({done, ready}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            ready.cancel()
        if not self.ready.is_set():
            raise AssertionError(f"device {self.id} was closed before it came online")

    async def wait_event(self, kind: type[Event], count: int = 1) -> list[Event]:
        """
        Wait until the device has seen ``count`` events of ``kind``; returns them.
        """

        def seen() -> list[Event]:
            return [e for e in self.events if isinstance(e, kind)]

        async with asyncio.timeout(GUARD), self._seen:
            await self._seen.wait_for(lambda: len(seen()) >= count)
        return seen()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(GUARD):
            await self.closed.wait()

    def send(self, command: Command) -> int | None:
        rid = self.conn.send(command, 0.0)
        self.write(self.conn.data_to_send())
        return rid

    def write(self, data: bytes) -> None:
        if self._writer is not None and data and not self._writer.transport.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with suppress(OSError):
                await self._writer.wait_closed()
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self._reader is not None
        try:
            while True:
                try:
                    data = await self._reader.read(65536)
                except OSError:
                    data = b""
                if self.silent and data:
                    continue
                if self.conn.state is not ConnectionState.CLOSED:
                    try:
                        self.conn.receive_data(data, 0.0)
                    except RemoteProtocolError as exc:
                        self.error = exc
                self._answer()
                self.write(self.conn.data_to_send())
                async with self._seen:
                    self._seen.notify_all()
                if not data or self.conn.state is ConnectionState.CLOSED:
                    break
        finally:
            if self._writer is not None:
                self._writer.close()
            self.closed.set()

    def _answer(self) -> None:
        while (event := self.conn.next_event()) is not NEED_DATA:
            assert isinstance(event, Event)
            self.events.append(event)
            if isinstance(event, ServerHelloReceived):
                if self.style is ResponseStyle.SEPARATE:
                    self.conn.send(SendDescribe(self.app.describe(3)), 0.0)
                self.ready.set()
            elif isinstance(event, FunctionCallRequested):
                fn = self.app.functions.get(event.name)
                answer: Command = (
                    RespondFunction(event.request_id, fn(event.argument))
                    if fn
                    else RejectRequest(event.request_id)
                )
                self.conn.send(answer, 0.0)
            elif isinstance(event, VariableRequested):
                var = self.app.variables.get(event.name)
                answer = (
                    RespondVariable(event.request_id, var[0], var[1])
                    if var
                    else RejectRequest(event.request_id)
                )
                self.conn.send(answer, 0.0)
            elif isinstance(event, DescribeRequested):
                self.conn.send(RespondDescribe(event.request_id, self.app.describe(event.flags)), 0.0)


@asynccontextmanager
async def running_gateway(
    sessions: FakeSessions, clock: Clock, **options: Any
) -> AsyncIterator[DeviceGateway]:
    """
    A started gateway on 127.0.0.1 and a free port; stopped (every link closed) on exit.
    """
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0} | options
    gateway = DeviceGateway(sessions, server_key(), clock=clock, **settings)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def connected_device(gateway: DeviceGateway, sessions: FakeSessions, device: TestDevice) -> TestDevice:
    """
    Register the device's key, connect it and wait until the gateway has reported it described.
    """
    sessions.keys.setdefault(device.id, public_key_der(device_key(int(device.id, 16)).public_key()))
    await device.connect(gateway.port)
    await device.online()
    await sessions.wait_for(lambda: sessions.count("device_described", device.id) > 0)
    return device


async def until(predicate: Callable[[], bool]) -> None:
    """
    Yield to the loop until ``predicate()`` holds (bounded by the real-time guard).
    """
    async with asyncio.timeout(GUARD):
        # Socket teardown and task steps have no event to wait on; poll briefly (never a timing assumption).
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
