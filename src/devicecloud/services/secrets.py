"""
Random credentials and how they are stored.

Access and refresh tokens are 40 lowercase hex characters (160 random bits), the shape Particle's clients
expect. They are high-entropy, so a fast unkeyed SHA-256 is the right hash: a lookup by hash is one indexed
query and no slow KDF runs on the request path. Passwords are the opposite case and go through `passwords.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_HINT_LENGTH = 8


def new_token() -> str:
    """
    A fresh 40-hex-character secret.
    """
    return secrets.token_hex(20)


def hash_secret(secret: str) -> str:
    """
    The stored form of a high-entropy secret (token, client secret, reset token).
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """
    Constant-time comparison of a presented secret with its stored hash.
    """
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def hint_of(token: str) -> str:
    """
    The non-secret prefix shown in token lists.
    """
    return token[:TOKEN_HINT_LENGTH]
