"""
The server's RSA-2048 key pair, kept as PEM files in the data directory (created on first start).

``server_key.pem`` (PKCS#8, mode 0600) is the identity devices verify in the handshake; losing or replacing it
means every device must be given the new public key (``devicecloud keys server``). ``server_key.pub.pem`` is
its public half, for tools and virtual devices.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PRIVATE_NAME = "server_key.pem"
PUBLIC_NAME = "server_key.pub.pem"


def load_or_create_server_key(data_dir: Path) -> rsa.RSAPrivateKey:
    """
    The server key from ``data_dir``, generated (RSA-2048, e = 65537, as devices require) when absent.
    """
    private_path = data_dir / PRIVATE_NAME
    if private_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != 2048:
            msg = f"{private_path} must hold an RSA-2048 private key"
            raise ValueError(msg)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    public_path = data_dir / PUBLIC_NAME
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        public_path.write_bytes(public_pem)
    return key


UDP_PRIVATE_NAME = "server_key_udp.pem"
UDP_PUBLIC_NAME = "server_key_udp.pub.pem"


def load_or_create_udp_server_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """
    The UDP gateway's EC P-256 key (the one Gen3 devices pin) from ``data_dir``, generated when absent;
    its public half is written beside it (``server_key_udp.pub.pem``).
    """
    private_path = data_dir / UDP_PRIVATE_NAME
    if private_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            msg = f"{private_path} must hold an EC P-256 private key"
            raise ValueError(msg)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pem)
    public_path = data_dir / UDP_PUBLIC_NAME
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not public_path.exists() or public_path.read_bytes() != public_pem:
        public_path.write_bytes(public_pem)
    return key
