"""
Accounts, OAuth clients and access tokens as the services see them (never as table rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

ClientType = Literal["installed", "web"]


@dataclass(frozen=True, slots=True)
class User:
    """
    A person who owns devices. ``username`` is their email, stored lower-cased.
    """

    id: int
    username: str
    password_hash: str
    account_info: dict[str, Any]
    mfa_enabled: bool
    mfa_secret: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """
    An application that asks for tokens. Built-in clients (``particle``, ``particle-cli``...) have no row.
    """

    id: str
    name: str
    type: ClientType
    secret_hash: str | None
    owner_id: int | None
    product_id: int | None
    redirect_uri: str | None
    scopes: tuple[str, ...]
    builtin: bool = False


@dataclass(frozen=True, slots=True)
class AccessToken:
    """
    A stored bearer token. Only its hash is kept; ``hint`` is the first characters, for listing.

    A person's token has ``user_id``; a product's (API user, product client) has ``product_id`` instead,
    and an API user's also ``api_user_id``, a customer's ``customer_id`` (decision 0016).
    """

    id: int
    token_hash: str
    hint: str
    user_id: int | None
    client_id: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    refresh_token_hash: str | None = None
    refresh_expires_at: datetime | None = None
    product_id: int | None = None
    api_user_id: int | None = None
    customer_id: int | None = None


@dataclass(frozen=True, slots=True)
class Customer:
    """
    A customer of a product (issue 11 section 6): a person of the product's app, not a user. ``username`` is
    their email (or the unique id the product's app chose), lower-cased; a shadow customer (``no_password``)
    has no password hash and gets tokens only through the product's client.
    """

    id: int
    product_id: int
    username: str
    password_hash: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """
    Who is calling: the user a verified token belongs to, and what that token may do.

    ``scopes`` empty means a full user token; a client-credentials token carries its client's scopes.
    """

    user: User
    token: AccessToken
    scopes: frozenset[str] = field(default_factory=frozenset)

    def allows(self, scope: str) -> bool:
        """
        Whether this principal may use an endpoint guarded by ``scope``.
        """
        if not self.scopes:
            return True
        if "*:*" in self.scopes or scope in self.scopes:
            return True
        group = scope.split(":", 1)[0]
        return f"{group}:*" in self.scopes


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """
    What the OAuth endpoint returns, plain tokens included (the only moment they exist unhashed).
    """

    access_token: str
    expires_in: int | None
    refresh_token: str | None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewClient:
    """
    A client just created or fetched, with its secret when freshly created (shown once).
    """

    client: OAuthClient
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class MfaEnrollment:
    """
    The material a user needs to add devicecloud to an authenticator app.
    """

    mfa_token: str
    secret: str
    qr_url: str
