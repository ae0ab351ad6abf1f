"""
A virtual device's identity: its 12-byte device id and RSA-1024 key, and where they are kept between runs.

Theory of operation:
    A Photon is born with a random device id and an RSA-1024 key pair; the cloud knows it by the id and trusts
    it by the public key registered for that id. :func:`generate_identity` makes the same kind of pair, and
    :func:`load_or_create_identity` keeps it in a state directory so a virtual device that is started again
    is the *same* device to the cloud (same id, same key, same claim and name):

    ``<state dir>/device_id``          the 24 lower-case hex characters, one line
    ``<state dir>/device_key.pem``     the private key, PKCS#1 PEM (what ``openssl genrsa`` / particle-cli
    write), mode 0600
    ``<state dir>/device_key.pub.pem`` the public key, SubjectPublicKeyInfo PEM (what the cloud stores and
    ``POST /v1/provisioning/:id`` sends)

    Files are written to a temporary name and renamed, so a crash never leaves half a key behind.

    A Gen3 device (UDP/DTLS) has an EC P-256 key instead: :func:`load_or_create_ec_identity` keeps an
    :class:`EcDeviceIdentity` in the same three files (the private key as PKCS#8 PEM). A state directory holds
    one kind or the other; loading the wrong kind is an :class:`IdentityError`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devicecloud.protocol import LocalProtocolError, load_private_key, load_public_key

__all__ = [
    "DEVICE_ID_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "DeviceIdentity",
    "EcDeviceIdentity",
    "IdentityError",
    "PrivateKeyLike",
    "PublicKeyLike",
    "as_private_key",
    "as_public_key",
    "generate_ec_identity",
    "generate_identity",
    "load_ec_identity",
    "load_identity",
    "load_or_create_ec_identity",
    "load_or_create_identity",
    "normalize_device_id",
    "save_identity",
]

DEVICE_ID_FILE = "device_id"
PRIVATE_KEY_FILE = "device_key.pem"
PUBLIC_KEY_FILE = "device_key.pub.pem"

#: Device keys are RSA-1024: the firmware parses the key slot at fixed offsets, so nothing else fits.
DEVICE_KEY_BITS = 1024


PrivateKeyLike = rsa.RSAPrivateKey | bytes | str
PublicKeyLike = rsa.RSAPublicKey | bytes | str


class IdentityError(ValueError):
    """A state directory holds an unusable identity (bad id, not an RSA key, a missing file)."""


@dataclass(frozen=True)
class DeviceIdentity:
    """
    Who a device is: its id (24 lower-case hex characters) and its RSA private key.

    Attributes:
        device_id: the 12-byte id as hex.
        private_key: the RSA-1024 device key.
    """

    device_id: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        """The public half, as the cloud stores it."""
        return self.private_key.public_key()

    def public_key_pem(self) -> str:
        """
        The public key as SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``).

        Returns:
            The PEM text.
        """
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def private_key_pem(self) -> str:
        """
        The private key as PKCS#1 PEM (``-----BEGIN RSA PRIVATE KEY-----``), unencrypted.

        Returns:
            The PEM text.
        """
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode("ascii")


@dataclass(frozen=True)
class EcDeviceIdentity:
    """
    A Gen3 device's identity: its id and EC P-256 key (what the UDP/DTLS protocol uses).

    Attributes:
        device_id: the 12-byte id as hex.
        private_key: the P-256 device key.
    """

    device_id: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, as the cloud stores it."""
        return self.private_key.public_key()

    def public_key_pem(self) -> str:
        """The public key as SubjectPublicKeyInfo PEM (``POST /v1/provisioning/:id`` takes it as ``ecc``)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def private_key_pem(self) -> str:
        """The private key as PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), unencrypted."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")


def normalize_device_id(device_id: str | bytes) -> str:
    """
    A device id as 24 lower-case hex characters.

    Args:
        device_id: 12 raw bytes or 24 hex characters (any case).

    Returns:
        The normalised id.

    Raises:
        IdentityError: anything else.
    """
    if isinstance(device_id, bytes):
        if len(device_id) != 12:
            raise IdentityError(f"a device id is 12 bytes, not {len(device_id)}")
        return device_id.hex()
    text = device_id.strip().lower()
    if len(text) != 24 or any(c not in "0123456789abcdef" for c in text):
        raise IdentityError(f"a device id is 24 hex characters, not {device_id!r}")
    return text


def as_private_key(key: PrivateKeyLike) -> rsa.RSAPrivateKey:
    """
    An RSA private key from a key object, PEM text or PEM/DER bytes.

    Raises:
        LocalProtocolError: not an RSA private key.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    return load_private_key(key.encode("ascii") if isinstance(key, str) else key)


def as_public_key(key: PublicKeyLike) -> rsa.RSAPublicKey:
    """
    An RSA public key from a key object, PEM text or PEM/DER bytes.

    Raises:
        LocalProtocolError: not an RSA public key.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return key
    return load_public_key(key.encode("ascii") if isinstance(key, str) else key)


def generate_identity(device_id: str | bytes | None = None) -> DeviceIdentity:
    """
    A fresh identity: a new RSA-1024 key and a random device id (unless one is given).

    Returns:
        The identity.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=DEVICE_KEY_BITS)
    chosen = normalize_device_id(device_id) if device_id is not None else secrets.token_bytes(12).hex()
    return DeviceIdentity(chosen, key)


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(tmp, path)


def generate_ec_identity(device_id: str | bytes | None = None) -> EcDeviceIdentity:
    """A fresh Gen3 identity: a new P-256 key and a random device id (unless one is given)."""
    chosen = normalize_device_id(device_id) if device_id is not None else secrets.token_bytes(12).hex()
    return EcDeviceIdentity(chosen, ec.generate_private_key(ec.SECP256R1()))


def save_identity(identity: DeviceIdentity | EcDeviceIdentity, state_dir: Path) -> None:
    """
    Write an identity into ``state_dir`` (created if needed), replacing what was there.

    Args:
        identity: what to save.
        state_dir: the directory.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(state_dir / PRIVATE_KEY_FILE, identity.private_key_pem(), 0o600)
    _write_atomically(state_dir / PUBLIC_KEY_FILE, identity.public_key_pem(), 0o644)
    # The id goes last: its presence marks a complete identity.
    _write_atomically(state_dir / DEVICE_ID_FILE, identity.device_id + "\n", 0o644)


def load_identity(state_dir: Path) -> DeviceIdentity:
    """
    Read the identity kept in ``state_dir``.

    Returns:
        The identity.

    Raises:
        FileNotFoundError: there is none.
        IdentityError: it is unusable.
    """
    device_id = normalize_device_id((state_dir / DEVICE_ID_FILE).read_text(encoding="ascii"))
    pem = (state_dir / PRIVATE_KEY_FILE).read_bytes()
    try:
        key = load_private_key(pem)
    except LocalProtocolError as exc:
        raise IdentityError(f"{state_dir / PRIVATE_KEY_FILE}: {exc}") from exc
    return DeviceIdentity(device_id, key)


def load_or_create_identity(state_dir: Path, device_id: str | None = None) -> tuple[DeviceIdentity, bool]:
    """
    The identity kept in ``state_dir``, or a new one saved there.

    Args:
        state_dir: the directory.
        device_id: the id to use when a new identity is made (random if ``None``).

    Returns:
        ``(identity, created)``.
    """
    if (state_dir / DEVICE_ID_FILE).exists():
        return load_identity(state_dir), False
    identity = generate_identity(device_id)
    save_identity(identity, state_dir)
    return identity, True


def load_ec_identity(state_dir: Path) -> EcDeviceIdentity:
    """
    Read the Gen3 identity kept in ``state_dir``.

    Raises:
        FileNotFoundError: there is none.
        IdentityError: it is unusable (not an EC P-256 key: an RSA one is a TCP device's).
    """
    device_id = normalize_device_id((state_dir / DEVICE_ID_FILE).read_text(encoding="ascii"))
    path = state_dir / PRIVATE_KEY_FILE
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise IdentityError(f"{path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"{path} holds no EC P-256 key (is this a TCP device's state dir?)")
    return EcDeviceIdentity(device_id, key)


def load_or_create_ec_identity(
    state_dir: Path, device_id: str | None = None
) -> tuple[EcDeviceIdentity, bool]:
    """
    The Gen3 identity kept in ``state_dir``, or a new one saved there.

    Returns:
        ``(identity, created)``.
    """
    if (state_dir / DEVICE_ID_FILE).exists():
        return load_ec_identity(state_dir), False
    identity = generate_ec_identity(device_id)
    save_identity(identity, state_dir)
    return identity, True
