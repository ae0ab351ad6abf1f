"""
A golden DTLS transcript: the datagrams of one handshake and one record each way, with injected randomness
and deterministic ECDSA, compared byte for byte with ``transcript.json``. A change to anything on the wire
shows here. When the change is meant, regenerate the file::

    PYTHONPATH=src python -c "from tests.unit.protocol.dtls.test_dtls_transcript import write; write()"
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.dtls import drain, handshake

from devicecloud.protocol.dtls import ApplicationData, DtlsState

TRANSCRIPT = Path(__file__).parent / "transcript.json"


def _transcript() -> list[list[str]]:
    link = handshake()
    assert link.server is not None
    drain(link.client), drain(link.server)
    link.client.send_application_data(b"\x40\x01\x00\x01\xb1h")  # a CoAP CON POST /h (abridged)
    link.pump()
    link.server.send_application_data(b"\x60\x44\x00\x01")  # its ACK 2.04
    link.pump()
    assert [ApplicationData(b"\x40\x01\x00\x01\xb1h")] == drain(link.server)
    assert [ApplicationData(b"\x60\x44\x00\x01")] == drain(link.client)
    assert DtlsState.ESTABLISHED == link.server.state
    return [[direction, datagram.hex()] for direction, datagram in link.wire]


def write() -> None:
    TRANSCRIPT.write_text(json.dumps(_transcript(), indent=1) + "\n")


def test_the_wire_is_what_it_was() -> None:
    recorded = json.loads(TRANSCRIPT.read_text())
    assert recorded == _transcript()
    assert ["c", "s", "c", "s", "c", "s", "c", "s"] == [direction for direction, _ in recorded]
