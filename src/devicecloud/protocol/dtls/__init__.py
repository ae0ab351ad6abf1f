"""DTLS 1.2 for Particle's UDP protocol (Gen3 devices, Electron), sans-IO, on ``cryptography`` primitives."""

from devicecloud.protocol.dtls.primitives import Signer, ecdsa_signer, spki_der

__all__ = ["Signer", "ecdsa_signer", "spki_der"]
