"""The metrics Describe: the binary diagnostics payload, its vitals, and the request over a connection."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.conformance import load_transcript
from tests.unit.protocol.test_protocol_connection import STYLES, _connected

from devicecloud.protocol import (
    DescribeFlags,
    DescribeReceived,
    DescribeRequested,
    DiagnosticId,
    DiagnosticsReceived,
    DiagnosticsReport,
    RemoteProtocolError,
    RequestCompleted,
    RequestDescribe,
    RequestFailed,
    RespondDescribe,
    ResponseStyle,
    SendDescribe,
    build_describe,
    build_diagnostics,
    parse_describe,
    parse_diagnostics,
    vitals_payload,
)
from devicecloud.protocol.diagnostics import MAX_RECORDS, is_binary_describe

HEADER = bytes.fromhex("00040002000400")


def record(source: int, value: int) -> bytes:
    return source.to_bytes(2, "little") + value.to_bytes(4, "little", signed=value < 0)


# A Photon-like report written byte by byte from the layout (not with build_diagnostics).
PHOTON = (
    HEADER
    + record(6, 3_723)  # uptime, s
    + record(26, 28_624)  # used RAM
    + record(25, 82_944)  # total RAM
    + record(33, 0x4E80)  # signal strength Q8.8 = 78.5 %
    + record(37, -56 * 65536)  # RSSI Q16.16 = -56 dBm
    + record(34, 0x3800)  # quality 56 %
    + record(35, 30 * 65536 + 32768)  # SNR 30.5 dB
    + record(36, 1)  # Wi-Fi
    + record(8, 4)  # network connected
    + record(10, 2)  # cloud connected
    + record(14, 3)  # cloud disconnects
    + record(31, 412)  # CoAP round trip, ms
    + record(20, 0)  # rate-limited publishes
    + record(0x8000 | 3, -210)  # battery charge: error (no fuel gauge)
    + record(4, 99)  # system loops: not in the vitals
)


def test_handwritten_report_decodes_to_the_catalogue_vitals() -> None:
    report = parse_diagnostics(PHOTON)
    assert 3_723 == report.values[DiagnosticId.SYSTEM_UPTIME]
    assert {3: -210} == report.errors
    assert {
        "device": {
            "system": {"uptime": 3_723, "memory": {"used": 28_624, "total": 82_944}},
            "network": {
                "signal": {
                    "at": "Wi-Fi",
                    "strength": 78.5,
                    "strength_units": "%",
                    "strengthv": -56.0,
                    "strengthv_units": "dBm",
                    "strengthv_type": "RSSI",
                    "quality": 56.0,
                    "quality_units": "%",
                    "qualityv": 30.5,
                    "qualityv_units": "dB",
                    "qualityv_type": "SNR",
                },
                "connection": {"status": "connected"},
            },
            "cloud": {
                "connection": {"status": "connected"},
                "disconnects": 3,
                "coap": {"round_trip": 412},
                "publish": {"rate_limited": 0},
            },
            "power": {"battery": {"charge": {"err": -210}}},
        }
    } == vitals_payload(report)


def test_cellular_report() -> None:
    payload = build_diagnostics(
        {
            DiagnosticId.NETWORK_ACCESS_TECHNOLOGY: 8,
            DiagnosticId.NETWORK_SIGNAL_STRENGTH_VALUE: -100 * 65536,
            DiagnosticId.CELL_MOBILE_COUNTRY_CODE: 310,
            DiagnosticId.CELL_MOBILE_NETWORK_CODE: 410,
            DiagnosticId.BATTERY_CHARGE: 0x5A00,
            DiagnosticId.BATTERY_STATE: 2,
            DiagnosticId.POWER_SOURCE: 2,
        }
    )
    device = vitals_payload(parse_diagnostics(payload))["device"]
    assert {"at": "LTE Cat-M1", "strengthv": -100.0, "strengthv_units": "dBm", "strengthv_type": "RSRP"} == (
        device["network"]["signal"]
    )
    assert {"mobile_country_code": 310, "mobile_network_code": "410"} == (
        device["network"]["cellular"]["cell_global_identity"]
    )
    assert {"battery": {"charge": 90.0, "state": "charging"}, "source": "USB host"} == device["power"]


def test_build_writes_the_handwritten_layout() -> None:
    assert HEADER + record(6, 10) + record(0x8000 | 9, -1) == build_diagnostics({6: 10}, {9: -1})
    assert HEADER == build_diagnostics({})
    assert DiagnosticsReport({}, {}) == parse_diagnostics(HEADER)
    # unsigned values past 2**31 keep their 32 bits
    assert (
        0xFFFFFFF0
        == vitals_payload(parse_diagnostics(build_diagnostics({6: 0xFFFFFFF0})))["device"]["system"]["uptime"]
    )


def test_the_recorded_flags_2_describe_is_the_application_part_not_metrics() -> None:
    """Device OS 0.7.0's recorded answer to Describe flags 2 is the application JSON: 2 is not metrics."""
    records = load_transcript("session_app")["records"]
    [asked] = [r for r in records if r.get("label") == "Describe" and r["coap"]["uri_query_hex"] == ["02"]]
    [answer] = [r for r in records if r.get("decoded", {}).get("in_reply_to") == asked["i"]]
    payload = bytes.fromhex(answer["coap"]["payload_hex"])
    assert DescribeFlags.APPLICATION == 2
    assert not is_binary_describe(payload)
    assert ("pub", "setint") == parse_describe(payload).functions
    with pytest.raises(RemoteProtocolError):
        parse_diagnostics(payload)
    # The recorded device's Hello (flags byte 0) does not announce diagnostics support (0x02) either.
    [hello] = [r for r in records if r.get("label") == "Hello" and r["dir"] == "d2s"]
    assert 0 == bytes.fromhex(hello["coap"]["payload_hex"])[5] & 0x02


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x04\x00",
        b"{}",
        bytes.fromhex("00010002000400"),  # binary, but not metrics
        bytes.fromhex("00040004000800"),  # other sizes
        HEADER + b"\x06\x00\x01",  # truncated record
        HEADER + record(6, 1) + record(6, 2),  # repeated source
        HEADER + record(6, 1) + record(0x8006, -1),  # value and error for one source
        HEADER + record(1, 0) * (MAX_RECORDS + 1),
    ],
)
def test_bad_payloads_raise_remote_protocol_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_diagnostics(payload)


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=200), headed=st.booleans())
def test_fuzz_only_remote_protocol_error(tail: bytes, headed: bool) -> None:
    payload = HEADER + tail if headed else tail
    try:
        report = parse_diagnostics(payload)
    except RemoteProtocolError:
        return
    vitals_payload(report)  # anything decoded turns into vitals without raising


@settings(max_examples=100, deadline=None)
@given(values=st.dictionaries(st.integers(0, 0x7FFF), st.integers(-(2**31), 2**31 - 1), max_size=40))
def test_round_trip(values: dict[int, int]) -> None:
    assert values == dict(parse_diagnostics(build_diagnostics(values)).values)


# ------------------------------------------------------------------------------------ over a connection


@pytest.mark.parametrize("style", STYLES)
def test_metrics_describe_over_a_connection(keys: Any, style: ResponseStyle) -> None:
    p = _connected(keys, style)
    rid = p.cloud.send(RequestDescribe(DescribeFlags.METRICS), p.now)
    _, device_events = p.pump()
    [request] = device_events
    assert isinstance(request, DescribeRequested)
    assert DescribeFlags.METRICS == request.flags
    p.device.send(RespondDescribe(request.request_id, PHOTON), p.now)
    cloud_events, _ = p.pump()
    assert [DiagnosticsReceived(rid, parse_diagnostics(PHOTON))] == cloud_events


def test_json_answer_to_a_metrics_describe_fails_the_request(keys: Any) -> None:
    """A device without diagnostics answers JSON; the request fails, the connection stays up."""
    p = _connected(keys, ResponseStyle.PIGGYBACK)
    rid = p.cloud.send(RequestDescribe(DescribeFlags.METRICS), p.now)
    _, [request] = p.pump()
    assert isinstance(request, DescribeRequested)
    p.device.send(RespondDescribe(request.request_id, b"{}"), p.now)
    [failed], _ = p.pump()
    assert isinstance(failed, RequestFailed)
    assert rid == failed.request_id
    # A JSON Describe still works afterwards.
    p.cloud.send(RequestDescribe(DescribeFlags.SYSTEM), p.now)
    _, [again] = p.pump()
    assert isinstance(again, DescribeRequested)
    p.device.send(RespondDescribe(again.request_id, build_describe(platform_id=6, flags=again.flags)), p.now)
    [described], _ = p.pump()
    assert isinstance(described, DescribeReceived)


def test_device_volunteered_vitals(keys: Any) -> None:
    """Particle.publishVitals(): POST /d?\\x04 with the binary payload; the cloud ACKs and reports it."""
    p = _connected(keys, ResponseStyle.SEPARATE)
    rid = p.device.send(SendDescribe(PHOTON, DescribeFlags.METRICS), p.now)
    cloud_events, device_events = p.pump()
    assert [DiagnosticsReceived(None, parse_diagnostics(PHOTON))] == cloud_events
    assert [RequestCompleted(rid or 0, 0)] == device_events  # the empty ACK
