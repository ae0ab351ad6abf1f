"""
What survives a device's sleep or a server restart: a DTLS session as plain data.

The device persists master secret, randoms, epoch, its send counter and its replay window, and resumes by
re-deriving the keys (Device OS ``SessionPersist``); the server must keep the same facts, and its own send
counter must keep increasing across restarts, or the device's replay window drops every record it sends.
``SessionState.to_dict()`` is JSON-ready (hex strings and integers) for the session store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devicecloud.protocol.dtls.primitives import KeyBlock, RecordCipher, key_block
from devicecloud.protocol.dtls.records import MAX_SEQUENCE
from devicecloud.protocol.errors import LocalProtocolError

__all__ = ["SessionState"]

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class SessionState:
    """
    One established session, from one end's point of view.

    Attributes:
        master_secret, client_random, server_random: the key schedule's inputs (keys are re-derived).
        cid: the server's Connection ID (the device puts it on every record it sends), ``None`` without CID.
        epoch: the epoch both directions use (1 after one full handshake; no renegotiation).
        write_sequence: the next sequence number this end sends with.
        replay_top, replay_bitmap: the peer's records seen so far (the 64-record window).
        peer_key: the peer's long-term key (SubjectPublicKeyInfo DER).
        identity: what the server's key check said about the device key (its device id), else ``None``.
        keys: the key expansion of master secret and randoms, kept so that a resumption does not run the
            PRF again (``None``: derived when needed, as for a row stored before it was kept).
    """

    master_secret: bytes
    client_random: bytes
    server_random: bytes
    cid: bytes | None
    epoch: int
    write_sequence: int
    replay_top: int
    replay_bitmap: int
    peer_key: bytes
    identity: str | None = None
    keys: KeyBlock | None = None

    def ciphers(self, *, is_server: bool) -> tuple[RecordCipher, RecordCipher]:
        """(write cipher, read cipher) for this end."""
        block = self.keys or key_block(self.master_secret, self.client_random, self.server_random)
        client = RecordCipher(block.client_key, block.client_iv)
        server = RecordCipher(block.server_key, block.server_iv)
        return (server, client) if is_server else (client, server)

    def advanced(self, *, write_sequence: int, replay_top: int, replay_bitmap: int) -> SessionState:
        """A copy with newer counters (built directly: ``dataclasses.replace`` costs more than the rest)."""
        return SessionState(
            self.master_secret, self.client_random, self.server_random, self.cid, self.epoch,
            write_sequence, replay_top, replay_bitmap, self.peer_key, self.identity, self.keys,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain data: strings, integers and ``None``."""
        return {
            "format": _FORMAT,
            "master_secret": self.master_secret.hex(),
            "client_random": self.client_random.hex(),
            "server_random": self.server_random.hex(),
            "cid": self.cid.hex() if self.cid is not None else None,
            "epoch": self.epoch,
            "write_sequence": self.write_sequence,
            "replay_top": self.replay_top,
            "replay_bitmap": self.replay_bitmap,
            "peer_key": self.peer_key.hex(),
            "identity": self.identity,
            "keys": _keys_hex(self.keys),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionState:
        """
        The state ``to_dict`` produced.

        Raises:
            LocalProtocolError: the data is not a session this version wrote (a damaged store row).
        """
        try:
            if data["format"] != _FORMAT:
                raise LocalProtocolError(f"unknown session format {data['format']!r}")
            cid = data["cid"]
            state = cls(
                master_secret=bytes.fromhex(data["master_secret"]),
                client_random=bytes.fromhex(data["client_random"]),
                server_random=bytes.fromhex(data["server_random"]),
                cid=bytes.fromhex(cid) if cid is not None else None,
                epoch=int(data["epoch"]),
                write_sequence=int(data["write_sequence"]),
                replay_top=int(data["replay_top"]),
                replay_bitmap=int(data["replay_bitmap"]),
                peer_key=bytes.fromhex(data["peer_key"]),
                identity=data["identity"],
                keys=_keys_from_hex(data.get("keys")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalProtocolError(f"not a stored DTLS session: {exc}") from exc
        if (
            len(state.master_secret) != 48
            or len(state.client_random) != 32
            or len(state.server_random) != 32
            or not 1 <= state.epoch <= 0xFFFF
            or not 0 <= state.write_sequence <= MAX_SEQUENCE
            or not -1 <= state.replay_top <= MAX_SEQUENCE
            or not 0 <= state.replay_bitmap < 1 << 64
            or (state.identity is not None and not isinstance(state.identity, str))
        ):
            raise LocalProtocolError("stored DTLS session out of range")
        return state


_KEYS_SIZE = 16 + 16 + 4 + 4  # client key, server key, client IV, server IV


def _keys_hex(keys: KeyBlock | None) -> str | None:
    if keys is None:
        return None
    return (keys.client_key + keys.server_key + keys.client_iv + keys.server_iv).hex()


def _keys_from_hex(value: Any) -> KeyBlock | None:
    if value is None:
        return None
    raw = bytes.fromhex(value)  # TypeError/ValueError: not a stored session, as for the other fields
    if len(raw) != _KEYS_SIZE:
        raise ValueError("stored key block of the wrong size")
    return KeyBlock(raw[:16], raw[16:32], raw[32:36], raw[36:40])
