"""
Length-prefixed frames and the receive buffer.

Theory of operation:
    During the handshake the peers exchange fixed-size raw blocks (40, 256, 384 bytes) with no framing;
    after it,
    every message is ``len_hi len_lo ‖ ciphertext`` where the length counts the ciphertext, which is always a
    non-empty multiple of the AES block size (16). :class:`ReceiveBuffer` accumulates bytes and hands out
    either a
    fixed number of raw bytes (:meth:`ReceiveBuffer.take`) or whole frames (:meth:`ReceiveBuffer.next_frame`).
    A length that cannot be valid raises ``RemoteProtocolError`` as soon as the two length bytes are in,
    without
    waiting for a body that may never come.
"""

from __future__ import annotations

from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["BLOCK_SIZE", "MAX_FRAME_SIZE", "ReceiveBuffer", "frame"]

BLOCK_SIZE = 16
MAX_FRAME_SIZE = 0xFFFF - (0xFFFF % BLOCK_SIZE)  # largest multiple of 16 a 2-byte length can carry


def frame(ciphertext: bytes) -> bytes:
    """
    Prefix a ciphertext with its 2-byte big-endian length.

    Returns:
        The frame bytes.
    """
    if not ciphertext or len(ciphertext) % BLOCK_SIZE or len(ciphertext) > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"cannot frame a ciphertext of {len(ciphertext)} bytes")
    return len(ciphertext).to_bytes(2, "big") + ciphertext


class ReceiveBuffer:
    """Bytes received from the peer that have not been consumed yet."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._data = bytearray()
        self._max_frame_size = max_frame_size

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._data += data

    def take(self, size: int) -> bytes | None:
        """
        Consume exactly ``size`` raw bytes.

        Returns:
            The bytes, or ``None`` if fewer are buffered (nothing is consumed then).
        """
        if len(self._data) < size:
            return None
        out = bytes(self._data[:size])
        del self._data[:size]
        return out

    def next_frame(self) -> bytes | None:
        """
        Consume one length-prefixed frame.

        Returns:
            The ciphertext of the frame, or ``None`` if it is not complete yet.

        Raises:
            RemoteProtocolError: the length prefix is 0, not a multiple of 16 or above the limit.
        """
        if len(self._data) < 2:
            return None
        length = int.from_bytes(self._data[:2], "big")
        if length == 0 or length % BLOCK_SIZE or length > self._max_frame_size:
            raise RemoteProtocolError(f"invalid frame length {length}")
        if len(self._data) < 2 + length:
            return None
        out = bytes(self._data[2 : 2 + length])
        del self._data[: 2 + length]
        return out
