"""A cloud-role and a device-role Connection driven against each other in memory (h11's ConnectionPair)."""

from __future__ import annotations

from typing import Any

import pytest

from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    AcknowledgeEvent,
    CallFunction,
    Close,
    Code,
    Connection,
    ConnectionClosed,
    ConnectionState,
    DescribeFlags,
    DescribeReceived,
    DescribeRequested,
    DeviceHello,
    DeviceIdentified,
    Event,
    EventPublished,
    EventReceived,
    FunctionCallRequested,
    FunctionReturned,
    HandshakeCompleted,
    HelloReceived,
    LocalProtocolError,
    Ping,
    PingReceived,
    PublishEvent,
    ReadVariable,
    RejectDevice,
    RejectRequest,
    RemoteProtocolError,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    RequestTime,
    RequestTimedOut,
    RespondDescribe,
    RespondFunction,
    RespondVariable,
    ResponseStyle,
    Role,
    SendDescribe,
    SendEvent,
    SendTime,
    ServerHelloReceived,
    Signal,
    SignalRequested,
    Subscribe,
    SubscribeRequested,
    SubscriptionScope,
    TimeReceived,
    TimeRequested,
    Timing,
    VariableRequested,
    VariableType,
    VariableValue,
    build_describe,
    public_key_der,
)


class ConnectionPair:
    """Two connections wired back to back, with a fake clock and an event log per side."""

    def __init__(
        self,
        keys: Any,
        *,
        style: ResponseStyle = ResponseStyle.PIGGYBACK,
        cloud_timing: Timing | None = None,
        device_timing: Timing | None = None,
        accept_key: Any = None,
    ) -> None:
        self.keys = keys
        self.now = 0.0
        self.accept_key = accept_key or keys.device.public_key()
        self.cloud = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server, timing=cloud_timing)
        self.device = Connection(
            Role.DEVICE,
            now=0.0,
            server_public_key=keys.server.public_key(),
            device_private_key=keys.device,
            device_id=keys.device_id,
            hello=DeviceHello(product_id=0x1234, product_firmware_version=7, flags=0x20, platform_id=6),
            response_style=style,
            timing=device_timing,
        )
        self.cloud_events: list[Event] = []
        self.device_events: list[Event] = []
        self.link_up = True

    @staticmethod
    def _drain(conn: Connection) -> list[Event]:
        out: list[Event] = []
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, Event)
            out.append(event)
        return out

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Deliver bytes both ways until quiet; returns the (cloud, device) events seen."""
        cloud_seen: list[Event] = []
        device_seen: list[Event] = []
        while True:
            to_device = self.cloud.data_to_send()
            to_cloud = self.device.data_to_send()
            if self.link_up and to_device and self.device.state is not ConnectionState.CLOSED:
                self.device.receive_data(to_device, self.now)
            if self.link_up and to_cloud and self.cloud.state is not ConnectionState.CLOSED:
                self.cloud.receive_data(to_cloud, self.now)
            new_cloud, new_device = self._drain(self.cloud), self._drain(self.device)
            for event in new_cloud:
                if isinstance(event, DeviceIdentified):
                    self.cloud.send(AcceptDevice(self.accept_key), self.now)
            cloud_seen += new_cloud
            device_seen += new_device
            if not (to_device or to_cloud or new_cloud or new_device):
                break
        self.cloud_events += cloud_seen
        self.device_events += device_seen
        return cloud_seen, device_seen

    def advance(self, seconds: float) -> tuple[list[Event], list[Event]]:
        """Move the fake clock, firing both connections' timers on the way."""
        target = self.now + seconds
        cloud_seen: list[Event] = []
        device_seen: list[Event] = []
        while True:
            timers = [t for t in (self.cloud.get_timer(), self.device.get_timer()) if t is not None]
            nxt = min(timers) if timers else None
            if nxt is None or nxt > target:
                break
            self.now = max(self.now, nxt)
            self.cloud.handle_timer(self.now)
            self.device.handle_timer(self.now)
            c, d = self.pump()
            cloud_seen += c
            device_seen += d
        self.now = target
        return cloud_seen, device_seen


@pytest.fixture
def pair(keys: Any) -> ConnectionPair:
    p = ConnectionPair(keys)
    p.pump()
    return p


def _connected(keys: Any, style: ResponseStyle) -> ConnectionPair:
    p = ConnectionPair(keys, style=style)
    p.pump()
    return p


STYLES = [ResponseStyle.PIGGYBACK, ResponseStyle.SEPARATE]


def test_handshake_and_hello_establish_both_ends(keys: Any) -> None:
    """The handshake agrees on a session and the Hello exchange leaves both ends established."""
    p = ConnectionPair(keys)
    cloud_events, device_events = p.pump()
    assert [
        DeviceIdentified(keys.device_id, public_key_der(keys.device.public_key())),
        HandshakeCompleted(keys.device_id),
        HelloReceived(product_id=0x1234, product_firmware_version=7, flags=0x20, platform_id=6),
    ] == cloud_events
    assert [HandshakeCompleted(keys.device_id), ServerHelloReceived()] == device_events
    assert ConnectionState.ESTABLISHED == p.cloud.state == p.device.state


def test_reject_device_closes_the_cloud_side(keys: Any) -> None:
    """RejectDevice ends the connection without sending a handshake reply."""
    cloud = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server)
    device = Connection(
        Role.DEVICE,
        now=0.0,
        server_public_key=keys.server.public_key(),
        device_private_key=keys.device,
        device_id=keys.device_id,
    )
    device.receive_data(cloud.data_to_send(), 0.0)
    cloud.receive_data(device.data_to_send(), 0.0)
    assert isinstance(cloud.next_event(), DeviceIdentified)
    cloud.send(RejectDevice(), 0.0)
    assert ConnectionClosed("unknown device") == cloud.next_event()
    assert b"" == cloud.data_to_send()


def test_wrong_device_key_fails_the_device_handshake(keys: Any) -> None:
    """Key material encrypted to another key is a RemoteProtocolError on the device."""
    p = ConnectionPair(keys, accept_key=keys.other_device.public_key())
    with pytest.raises(RemoteProtocolError):
        p.pump()
    assert ConnectionState.CLOSED == p.device.state


def test_tampered_signature_fails_the_device_handshake(keys: Any) -> None:
    """A handshake reply whose signature does not verify is refused."""
    cloud = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server)
    device = Connection(
        Role.DEVICE,
        now=0.0,
        server_public_key=keys.server.public_key(),
        device_private_key=keys.device,
        device_id=keys.device_id,
    )
    device.receive_data(cloud.data_to_send(), 0.0)
    cloud.receive_data(device.data_to_send(), 0.0)
    cloud.next_event()
    cloud.send(AcceptDevice(keys.device.public_key()), 0.0)
    reply = bytearray(cloud.data_to_send())
    reply[-1] ^= 1
    with pytest.raises(RemoteProtocolError, match="signature"):
        device.receive_data(bytes(reply), 0.0)


@pytest.mark.parametrize("style", STYLES)
def test_function_call_returns_the_value(keys: Any, style: ResponseStyle) -> None:
    """CallFunction reaches the device with name and argument; its int32 result comes back."""
    p = _connected(keys, style)
    rid = p.cloud.send(CallFunction("setint", "-12345"), p.now)
    _, device_events = p.pump()
    [call] = device_events
    assert isinstance(call, FunctionCallRequested)
    assert ("setint", b"-12345") == (call.name, call.argument)
    p.device.send(RespondFunction(call.request_id, -12345), p.now)
    cloud_events, _ = p.pump()
    assert [FunctionReturned(rid or 0, -12345)] == cloud_events


VARIABLES = [
    (VariableType.BOOL, True),
    (VariableType.BOOL, False),
    (VariableType.INT, -42),
    (VariableType.INT, 2**31 - 1),
    (VariableType.DOUBLE, 1234.5678),
    (VariableType.DOUBLE, -0.5),
    (VariableType.STRING, "hello, cloud"),
    (VariableType.STRING, ""),
]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("var_type", "value"), VARIABLES)
def test_variable_read_every_type(
    keys: Any, style: ResponseStyle, var_type: VariableType, value: Any
) -> None:
    """Every variable type round-trips in both response styles."""
    p = _connected(keys, style)
    rid = p.cloud.send(ReadVariable("v1", var_type), p.now)
    _, device_events = p.pump()
    [request] = device_events
    assert isinstance(request, VariableRequested)
    assert "v1" == request.name
    p.device.send(RespondVariable(request.request_id, var_type, value), p.now)
    cloud_events, _ = p.pump()
    [result] = cloud_events
    assert isinstance(result, VariableValue)
    assert (rid, "v1", var_type, value) == (result.request_id, result.name, result.var_type, result.value)


def test_unknown_variable_is_refused_with_404(pair: ConnectionPair) -> None:
    """A device can refuse a variable request; the cloud sees RequestFailed with the code."""
    rid = pair.cloud.send(ReadVariable("nope"), pair.now)
    _, device_events = pair.pump()
    [request] = device_events
    assert isinstance(request, VariableRequested)
    pair.device.send(RejectRequest(request.request_id, Code.NOT_FOUND), pair.now)
    cloud_events, _ = pair.pump()
    assert [RequestFailed(rid or 0, Code.NOT_FOUND, "peer answered 4.04")] == cloud_events


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("flags", [None, DescribeFlags.APPLICATION, DescribeFlags.SYSTEM])
def test_describe_in_both_styles(keys: Any, style: ResponseStyle, flags: DescribeFlags | None) -> None:
    """RequestDescribe is answered with the device's JSON, parsed on arrival."""
    p = _connected(keys, style)
    rid = p.cloud.send(RequestDescribe(flags), p.now)
    _, device_events = p.pump()
    [request] = device_events
    assert isinstance(request, DescribeRequested)
    assert (flags or DescribeFlags.SYSTEM | DescribeFlags.APPLICATION) == request.flags
    payload = build_describe(
        functions=["f1"], variables={"v1": VariableType.INT}, platform_id=6, flags=request.flags
    )
    p.device.send(RespondDescribe(request.request_id, payload), p.now)
    cloud_events, device_events = p.pump()
    [described] = cloud_events
    assert isinstance(described, DescribeReceived)
    assert rid == described.request_id
    if request.flags & DescribeFlags.APPLICATION:
        assert ("f1",) == described.description.functions
        assert {"v1": VariableType.INT} == described.description.variables
    else:
        assert (6, None) == (described.description.platform_id, described.description.functions)
    assert [] == device_events  # the 2.x separate CON Describe is ACKed silently


def test_device_initiated_describe(pair: ConnectionPair) -> None:
    """A 2.x device can volunteer its Describe; the cloud ACKs it and reports it without a request id."""
    payload = build_describe(functions=["go"], platform_id=6)
    rid = pair.device.send(SendDescribe(payload), pair.now)
    cloud_events, device_events = pair.pump()
    [described] = cloud_events
    assert isinstance(described, DescribeReceived)
    assert (None, ("go",)) == (described.request_id, described.description.functions)
    assert [RequestCompleted(rid or 0, Code.EMPTY)] == device_events


def test_device_events_reach_the_cloud(pair: ConnectionPair) -> None:
    """Published events keep name, data, scope and TTL; a WITH_ACK event waits for the application's ACK."""
    pair.device.send(PublishEvent("conf/pub3", "public-ttl3600", private=False, ttl=3600), pair.now)
    pair.device.send(PublishEvent("conf/pub6"), pair.now)
    rid = pair.device.send(PublishEvent("conf/pub5", b"acked", with_ack=True), pair.now)
    cloud_events, device_events = pair.pump()
    acked = cloud_events[-1]
    assert isinstance(acked, EventPublished)
    assert acked.request_id is not None
    assert [
        EventPublished("conf/pub3", b"public-ttl3600", private=False, ttl=3600, confirmable=False),
        EventPublished("conf/pub6", None, private=True, ttl=60, confirmable=False),
        EventPublished(
            "conf/pub5", b"acked", private=True, ttl=60, confirmable=True, request_id=acked.request_id
        ),
    ] == cloud_events
    assert [] == device_events  # no ACK until the application decides
    assert pair.cloud.send(AcknowledgeEvent(acked.request_id), pair.now) is None
    _, device_events = pair.pump()
    assert [RequestCompleted(rid or 0, Code.EMPTY)] == device_events


def test_refused_event_fails_the_devices_publish(pair: ConnectionPair) -> None:
    """A CON event the cloud refuses (over the rate limit) gets ACK 4.00: the device's publish fails."""
    rid = pair.device.send(PublishEvent("too/fast", b"x", with_ack=True), pair.now)
    [published], _ = pair.pump()
    assert isinstance(published, EventPublished)
    assert published.request_id is not None
    pair.cloud.send(AcknowledgeEvent(published.request_id, accepted=False), pair.now)
    _, device_events = pair.pump()
    [failed] = device_events
    assert isinstance(failed, RequestFailed)
    assert (rid, Code.BAD_REQUEST) == (failed.request_id, failed.code)
    assert ConnectionState.ESTABLISHED is pair.device.state  # a refusal is no protocol error


def test_event_acknowledgements_are_checked(pair: ConnectionPair) -> None:
    """A NON event has no request id; acknowledging twice, or something else, is the application's error."""
    pair.device.send(PublishEvent("plain"), pair.now)
    pair.device.send(RequestTime(), pair.now)
    cloud_events, _ = pair.pump()
    plain, asked = cloud_events
    assert isinstance(plain, EventPublished)
    assert plain.request_id is None
    assert isinstance(asked, TimeRequested)
    with pytest.raises(LocalProtocolError):
        pair.cloud.send(AcknowledgeEvent(asked.request_id), pair.now)  # not an event
    pair.device.send(PublishEvent("acked", with_ack=True), pair.now)
    [acked], _ = pair.pump()
    assert isinstance(acked, EventPublished)
    assert acked.request_id is not None
    pair.cloud.send(AcknowledgeEvent(acked.request_id), pair.now)
    with pytest.raises(LocalProtocolError):
        pair.cloud.send(AcknowledgeEvent(acked.request_id), pair.now)
    with pytest.raises(LocalProtocolError):
        pair.device.send(AcknowledgeEvent(acked.request_id), pair.now)  # a cloud-role command


def test_cloud_event_with_slashes_and_max_age_reaches_the_device(pair: ConnectionPair) -> None:
    """A split name arrives whole on the device; Max-Age travels only when given."""
    pair.cloud.send(SendEvent("a/b/c", "d", max_age=3600, split_path=True), pair.now)
    pair.cloud.send(SendEvent("plain", None, split_path=True), pair.now)
    _, device_events = pair.pump()
    assert [
        EventReceived("a/b/c", b"d", private=False, ttl=3600),
        EventReceived("plain", None, private=False, ttl=60),
    ] == device_events


@pytest.mark.parametrize("split", [False, True])
def test_cloud_events_reach_the_device(pair: ConnectionPair, split: bool) -> None:
    """SendEvent delivers the full name whether it travels as one Uri-Path or split into segments."""
    assert (
        pair.cloud.send(SendEvent("conf/in/two", "data", private=True, max_age=120, split_path=split), 0)
        is None
    )
    _, device_events = pair.pump()
    assert [EventReceived("conf/in/two", b"data", private=True, ttl=120)] == device_events


def test_subscribe_scopes(pair: ConnectionPair) -> None:
    """Each subscription scope arrives as sent."""
    pair.device.send(Subscribe("spark"), pair.now)
    pair.device.send(Subscribe("conf/in", SubscriptionScope.MY_DEVICES), pair.now)
    pair.device.send(Subscribe("devin", SubscriptionScope.DEVICE, "0123456789abcdef01234567"), pair.now)
    cloud_events, device_events = pair.pump()
    assert [
        SubscribeRequested("spark", SubscriptionScope.ALL_DEVICES),
        SubscribeRequested("conf/in", SubscriptionScope.MY_DEVICES),
        SubscribeRequested("devin", SubscriptionScope.DEVICE, "0123456789abcdef01234567"),
    ] == cloud_events
    assert 3 == len([e for e in device_events if isinstance(e, RequestCompleted)])


def test_time_request(pair: ConnectionPair) -> None:
    """The device asks for the time and receives what the cloud application answers."""
    rid = pair.device.send(RequestTime(), pair.now)
    cloud_events, _ = pair.pump()
    [asked] = cloud_events
    assert isinstance(asked, TimeRequested)
    pair.cloud.send(SendTime(asked.request_id, 1_700_000_000), pair.now)
    _, device_events = pair.pump()
    assert [TimeReceived(rid or 0, 1_700_000_000)] == device_events


def test_pings_both_ways(pair: ConnectionPair) -> None:
    """A ping from either side is ACKed automatically and completes on the sender."""
    rid = pair.cloud.send(Ping(), pair.now)
    cloud_events, device_events = pair.pump()
    assert ([RequestCompleted(rid or 0, Code.EMPTY)], [PingReceived()]) == (cloud_events, device_events)
    rid = pair.device.send(Ping(), pair.now)
    cloud_events, device_events = pair.pump()
    assert ([PingReceived()], [RequestCompleted(rid or 0, Code.EMPTY)]) == (cloud_events, device_events)


def test_signal(pair: ConnectionPair) -> None:
    """Signal is applied by the device and acknowledged with 2.04."""
    rid = pair.cloud.send(Signal(on=True), pair.now)
    cloud_events, device_events = pair.pump()
    assert ([RequestCompleted(rid or 0, Code.CHANGED)], [SignalRequested(on=True)]) == (
        cloud_events,
        device_events,
    )


def test_unanswered_function_call_times_out(keys: Any) -> None:
    """Without a FunctionReturn the request times out at its deadline; a late answer is ignored."""
    no_keepalive = Timing(ping_after=None, idle_timeout=None)
    pair = ConnectionPair(keys, cloud_timing=no_keepalive, device_timing=no_keepalive)
    pair.pump()
    rid = pair.cloud.send(CallFunction("slow"), pair.now)
    _, device_events = pair.pump()
    [call] = device_events
    assert isinstance(call, FunctionCallRequested)
    assert pair.now + 30.0 == pair.cloud.get_timer()
    cloud_events, _ = pair.advance(29.9)
    assert [] == [e for e in cloud_events if isinstance(e, RequestTimedOut)]
    cloud_events, _ = pair.advance(0.2)
    assert [RequestTimedOut(rid or 0)] == cloud_events
    pair.device.send(RespondFunction(call.request_id, 1), pair.now)
    cloud_events, _ = pair.pump()
    assert [] == cloud_events


def test_cloud_pings_a_quiet_device_and_drops_a_dead_one(keys: Any) -> None:
    """Cloud keep-alive: a ping after ping_after of silence, the link closed after idle_timeout."""
    quiet_device = Timing(ping_after=None, idle_timeout=None)
    p = ConnectionPair(
        keys, cloud_timing=Timing(ping_after=20.0, idle_timeout=35.0), device_timing=quiet_device
    )
    p.pump()
    _, device_events = p.advance(20.5)
    assert [PingReceived()] == device_events  # the device answered, so the link lives on
    p.link_up = False
    cloud_events, _ = p.advance(60.0)
    assert [ConnectionClosed("nothing received for 35.0 s")] == cloud_events
    assert ConnectionState.CLOSED == p.cloud.state


def test_device_pings_after_15_seconds_of_silence(keys: Any) -> None:
    """The device role pings like Device OS does: 15 s after the last received message."""
    p = ConnectionPair(keys, cloud_timing=Timing(ping_after=None, idle_timeout=None))
    p.pump()
    cloud_events, _ = p.advance(14.9)
    assert [] == cloud_events
    cloud_events, _ = p.advance(0.2)
    assert [PingReceived()] == cloud_events


def test_handshake_timeout(keys: Any) -> None:
    """A device that never answers the nonce is dropped after handshake_timeout."""
    cloud = Connection(
        Role.CLOUD, now=100.0, server_private_key=keys.server, timing=Timing(handshake_timeout=5.0)
    )
    assert 105.0 == cloud.get_timer()
    cloud.handle_timer(105.0)
    assert ConnectionClosed("handshake timed out") == cloud.next_event()
    assert cloud.get_timer() is None


def test_eof_fails_pending_requests(pair: ConnectionPair) -> None:
    """When the peer closes, pending requests fail and ConnectionClosed comes last."""
    rid = pair.cloud.send(CallFunction("f"), pair.now)
    pair.cloud.receive_data(b"", pair.now)
    assert [
        RequestFailed(rid or 0, None, "connection closed"),
        ConnectionClosed("peer closed the connection"),
    ] == [
        pair.cloud.next_event(),
        pair.cloud.next_event(),
    ]
    assert NEED_DATA is pair.cloud.next_event()


def test_local_close(pair: ConnectionPair) -> None:
    """Close ends the connection; later commands are a LocalProtocolError."""
    pair.cloud.send(Close(), pair.now)
    assert ConnectionClosed("closed locally") == pair.cloud.next_event()
    with pytest.raises(LocalProtocolError):
        pair.cloud.send(Ping(), pair.now)


def test_garbage_after_handshake_is_a_remote_error(pair: ConnectionPair) -> None:
    """A frame that does not decrypt closes the connection with RemoteProtocolError, and it stays failed."""
    with pytest.raises(RemoteProtocolError):
        pair.cloud.receive_data(b"\x00\x10" + bytes(16), pair.now)
    assert ConnectionClosed(pair.cloud.next_event().reason, error=True) == ConnectionClosed(  # type: ignore[union-attr]
        "bad PKCS#7 padding", error=True
    )
    with pytest.raises(RemoteProtocolError):
        pair.cloud.receive_data(b"x", pair.now)


def test_bad_message_counter_is_a_remote_error(pair: ConnectionPair) -> None:
    """A device message id that skips ahead is refused ("Bad Counter")."""
    pair.device._ids.next()  # the device loses one id (white-box: no public way to misbehave)
    pair.device.send(PublishEvent("x"), pair.now)
    with pytest.raises(RemoteProtocolError, match="bad message counter"):
        pair.pump()


def test_commands_in_the_wrong_state_or_role(keys: Any, pair: ConnectionPair) -> None:
    """Misuse is a LocalProtocolError: too early, the other role's command, or an unknown request id."""
    fresh = Connection(Role.CLOUD, now=0.0, server_private_key=keys.server)
    with pytest.raises(LocalProtocolError):
        fresh.send(CallFunction("f"), 0.0)
    with pytest.raises(LocalProtocolError):
        pair.device.send(CallFunction("f"), pair.now)
    with pytest.raises(LocalProtocolError):
        pair.cloud.send(PublishEvent("e"), pair.now)
    with pytest.raises(LocalProtocolError):
        pair.device.send(RespondFunction(999, 1), pair.now)
    with pytest.raises(LocalProtocolError):
        Connection(Role.DEVICE, now=0.0)


def test_a_device_os_3_hello_carries_its_system_version_and_ota_limits(keys: Any) -> None:
    """The 20-byte Hello of Device OS ≥ 3.0 over TCP: system version, max binary size, OTA chunk size."""
    p = ConnectionPair(keys)
    p.device = Connection(
        Role.DEVICE,
        now=0.0,
        server_public_key=keys.server.public_key(),
        device_private_key=keys.device,
        device_id=keys.device_id,
        hello=DeviceHello(product_id=6, flags=0x20, platform_id=6, limits=(3005, 1_572_864, 512)),
    )
    assert 20 == len(DeviceHello(limits=(3005, 1_572_864, 512)).payload())
    cloud_events, _ = p.pump()
    (hello,) = [e for e in cloud_events if isinstance(e, HelloReceived)]
    assert hello == HelloReceived(
        6, 0xFFFF, 0x20, 6, system_version=3005, max_binary=1_572_864, ota_chunk_size=512
    )
