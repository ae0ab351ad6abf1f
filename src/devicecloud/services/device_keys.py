"""
Device public keys: registration by owners (``POST /v1/provisioning/:id``, particle-cli ``keys send``) and by
operators (``devicecloud keys add|pending|approve``).

A key is stored as SubjectPublicKeyInfo DER, the form a device sends in its handshake, so the gateway can
compare offered and registered keys byte for byte. Replacing the key of a device connected to this process
drops its link: the old session was authenticated with the old key.
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devicecloud.domain.devices import PendingKey, normalise_device_id
from devicecloud.errors import InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.accounts import User
    from devicecloud.services.ports import DeviceControl
    from devicecloud.store.interfaces import Store

MAX_KEY_TEXT = 16_384


def parse_public_key(text: Any) -> bytes:
    """
    A device public key given as PEM (SPKI or PKCS#1) or as hex/DER text → SPKI DER: RSA (TCP devices) or
    EC P-256 (UDP devices: Gen3, Electron over DTLS). Raises `InvalidInput`.
    """
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_KEY_TEXT:
        raise InvalidInput("publicKey must be an RSA public key in PEM format", code="invalid_key")
    raw = text.strip()
    try:
        if raw.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(raw.encode("ascii"))
        else:
            key = serialization.load_der_public_key(binascii.unhexlify(raw))
    except (ValueError, TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise InvalidInput("publicKey is not a readable public key", code="invalid_key") from exc
    p256 = isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if not isinstance(key, rsa.RSAPublicKey) and not p256:
        raise InvalidInput(
            "Only RSA (TCP devices) and EC P-256 (UDP devices) device keys are supported", code="invalid_key"
        )
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_device_id(value: Any) -> str:
    device_id = normalise_device_id(value) if isinstance(value, str) else None
    if device_id is None:
        raise InvalidInput("The device id must be 24 hexadecimal characters", code="invalid_device_id")
    return device_id


class DeviceKeyService:
    """
    Registers device keys and resolves keys awaiting approval.
    """

    def __init__(self, *, store: Store, clock: Clock, control: DeviceControl) -> None:
        self._store = store
        self._clock = clock
        self._control = control

    async def register(self, user: User, device_ref: Any, public_key: Any) -> str:
        """
        Set a device's key: the owner may always; anyone may for a device the cloud has no key for yet.
        Replacing the key of a device nobody owns would let a stranger take it over, so that is for
        operators (``devicecloud keys add|approve``). Returns the device id.
        """
        device_id = check_device_id(device_ref)
        der = parse_public_key(public_key)
        async with self._store.transaction(readonly=True) as tx:
            device = await tx.devices.get(device_id)
        if device is not None and device.owner_id != user.id:
            foreign = device.owner_id is not None
            if foreign or (device.public_key_der is not None and device.public_key_der != der):
                raise PermissionDenied("Permission Denied: not a device of yours", code="Permission Denied")
        await self._store_key(device_id, der)
        return device_id

    async def add(self, device_ref: Any, public_key: Any) -> str:
        """
        Operator registration, no ownership involved.
        """
        device_id = check_device_id(device_ref)
        await self._store_key(device_id, parse_public_key(public_key))
        return device_id

    async def pending(self) -> list[PendingKey]:
        async with self._store.transaction(readonly=True) as tx:
            return list(await tx.pending_keys.list())

    async def approve(self, device_ref: Any) -> str:
        """
        Accept the key an unknown device last offered.
        """
        device_id = check_device_id(device_ref)
        async with self._store.transaction(readonly=True) as tx:
            offered = await tx.pending_keys.get(device_id)
        if offered is None:
            raise NotFound(f"No key from {device_id} is waiting for approval")
        await self._store_key(device_id, offered.public_key_der)
        return device_id

    async def _store_key(self, device_id: str, der: bytes) -> None:
        now = self._clock.now()
        async with self._store.transaction() as tx:
            device = await tx.devices.get(device_id)
            if device is None:
                await tx.devices.add(device_id, now=now, public_key=der)
                changed = False
            else:
                changed = device.public_key_der not in (None, der)
                await tx.devices.update(device_id, public_key=der, updated_at=now)
            await tx.pending_keys.delete(device_id)
        if changed:
            await self._control.disconnect(device_id)
