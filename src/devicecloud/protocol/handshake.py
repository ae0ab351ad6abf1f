"""
The TCP handshake as two small state machines, one per role.

Theory of operation (sizes for an RSA-2048 server key and an RSA-1024 device key)::

    cloud                                   device
    AWAIT_DEVICE_BLOCK  -- nonce(40) ---->  AWAIT_NONCE
                        <-- block(256) ---  AWAIT_REPLY
    AWAIT_DEVICE_KEY    (application looks up the stored key: accept() / reject)
    DONE                -- C‖SIG(384) --->  DONE (or FAILED: bad signature / undecryptable C)

The blocks are raw (no length prefix). Each machine consumes exactly one block per step; the connection
feeds it.
Randomness (nonce, key material K, RSA padding) comes from the injected ``random_bytes`` in a fixed order —
cloud: nonce(40) at construction, then K(40) and the padding string of ``C`` at ``accept()`` — so recorded
sessions replay byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.protocol import crypto
from devicecloud.protocol.crypto import RandomBytes, SessionKeys
from devicecloud.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["CloudHandshake", "DeviceHandshake", "HandshakeState"]


class HandshakeState(Enum):
    """Where a handshake machine is."""

    AWAIT_NONCE = "await nonce"
    AWAIT_DEVICE_BLOCK = "await device block"
    AWAIT_DEVICE_KEY = "await device key"
    AWAIT_REPLY = "await reply"
    DONE = "done"
    FAILED = "failed"


class CloudHandshake:
    """Cloud side: send the nonce, read the device block, answer with the session key."""

    def __init__(
        self,
        server_private_key: rsa.RSAPrivateKey,
        random_bytes: RandomBytes,
        sign_raw: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self._key = server_private_key
        self._random = random_bytes
        self._sign_raw = sign_raw
        self.nonce = random_bytes(crypto.NONCE_SIZE)
        if len(self.nonce) != crypto.NONCE_SIZE:
            raise LocalProtocolError("random_bytes returned the wrong number of bytes")
        self.state = HandshakeState.AWAIT_DEVICE_BLOCK
        self.device_id: bytes = b""
        self.offered_public_key_der: bytes = b""

    @property
    def device_block_size(self) -> int:
        """Size of the device's block (the server key's modulus size)."""
        return (self._key.key_size + 7) // 8

    def receive_device_block(self, block: bytes) -> bytes:
        """
        Check the device block.

        Returns:
            The 12-byte device id.

        Raises:
            RemoteProtocolError: undecryptable or the nonce does not match.
        """
        if self.state is not HandshakeState.AWAIT_DEVICE_BLOCK:
            raise LocalProtocolError(f"device block not expected in state {self.state.value}")
        try:
            opened = crypto.open_device_block(self._key, block, self.nonce)
            self.device_id, self.offered_public_key_der = opened
        except RemoteProtocolError:
            self.state = HandshakeState.FAILED
            raise
        self.state = HandshakeState.AWAIT_DEVICE_KEY
        return self.device_id

    def accept(self, device_public_key: rsa.RSAPublicKey) -> tuple[bytes, SessionKeys]:
        """
        Finish with the device's stored public key.

        Returns:
            ``(the 384-byte reply, the session keys)``.
        """
        if self.state is not HandshakeState.AWAIT_DEVICE_KEY:
            raise LocalProtocolError(f"cannot accept the device in state {self.state.value}")
        if device_public_key.key_size != 1024:
            raise LocalProtocolError("the device key must be RSA-1024")
        key_material = self._random(crypto.KEY_MATERIAL_SIZE)
        if len(key_material) != crypto.KEY_MATERIAL_SIZE:
            raise LocalProtocolError("random_bytes returned the wrong number of bytes")
        reply = crypto.build_server_reply(
            self._key, device_public_key, key_material, self._random, self._sign_raw
        )
        self.state = HandshakeState.DONE
        return reply, SessionKeys.from_material(key_material)

    def reject(self) -> None:
        """Give up on this device."""
        self.state = HandshakeState.FAILED


class DeviceHandshake:
    """Device side: read the nonce, send our block, check the cloud's reply."""

    def __init__(
        self,
        device_id: bytes,
        device_private_key: rsa.RSAPrivateKey,
        server_public_key: rsa.RSAPublicKey,
        random_bytes: RandomBytes,
    ) -> None:
        if len(device_id) != crypto.DEVICE_ID_SIZE:
            raise LocalProtocolError("device id must be 12 bytes")
        self._device_id = device_id
        self._device_key = device_private_key
        self._server_key = server_public_key
        self._random = random_bytes
        self.state = HandshakeState.AWAIT_NONCE

    @property
    def reply_size(self) -> int:
        """Size of the cloud's reply (device modulus + server modulus)."""
        return (self._device_key.key_size + 7) // 8 + (self._server_key.key_size + 7) // 8

    def receive_nonce(self, nonce: bytes) -> bytes:
        """
        Answer the nonce.

        Returns:
            Our encrypted block.
        """
        if self.state is not HandshakeState.AWAIT_NONCE:
            raise LocalProtocolError(f"nonce not expected in state {self.state.value}")
        block = crypto.build_device_block(
            self._server_key,
            nonce,
            self._device_id,
            crypto.public_key_der(self._device_key.public_key()),
            self._random,
        )
        self.state = HandshakeState.AWAIT_REPLY
        return block

    def receive_reply(self, reply: bytes) -> SessionKeys:
        """
        Check the cloud's reply.

        Returns:
            The session keys.

        Raises:
            RemoteProtocolError: bad signature or undecryptable key material.
        """
        if self.state is not HandshakeState.AWAIT_REPLY:
            raise LocalProtocolError(f"handshake reply not expected in state {self.state.value}")
        try:
            key_material = crypto.open_server_reply(self._device_key, self._server_key, reply)
        except RemoteProtocolError:
            self.state = HandshakeState.FAILED
            raise
        self.state = HandshakeState.DONE
        return SessionKeys.from_material(key_material)
