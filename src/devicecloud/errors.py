"""
Domain errors. They say what went wrong in the domain's words; `api/errors.py` maps them to HTTP.

Each carries an ``error`` code (the short machine string the Particle API puts in ``error``) and a
human ``description``; an adapter may render both, and never needs to parse the message.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """
    Base of every error a service raises on purpose.
    """

    default_code = "error"

    def __init__(self, description: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(description)
        self.description = description
        self.code = code or self.default_code
        self.extra = extra


class InvalidInput(DomainError):
    """
    The request is malformed or a value is out of range.
    """

    default_code = "invalid_request"


class OAuthError(DomainError):
    """
    An error of the OAuth2 protocol (RFC 6749 §5.2 codes plus Particle's own), rendered without ``ok``.
    """

    default_code = "invalid_request"


class AuthenticationFailed(OAuthError):
    """
    A bearer token is unknown, revoked or expired.
    """

    default_code = "invalid_token"


class InvalidClient(OAuthError):
    """
    OAuth client credentials are missing or wrong, or the client may not use this grant.
    """

    default_code = "invalid_client"


class InvalidGrant(OAuthError):
    """
    The grant (user credentials, refresh token, MFA code) is wrong or expired.
    """

    default_code = "invalid_grant"


class InsufficientScope(OAuthError):
    """
    The token's scopes do not cover this operation.
    """

    default_code = "invalid_scope"


class PermissionDenied(DomainError):
    """
    The caller is known but may not do this.
    """

    default_code = "permission_denied"


class MfaRequired(OAuthError):
    """
    The password was right but the account needs a one-time password; ``extra`` has ``mfa_token``.
    """

    default_code = "mfa_required"


class NotFound(DomainError):
    """
    The object does not exist, or is not the caller's where the API answers both alike with a 404 (OAuth
    clients, tokens). Devices answer both with `PermissionDenied` instead, as the Particle API does.
    """

    default_code = "not_found"


class Conflict(DomainError):
    """
    The change clashes with existing state (a taken username, a duplicate name).
    """

    default_code = "conflict"


class Unavailable(DomainError):
    """
    The feature exists but is switched off on this server (closed sign-up, no SMTP configured...).
    """

    default_code = "unavailable"


class Unauthorized(DomainError):
    """
    Username/password credentials (HTTP Basic) were missing or wrong.
    """

    default_code = "unauthorized"


class RateLimited(DomainError):
    """
    Too many requests from one source.
    """

    default_code = "rate_limit_exceeded"


class DeviceTimedOut(DomainError):
    """
    The device did not answer in time.
    """

    default_code = "Timed out."  # the device API's historical wording (spark-server, the official clients)


class DeviceOffline(NotFound):
    """
    The device is not connected to this cloud.
    """

    default_code = "Device is offline"


class Busy(DomainError):
    """
    The object is in the middle of something that excludes this request (a device already being updated).
    """

    default_code = "conflict"
