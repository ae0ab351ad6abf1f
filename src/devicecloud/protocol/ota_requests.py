"""
The device's side of the OTA messages: what an UpdateBegin, a chunk or an UpdateDone from the cloud means.

Kept out of `connection` (which only routes them here): the fixed-offset rules Device OS applies are OTA
knowledge, not connection plumbing.
"""

from __future__ import annotations

from collections.abc import Callable

from devicecloud.protocol import coap, events
from devicecloud.protocol.codes import MessageKind
from devicecloud.protocol.errors import RemoteProtocolError

__all__ = ["device_event"]

#: Registers a peer request awaiting the application's answer; ``acked`` = the empty ACK goes out now.
InboundRequest = Callable[..., int]


def device_event(kind: MessageKind, msg: coap.Message, inbound: InboundRequest) -> events.Event:
    """The event for an OTA request from the cloud (registering it for an answer where one is due)."""
    if kind in (MessageKind.UPDATE_BEGIN, MessageKind.SAVE_BEGIN):
        p = msg.payload
        # Device OS reads the 12 bytes at fixed offsets, and only from a 1-byte-token message that long.
        full = len(p) >= 12 and len(msg.token) == 1
        rid = inbound(kind, msg, acked=False)
        return events.UpdateBeginRequested(
            request_id=rid,
            fast=bool(p[0] & 1) if p else False,
            chunk_size=int.from_bytes(p[1:3], "big") if full else None,
            file_length=int.from_bytes(p[3:7], "big") if full else None,
            store=p[7] if full else 0,
            address=int.from_bytes(p[8:12], "big") if full else 0,
        )
    if kind is MessageKind.CHUNK:
        query = msg.uri_query
        crc = int.from_bytes(query[0], "big") if query and len(query[0]) == 4 else None
        if len(query) >= 2:  # fast OTA: the index travels along and nothing is answered
            if len(query[1]) != 2:
                raise RemoteProtocolError("a fast OTA chunk index is 2 bytes")
            return events.ChunkArrived(None, int.from_bytes(query[1], "big"), crc, msg.payload)
        rid = inbound(kind, msg, acked=True)
        return events.ChunkArrived(rid, None, crc, msg.payload)
    rid = inbound(MessageKind.UPDATE_DONE, msg, acked=False)
    return events.UpdateDoneRequested(rid)
