"""
OAuth2 tokens: the grants of ``POST /oauth/token``, verification of bearer tokens, listing and revocation.

Rules kept here:
- plain tokens exist only in the reply that creates them; the store keeps SHA-256 hashes (`secrets.py`);
- verifying a token is one indexed lookup (token joined to its user) and never runs the password hash;
- a revoked token is deleted, so it can never verify again; an expired one fails verification by date;
- built-in clients (the ids the official clients send) accept any secret, because those secrets are public
  anyway; registered clients must present their secret, which is stored hashed.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pyotp

from devicecloud.domain.access import AnyPrincipal, ProductPrincipal, ProductPrincipalKind
from devicecloud.domain.accounts import AccessToken, Customer, IssuedToken, OAuthClient, Principal, User
from devicecloud.errors import (
    AuthenticationFailed,
    InsufficientScope,
    InvalidClient,
    InvalidGrant,
    MfaRequired,
    NotFound,
    OAuthError,
)
from devicecloud.services.secrets import hash_secret, hint_of, new_token, secret_matches

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.services.accounts import AccountService
    from devicecloud.store.interfaces import Store, UnitOfWork

CLIENT_ID_PATTERN = re.compile(r"^[a-z0-9\-_]{3,40}$", re.IGNORECASE)
GRANT_PASSWORD = "password"  # noqa: S105 - a grant name, not a secret
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH = "refresh_token"
GRANT_MFA_OTP = "urn:custom:mfa-otp"
GRANT_RECOVERY = "urn:custom:recovery-code"
GRANT_TYPES = frozenset(
    {GRANT_PASSWORD, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH, GRANT_MFA_OTP, GRANT_RECOVERY}
)
MFA_LOGIN = "mfa_login"
MFA_RECOVERY = "mfa_recovery"
FULL_SCOPE = "*:*"
API_USER_CLIENT = "particle-api-user"  # the client id recorded on API users' tokens (no such client logs in)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """
    Lifetimes in seconds (0 = never) and the built-in client ids.
    """

    access_lifetime: int = 7_776_000
    refresh_lifetime: int = 1_209_600
    mfa_lifetime: int = 300
    builtin_clients: frozenset[str] = frozenset({"particle", "particle-cli", "particle-api", "CLI2", "user"})


@dataclass(frozen=True, slots=True)
class GrantRequest:
    """
    The parsed form of ``POST /oauth/token`` (client credentials resolved separately).
    """

    grant_type: str | None
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    mfa_token: str | None = None
    otp: str | None = None
    recovery_code: str | None = None
    scope: str | None = None
    expires_in: str | None = None
    expires_at: str | None = None


class TokenService:
    """
    Issues, verifies and revokes access tokens.
    """

    def __init__(self, *, store: Store, clock: Clock, accounts: AccountService, policy: TokenPolicy) -> None:
        self._store = store
        self._clock = clock
        self._accounts = accounts
        self._policy = policy

    # ------------------------------------------------------------------ verification (the hot path)

    async def verify(self, token: str) -> AnyPrincipal:
        """
        The principal a bearer token stands for: a person, or a product's API user or client (decision
        0016). Raises `AuthenticationFailed` (invalid or expired).
        """
        found = await self._store.lookup_token(hash_secret(token))
        if found is None:
            raise AuthenticationFailed("The access token provided is invalid.")
        access, user = found
        if access.expires_at is not None and access.expires_at <= self._clock.now():
            raise AuthenticationFailed("The access token provided has expired.")
        if user is not None:
            return Principal(user=user, token=access, scopes=frozenset(access.scopes))
        if access.product_id is None:  # neither a person's nor a product's: nothing may use it
            raise AuthenticationFailed("The access token provided is invalid.")
        kind: ProductPrincipalKind = "product_client"
        if access.customer_id is not None:
            kind = "customer"
        elif access.api_user_id is not None:
            kind = "api_user"
        return ProductPrincipal(
            kind=kind,
            token=access,
            product_id=access.product_id,
            scopes=frozenset(access.scopes),
            customer_id=access.customer_id,
        )

    async def revoked_or_expired(self, tokens: Collection[AccessToken]) -> set[str]:
        """
        The hashes of ``tokens`` that would no longer verify: expired by the clock, or deleted (revoked, the
        password changed, the account deleted). One batched, indexed read for any number of tokens: open
        event streams re-check theirs with it every few seconds.
        """
        now = self._clock.now()
        expired = {t.token_hash for t in tokens if t.expires_at is not None and t.expires_at <= now}
        wanted = sorted({t.token_hash for t in tokens} - expired)
        if not wanted:
            return expired
        async with self._store.transaction(readonly=True) as tx:
            existing = await tx.tokens.existing_hashes(wanted)
        return expired | (set(wanted) - existing)

    # ------------------------------------------------------------------ clients

    async def authenticate_client(self, client_id: str | None, client_secret: str | None) -> OAuthClient:
        """
        The client presenting these credentials. Raises `InvalidClient` with the OAuth server's texts.
        """
        if not client_id or not CLIENT_ID_PATTERN.match(client_id):
            raise InvalidClient("Invalid or missing client_id parameter")
        if client_secret is None:
            raise InvalidClient("Missing client_secret parameter")
        if client_id in self._policy.builtin_clients:
            return OAuthClient(
                id=client_id,
                name=client_id,
                type="installed",
                secret_hash=None,
                owner_id=None,
                product_id=None,
                redirect_uri=None,
                scopes=(),
                builtin=True,
            )
        async with self._store.transaction(readonly=True) as tx:
            client = await tx.clients.get(client_id)
        if (
            client is None
            or client.secret_hash is None
            or not secret_matches(client_secret, client.secret_hash)
        ):
            raise InvalidClient("Client credentials are invalid")
        return client

    async def public_client(self, client_id: str | None) -> OAuthClient:
        """
        A registered client named by its id alone, for the implicit flow (a browser cannot keep a secret).
        Raises `InvalidClient`.
        """
        if (
            not client_id
            or not CLIENT_ID_PATTERN.match(client_id)
            or client_id in self._policy.builtin_clients
        ):
            raise InvalidClient("Invalid or missing client_id parameter")
        async with self._store.transaction(readonly=True) as tx:
            client = await tx.clients.get(client_id)
        if client is None:
            raise InvalidClient("Client credentials are invalid")
        return client

    # ------------------------------------------------------------------ grants

    async def grant(self, client: OAuthClient, request: GrantRequest) -> IssuedToken:
        """
        Run one OAuth grant for an authenticated client.
        """
        if not request.grant_type:
            raise OAuthError("Invalid or missing grant_type parameter")
        if request.grant_type not in GRANT_TYPES:
            raise OAuthError("Invalid grant_type parameter or parameter missing")
        lifetime = self._requested_lifetime(request)
        if request.grant_type == GRANT_PASSWORD:
            return await self._password_grant(client, request, lifetime)
        if request.grant_type == GRANT_CLIENT_CREDENTIALS:
            return await self._client_credentials_grant(client, request, lifetime)
        if request.grant_type == GRANT_REFRESH:
            return await self._refresh_grant(client, request)
        return await self._mfa_grant(client, request)

    def _requested_lifetime(self, request: GrantRequest) -> int | None:
        """
        Seconds the new token lives, or None for never.
        """
        if request.expires_at not in (None, ""):
            if request.expires_at == "null":
                return None
            try:
                when = datetime.fromisoformat(str(request.expires_at).replace("Z", "+00:00"))
            except ValueError as exc:
                raise OAuthError("expires_at must be an ISO-8601 date") from exc
            if when.tzinfo is None:
                raise OAuthError("expires_at must include a time zone")
            seconds = int((when - self._clock.now()).total_seconds())
            if seconds <= 0:
                raise OAuthError("expires_at must be in the future")
            return seconds
        if request.expires_in not in (None, ""):
            try:
                seconds = int(str(request.expires_in))
            except ValueError as exc:
                raise OAuthError("expires_in must be a whole number of seconds") from exc
            if seconds < 0 or seconds > 10 * 365 * 86400:
                raise OAuthError("expires_in must be between 0 and 315360000")
            return seconds or None
        return self._policy.access_lifetime or None

    async def _password_grant(
        self, client: OAuthClient, request: GrantRequest, lifetime: int | None
    ) -> IssuedToken:
        if not request.username or not request.password:
            raise InvalidClient('Missing parameters. "username" and "password" are required')
        if client.product_id is not None:  # a product's client logs its customers in (issue 11 section 6)
            customer = await self._customer_login(client.product_id, request.username, request.password)
            if customer is not None:
                return await self.issue_for_customer(customer, client.id, lifetime)
        user = await self._accounts.authenticate(request.username, request.password)
        if user.mfa_enabled:
            mfa_token = new_token()
            async with self._store.transaction() as tx:
                await tx.secrets.add(
                    kind=MFA_LOGIN,
                    secret_hash=hash_secret(mfa_token),
                    user_id=user.id,
                    expires_at=self._clock.now() + timedelta(seconds=self._policy.mfa_lifetime),
                    payload={"client_id": client.id, "lifetime": lifetime},
                )
            raise MfaRequired("Multifactor authentication required", mfa_token=mfa_token)
        return await self._issue(user.id, client.id, (), lifetime)

    async def _client_credentials_grant(
        self, client: OAuthClient, request: GrantRequest, lifetime: int | None
    ) -> IssuedToken:
        if client.builtin or (client.owner_id is None and client.product_id is None):
            raise InvalidGrant("Client credentials are invalid")
        granted = tuple(client.scopes) or (FULL_SCOPE,)
        if request.scope:
            if request.scope.startswith("customer="):
                return await self._customer_grant(client, request.scope.removeprefix("customer="), lifetime)
            wanted = tuple(request.scope.split())
            if FULL_SCOPE not in granted and not set(wanted) <= set(granted):
                raise InsufficientScope("The requested scope is not allowed for this client")
            granted = wanted
        if client.product_id is not None:  # a product client's token acts for its product, not a person
            async with self._store.transaction() as tx:
                return await self._issue_in(
                    tx, None, client.id, granted, lifetime, product_id=client.product_id
                )
        return await self._issue(client.owner_id, client.id, granted, lifetime)

    async def _customer_login(self, product_id: int, username: str, password: str) -> Customer | None:
        """
        The product's customer these credentials name, if there is one: None when the product has no
        customer of that name (the login is a person's then); `InvalidGrant` when the password is wrong or
        the customer has none (a shadow customer).
        """
        async with self._store.transaction(readonly=True) as tx:
            customer = await tx.customers.get_by_username(product_id, username.strip().lower())
        if customer is None:
            return None
        if not await self._accounts.password_matches(customer.password_hash, password):
            raise InvalidGrant("User credentials are invalid")
        return customer

    async def _customer_grant(self, client: OAuthClient, email: str, lifetime: int | None) -> IssuedToken:
        """
        ``client_credentials`` with ``scope=customer=<email>`` (catalogue §16 row 5): a token for one of the
        client's product's customers, no password asked (the client's secret vouches for it).
        """
        if client.product_id is None:
            raise InsufficientScope("Customer tokens need a product client; this client has no product")
        async with self._store.transaction(readonly=True) as tx:
            customer = await tx.customers.get_by_username(client.product_id, email.strip().lower())
        if customer is None:
            raise InvalidGrant("Customer not found in this product")
        return await self.issue_for_customer(customer, client.id, lifetime)

    async def issue_for_customer(
        self, customer: Customer, client_id: str, lifetime: int | None, *, refreshable: bool = True
    ) -> IssuedToken:
        """
        A customer's token: it acts for the customer's product with `CUSTOMER_ACTIONS` on its own devices.
        ``refreshable=False`` (the implicit flow: a browser keeps no refresh token) issues none.
        """
        async with self._store.transaction() as tx:
            return await self._issue_in(
                tx,
                None,
                client_id,
                (),
                lifetime,
                product_id=customer.product_id,
                customer_id=customer.id,
                refreshable=refreshable,
            )

    @property
    def default_lifetime(self) -> int | None:
        """
        Seconds a token lives when the request does not say (None: never).
        """
        return self._policy.access_lifetime or None

    async def _refresh_grant(self, client: OAuthClient, request: GrantRequest) -> IssuedToken:
        if not request.refresh_token:
            raise OAuthError('No "refresh_token" parameter')
        async with self._store.transaction() as tx:
            old = await tx.tokens.get_by_refresh_hash(hash_secret(request.refresh_token))
            if old is None or old.client_id != client.id:
                raise InvalidGrant("Invalid refresh token")
            if old.refresh_expires_at is not None and old.refresh_expires_at <= self._clock.now():
                raise InvalidGrant("Refresh token has expired")
            # Using a refresh token revokes it together with the access token it came with.
            await tx.tokens.delete(old.id)
            lifetime = self._policy.access_lifetime or None
            return await self._issue_in(
                tx,
                old.user_id,
                old.client_id,
                old.scopes,
                lifetime,
                product_id=old.product_id,
                api_user_id=old.api_user_id,
                customer_id=old.customer_id,
            )

    async def _mfa_grant(self, client: OAuthClient, request: GrantRequest) -> IssuedToken:
        code = request.otp if request.grant_type == GRANT_MFA_OTP else request.recovery_code
        if not request.mfa_token or not code:
            what = "otp" if request.grant_type == GRANT_MFA_OTP else "recovery_code"
            raise OAuthError(f"You must provide {what} and mfa token.")
        challenge_hash = hash_secret(request.mfa_token)
        async with self._store.transaction() as tx:
            challenge = await tx.secrets.get(MFA_LOGIN, challenge_hash)
            if (
                challenge is None
                or challenge[1] <= self._clock.now()
                or challenge[2].get("client_id") != client.id
            ):
                raise InvalidGrant("Invalid or expired mfa token")
            user_id, _, payload = challenge
            user = await tx.users.get(user_id)
            if user is None or not user.mfa_enabled or not user.mfa_secret:
                raise InvalidGrant("Invalid or expired mfa token")
            if request.grant_type == GRANT_MFA_OTP:
                if not verify_otp(user, code, self._clock.now()):
                    raise InvalidGrant("Invalid one-time password")
            elif not await tx.secrets.delete(MFA_RECOVERY, hash_secret(code.strip().lower())):
                raise InvalidGrant("Invalid recovery code")
            await tx.secrets.delete(MFA_LOGIN, challenge_hash)
            lifetime = payload.get("lifetime")
            return await self._issue_in(tx, user.id, client.id, (), int(lifetime) if lifetime else None)

    async def _issue(
        self, user_id: int | None, client_id: str, scopes: tuple[str, ...], lifetime: int | None
    ) -> IssuedToken:
        async with self._store.transaction() as tx:
            return await self._issue_in(tx, user_id, client_id, scopes, lifetime)

    async def _issue_in(
        self,
        tx: UnitOfWork,
        user_id: int | None,
        client_id: str,
        scopes: tuple[str, ...],
        lifetime: int | None,
        *,
        product_id: int | None = None,
        api_user_id: int | None = None,
        customer_id: int | None = None,
        refreshable: bool = True,
    ) -> IssuedToken:
        now = self._clock.now()
        access = new_token()
        expires_at = now + timedelta(seconds=lifetime) if lifetime else None
        refresh = new_token() if expires_at is not None and refreshable else None
        refresh_expires_at = (
            expires_at + timedelta(seconds=self._policy.refresh_lifetime)
            if expires_at is not None and self._policy.refresh_lifetime
            else None
        )
        await tx.tokens.add(
            token_hash=hash_secret(access),
            hint=hint_of(access),
            user_id=user_id,
            client_id=client_id,
            scopes=scopes,
            now=now,
            expires_at=expires_at,
            refresh_token_hash=hash_secret(refresh) if refresh else None,
            refresh_expires_at=refresh_expires_at,
            product_id=product_id,
            api_user_id=api_user_id,
            customer_id=customer_id,
        )
        return IssuedToken(access_token=access, expires_in=lifetime, refresh_token=refresh, scopes=scopes)

    # ------------------------------------------------------------------ listing and revocation

    async def list_tokens(self, user: User) -> list[AccessToken]:
        """
        The user's tokens that are still valid.
        """
        now = self._clock.now()
        async with self._store.transaction(readonly=True) as tx:
            tokens = await tx.tokens.list_for_user(user.id)
        return [t for t in tokens if t.expires_at is None or t.expires_at > now]

    async def revoke(self, token_or_hint: str, owner: User | None) -> None:
        """
        Revoke one token.

        Without ``owner`` the full token is the credential. With an ``owner`` (HTTP Basic) the token may also
        be named by the hint shown in the token list; either way it must be that owner's. Raises `NotFound`.
        """
        async with self._store.transaction() as tx:
            found = await tx.tokens.find_with_user(hash_secret(token_or_hint))
            target: AccessToken | None = found[0] if found else None
            if target is None and owner is not None:
                hint = token_or_hint.rstrip(".")
                matches = [t for t in await tx.tokens.list_for_user(owner.id) if t.hint == hint]
                target = matches[0] if len(matches) == 1 else None
            if target is None or (owner is not None and target.user_id != owner.id):
                raise NotFound("Access token not found")
            await tx.tokens.delete(target.id)

    async def revoke_all(self, user: User) -> int:
        """
        Revoke every token of ``user``.
        """
        async with self._store.transaction() as tx:
            return await tx.tokens.delete_for_user(user.id)

    async def revoke_current(self, principal: AnyPrincipal) -> None:
        """
        Revoke the token this request was made with.
        """
        async with self._store.transaction() as tx:
            await tx.tokens.delete(principal.token.id)

    async def issue_for_api_user(
        self, tx: UnitOfWork, product_id: int, api_user_id: int, scopes: tuple[str, ...]
    ) -> str:
        """
        An API user's one token (it never expires, catalogue §2.7), inside the caller's transaction. Its
        older tokens are revoked first: an API user has one valid token at a time.
        """
        await tx.tokens.delete_for_api_user(api_user_id)
        issued = await self._issue_in(
            tx, None, API_USER_CLIENT, scopes, None, product_id=product_id, api_user_id=api_user_id
        )
        return issued.access_token


def verify_otp(user: User, code: str, now: datetime) -> bool:
    """
    Check a TOTP code against the user's secret, allowing one step of clock drift either way.
    """
    if not user.mfa_secret:
        return False
    return bool(pyotp.TOTP(user.mfa_secret).verify(code.strip(), for_time=now, valid_window=1))
