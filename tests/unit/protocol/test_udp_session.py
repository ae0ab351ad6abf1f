"""The UDP front of the protocol session: CoAP over DTLS, both roles, sans-IO (no sockets, no clock)."""

from __future__ import annotations

from tests.support.dtls import (
    ADDRESS,
    COOKIE_SECRET,
    DEVICE_ID,
    DEVICE_KEY,
    OTHER_KEY,
    client_config,
    server_config,
)

from devicecloud.protocol import (
    NEED_DATA,
    AcceptDevice,
    CallFunction,
    ConnectionClosed,
    ConnectionState,
    DescribeReceived,
    DescribeRequested,
    DeviceHello,
    DeviceIdentified,
    Event,
    FunctionCallRequested,
    FunctionReturned,
    HelloReceived,
    RejectDevice,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    RespondDescribe,
    RespondFunction,
    Role,
    SendDescribe,
    ServerHelloReceived,
)
from devicecloud.protocol.codes import DescribeFlags, VariableType
from devicecloud.protocol.describe import build_describe
from devicecloud.protocol.dtls import DtlsClient, DtlsServer, check_client_hello, spki_der
from devicecloud.protocol.udp import DESCRIBE_BLOCK, UdpSession, idle_timeout_for


class Pair:
    """A cloud and a device session joined by a lossless (or lossy, on request) datagram pipe."""

    def __init__(self) -> None:
        self.now = 0.0
        self.device = UdpSession(
            Role.DEVICE,
            endpoint=DtlsClient(client_config(), now=0.0),
            now=0.0,
            device_id=DEVICE_ID,
            hello=DeviceHello(product_id=12, flags=0x20, platform_id=12, limits=(5000, 1_000_000, 512)),
        )
        self.cloud: UdpSession | None = None
        self.cloud_events: list[Event] = []
        self.device_events: list[Event] = []
        self.lose_next_to_device = 0
        self.lose_next_to_cloud = 0
        self.up: list[bytes] = []

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            while out := self.device.data_to_send():
                moved = True
                self.up.append(out)
                if self.cloud is None:
                    check = check_client_hello(out, ADDRESS, (COOKIE_SECRET,))
                    if check.reply is not None:
                        self.device.receive_data(check.reply, self.now)
                    elif check.accept:
                        server = DtlsServer.accept(server_config(), check, ADDRESS, now=self.now)
                        self.cloud = UdpSession(Role.CLOUD, endpoint=server, now=self.now)
                elif self.lose_next_to_cloud:
                    self.lose_next_to_cloud -= 1
                else:
                    self.cloud.receive_data(out, self.now)
            if self.cloud is not None:
                while out := self.cloud.data_to_send():
                    moved = True
                    if self.lose_next_to_device:
                        self.lose_next_to_device -= 1
                        continue
                    self.device.receive_data(out, self.now)
                self.cloud_events += _drain(self.cloud)
            self.device_events += _drain(self.device)
            if not moved:
                return

    def accept(self) -> None:
        assert self.cloud is not None
        self.cloud.send(AcceptDevice(DEVICE_KEY.public_key()), self.now)
        self.pump()


def _drain(session: UdpSession) -> list[Event]:
    out: list[Event] = []
    while (event := session.next_event()) is not NEED_DATA:
        assert isinstance(event, Event)
        out.append(event)
    return out


def test_a_device_connects_its_hello_names_it_and_its_dtls_key_is_checked() -> None:
    pair = Pair()
    pair.pump()
    assert pair.cloud is not None
    identified = [e for e in pair.cloud_events if isinstance(e, DeviceIdentified)]
    assert [DEVICE_ID.hex()] == [e.device_id for e in identified]
    assert spki_der(DEVICE_KEY.public_key()) == identified[0].offered_public_key_der
    assert ConnectionState.AWAIT_DEVICE_KEY == pair.cloud.state
    pair.accept()
    (hello,) = [e for e in pair.cloud_events if isinstance(e, HelloReceived)]
    assert (12, 12) == (hello.platform_id, hello.product_id)
    assert (5000, 512) == (hello.system_version, hello.ota_chunk_size)
    assert any(isinstance(e, ServerHelloReceived) for e in pair.device_events)
    assert ConnectionState.ESTABLISHED == pair.cloud.state == pair.device.state


def test_a_function_call_round_trip_with_con_separate_response() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    assert pair.cloud is not None
    rid = pair.cloud.send(CallFunction("digitalwrite", b"D7,HIGH"), pair.now)
    pair.pump()
    (call,) = [e for e in pair.device_events if isinstance(e, FunctionCallRequested)]
    pair.device.send(RespondFunction(call.request_id, 1), pair.now)
    pair.pump()
    (result,) = [e for e in pair.cloud_events if isinstance(e, FunctionReturned)]
    assert (rid, 1) == (result.request_id, result.return_value)


def test_a_lost_request_is_retransmitted_and_a_repeated_con_is_answered_once() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    assert pair.cloud is not None
    pair.lose_next_to_device = 1
    pair.cloud.send(CallFunction("f", b""), pair.now)
    pair.pump()
    assert not [e for e in pair.device_events if isinstance(e, FunctionCallRequested)]
    timer = pair.cloud.get_timer()
    assert timer is not None
    pair.now = timer
    pair.cloud.handle_timer(pair.now)
    pair.pump()
    assert 1 == pair.cloud.retransmissions
    assert 1 == len([e for e in pair.device_events if isinstance(e, FunctionCallRequested)])
    # Now the device's ACK is lost: the cloud sends the CON again; the device answers it again, once.
    pair.lose_next_to_cloud = 1
    pair.cloud.send(CallFunction("g", b""), pair.now)
    pair.pump()
    timer = pair.cloud.get_timer()
    assert timer is not None
    pair.now = timer
    pair.cloud.handle_timer(pair.now)
    pair.pump()
    assert 2 == pair.cloud.retransmissions
    assert ["f", "g"] == [e.name for e in pair.device_events if isinstance(e, FunctionCallRequested)]
    # A replayed record is dropped by the DTLS window, the session stays.
    pair.cloud.receive_data(pair.up[-1], pair.now)
    assert pair.cloud.dropped >= 1
    assert ConnectionState.ESTABLISHED == pair.cloud.state


def test_a_device_whose_key_does_not_match_is_reset_and_closed() -> None:
    pair = Pair()
    pair.pump()
    assert pair.cloud is not None
    pair.cloud.send(AcceptDevice(OTHER_KEY.public_key()), pair.now)
    pair.pump()
    assert ConnectionState.CLOSED == pair.cloud.state
    closed = [e for e in pair.cloud_events if isinstance(e, ConnectionClosed)]
    assert "does not match" in closed[0].reason


def test_an_unknown_device_is_refused() -> None:
    pair = Pair()
    pair.pump()
    assert pair.cloud is not None
    pair.cloud.send(RejectDevice("unknown device"), pair.now)
    pair.pump()
    assert ConnectionState.CLOSED == pair.cloud.state


def test_garbage_and_truncated_datagrams_are_dropped_not_fatal() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    assert pair.cloud is not None
    for junk in (b"\x17", b"\x17\xfe\xfd" + bytes(20), b"\x19" + bytes(40), bytes(3000), pair.up[-1][:-3]):
        pair.cloud.receive_data(junk, pair.now)
    assert ConnectionState.ESTABLISHED == pair.cloud.state
    assert pair.cloud.dropped >= 3


def test_the_idle_deadline_follows_the_platform_keepalive() -> None:
    assert idle_timeout_for(12) < 120  # Argon: Wi-Fi, 25 s pings
    assert idle_timeout_for(13) > 23 * 60  # Boron: cellular, 23 min pings


def _big_describe() -> bytes:
    functions = [f"function{n:02d}" for n in range(90)]
    variables = {f"variable{n:02d}": VariableType.STRING for n in range(90)}
    return build_describe(functions=functions, variables=variables, platform_id=12)


def _asked_describe(pair: Pair, flags: DescribeFlags) -> tuple[int, int]:
    """The cloud asks; the device's application answers with a Describe of about 2.7 KB (three blocks)."""
    assert pair.cloud is not None
    rid = pair.cloud.send(RequestDescribe(flags=int(flags)), pair.now)
    assert rid is not None
    pair.pump()
    (asked,) = [e for e in pair.device_events if isinstance(e, DescribeRequested)]
    assert flags == asked.flags
    pair.device.send(RespondDescribe(asked.request_id, _big_describe()), pair.now)
    return rid, asked.request_id


def test_a_describe_too_big_for_one_message_comes_back_blockwise_and_whole() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    assert len(_big_describe()) > 2 * DESCRIBE_BLOCK
    rid, _ = _asked_describe(pair, DescribeFlags.APPLICATION)
    pair.lose_next_to_device = 2  # the ACK of the first block and the request for the second: retransmitted
    pair.pump()
    assert not [e for e in pair.cloud_events if isinstance(e, DescribeReceived)]
    timer = pair.cloud.get_timer() if pair.cloud else None
    assert timer is not None
    pair.now = timer
    assert pair.cloud is not None
    pair.cloud.handle_timer(pair.now)
    pair.pump()
    (received,) = [e for e in pair.cloud_events if isinstance(e, DescribeReceived)]
    assert rid == received.request_id
    assert received.description.functions is not None
    assert received.description.variables is not None
    assert 90 == len(received.description.functions) == len(received.description.variables)
    assert "function89" in received.description.functions
    assert 1 == pair.cloud.retransmissions
    # The device asked its application once; the later blocks came from the answer it kept, now dropped.
    assert 1 == len([e for e in pair.device_events if isinstance(e, DescribeRequested)])
    assert pair.device._serving is None


def test_a_block_of_a_describe_the_device_no_longer_serves_fails_the_request() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    rid, _ = _asked_describe(pair, DescribeFlags.APPLICATION | DescribeFlags.SYSTEM)
    # The first block is on its way; the device forgets the answer, as Device OS does after its blockwise
    # response timeout, so the request for the second block finds nothing.
    pair.device._serving = None
    pair.pump()
    assert pair.cloud is not None
    (failed,) = [e for e in pair.cloud_events if isinstance(e, RequestFailed)]
    assert (rid, 0x84) == (failed.request_id, failed.code)
    assert not [e for e in pair.cloud_events if isinstance(e, DescribeReceived)]
    assert ConnectionState.ESTABLISHED == pair.cloud.state


def test_a_device_sends_a_describe_too_big_for_one_message_in_block1_parts() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    sent_before = len(pair.up)
    rid = pair.device.send(SendDescribe(_big_describe()), pair.now)
    pair.pump()
    assert len(pair.up) - sent_before >= 3  # three parts, each after the previous one's 2.31 Continue
    (received,) = [e for e in pair.cloud_events if isinstance(e, DescribeReceived)]
    assert received.request_id is None  # volunteered by the device
    assert received.description.functions is not None
    assert 90 == len(received.description.functions)
    (done,) = [e for e in pair.device_events if isinstance(e, RequestCompleted)]
    assert rid == done.request_id
