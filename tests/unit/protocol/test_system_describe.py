"""
The protobuf system Describe of Device OS ≥ 5.5 (Content-Format 42): a payload a real Device OS 6.2.0
device sent, read into the JSON Describe's shape; the virtual device's encoding; refusals.
"""

from __future__ import annotations

import pytest
from tests.unit.protocol.test_udp_session import Pair

from devicecloud.gateway.translate import describe_to_domain
from devicecloud.protocol import DescribeReceived, RemoteProtocolError, SendDescribe, parse_describe
from devicecloud.protocol.codes import DescribeFlags
from devicecloud.protocol.system_describe import (
    SYSTEM_DESCRIBE_CONTENT_FORMAT,
    decode_system_describe,
    encode_system_describe,
)

# What Device OS 6.2.0 (the gcc platform, a monolithic build) POSTed to /d?\x01 with Content-Format 42:
# a bootloader and a monolithic module, each with its size (field 11), the latter depending on the former.
DEVICE_OS_6_2_0 = bytes.fromhex(
    "0a19080218e8072880808005351e0000003d1e00000058848080050a20080318b830288080"
    "8005351e0000003d1e0000004a05080218e8075884808005"
)


def test_a_real_device_os_6_payload_reads_as_the_json_shape() -> None:
    doc = decode_system_describe(DEVICE_OS_6_2_0)
    assert {
        "m": [
            {"s": 10485760, "l": "m", "vc": 30, "vv": 30, "f": "b", "n": "0", "v": 1000, "d": []},
            {"s": 10485760, "l": "m", "vc": 30, "vv": 30, "f": "m", "n": "0", "v": 6200,
             "d": [{"f": "b", "n": "0", "v": 1000}]},
        ]
    } == doc  # fmt: skip
    description = parse_describe(DEVICE_OS_6_2_0, SYSTEM_DESCRIBE_CONTENT_FORMAT)
    assert (None, None, None) == (description.functions, description.variables, description.platform_id)
    # A monolithic build's module carries the release: 6.2.0.
    assert "6.2.0" == describe_to_domain(description).system_firmware_version


def test_the_virtual_devices_encoding_reads_back_with_hash_dependencies_and_iccid() -> None:
    modules = [
        {"s": 1048576, "l": "m", "vc": 30, "vv": 26, "f": "s", "n": "1", "v": 6200,
         "d": [{"f": "b", "n": "0", "v": 2300}]},
        {"s": 262144, "l": "b", "vc": 30, "vv": 30, "u": "0f" * 32, "f": "u", "n": "1", "v": 6, "d": []},
        {"s": 0, "l": "m", "vc": 0, "vv": 0, "f": "c", "n": "0", "v": 7, "d": []},
    ]  # fmt: skip
    doc = decode_system_describe(encode_system_describe(modules, iccid="89340000000000000000"))
    assert {"m": modules, "iccid": "89340000000000000000"} == doc


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\xff", b"\x0a\x05\x08", b"\x12\x02\xc3\x28", b"\xff\xff\xff"],
    ids=["length-past-end", "truncated-module", "iccid-not-utf8", "bad-tag"],
)
def test_a_broken_protobuf_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_describe(payload, SYSTEM_DESCRIBE_CONTENT_FORMAT)


def test_without_content_format_42_a_payload_is_json() -> None:
    with pytest.raises(RemoteProtocolError, match="not JSON"):
        parse_describe(DEVICE_OS_6_2_0)
    assert ("f",) == parse_describe(b'{"f":["f"],"v":{}}', None).functions


def test_a_device_initiated_protobuf_describe_crosses_a_udp_session() -> None:
    pair = Pair()
    pair.pump()
    pair.accept()
    payload = encode_system_describe([{"f": "s", "n": "1", "v": 6200, "l": "m"}])
    assert (
        pair.device.send(
            SendDescribe(payload, DescribeFlags.SYSTEM, SYSTEM_DESCRIBE_CONTENT_FORMAT), pair.now
        )
        is not None
    )
    pair.pump()
    described = [e for e in pair.cloud_events if isinstance(e, DescribeReceived)]
    assert 1 == len(described)
    assert DescribeFlags.SYSTEM == described[0].flags
    assert "6.2.0" == describe_to_domain(described[0].description).system_firmware_version
