"""
User accounts: sign-up, profile, password changes and resets, deletion, and MFA enrolment.

Preconditions are checked before anything is written (`check_*` style), and every change that must invalidate
sessions (a new password, a reset, an explicit ``invalidate_tokens``) deletes the user's tokens in the same
transaction as the change.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyotp

from devicecloud.domain.accounts import MfaEnrollment, User
from devicecloud.errors import (
    Conflict,
    InvalidGrant,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthorized,
    Unavailable,
)
from devicecloud.services.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, Passwords
from devicecloud.services.secrets import hash_secret, new_token
from devicecloud.services.tokens import MFA_RECOVERY, verify_otp

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.services.ports import Notifier
    from devicecloud.store.interfaces import Store

EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+$")
ACCOUNT_INFO_KEYS = frozenset({"first_name", "last_name", "business_account", "company_name"})
PASSWORD_RESET = "password_reset"  # noqa: S105 - a record kind, not a secret
MFA_ENROLL = "mfa_enroll"
RECOVERY_CODE_COUNT = 10
FAR_FUTURE = timedelta(days=365 * 100)


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """
    Switches and lifetimes that shape account behaviour.
    """

    signup_open: bool = True
    reset_lifetime: int = 3600
    mfa_lifetime: int = 300
    issuer: str = "devicecloud"
    public_url: str = "http://127.0.0.1:8080"


def normalise_username(username: str) -> str:
    """
    Usernames are emails, compared case-insensitively.
    """
    return username.strip().lower()


def check_username(username: Any) -> str:
    """
    A valid email, normalised; raises `InvalidInput`.
    """
    if not isinstance(username, str) or not EMAIL_PATTERN.match(username.strip()) or len(username) > 254:
        raise InvalidInput("username must be a valid email address", code="invalid_username")
    return normalise_username(username)


def check_password(password: Any) -> str:
    """
    A password of acceptable length; raises `InvalidInput`.
    """
    if not isinstance(password, str) or not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH} characters",
            code="invalid_password",
        )
    return password


def check_account_info(info: Any) -> dict[str, Any]:
    """
    The known account_info fields, type-checked; raises `InvalidInput`.
    """
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise InvalidInput("account_info must be an object")
    clean: dict[str, Any] = {}
    for key, value in info.items():
        if key not in ACCOUNT_INFO_KEYS:
            continue
        if key == "business_account":
            clean[key] = value in (True, "true", "1", 1, "on")
        elif not isinstance(value, str) or len(value) > 255:
            raise InvalidInput(f"account_info.{key} must be a string of at most 255 characters")
        else:
            clean[key] = value
    return clean


class AccountService:
    """
    Everything about a user account except tokens.
    """

    def __init__(
        self, *, store: Store, clock: Clock, passwords: Passwords, notifier: Notifier, policy: AccountPolicy
    ) -> None:
        self._store = store
        self._clock = clock
        self._passwords = passwords
        self._notifier = notifier
        self._policy = policy

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, username: str, password: str) -> User:
        """
        The user these credentials belong to. Raises `InvalidGrant` ("User credentials are invalid").
        """
        async with self._store.transaction(readonly=True) as tx:
            user = await tx.users.get_by_username(normalise_username(username))
        ok = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok:
            raise InvalidGrant("User credentials are invalid")
        return user

    async def password_matches(self, stored_hash: str | None, password: str) -> bool:
        """
        Whether ``password`` matches a hash kept elsewhere (a product customer's); with no hash it spends the
        same time and answers False.
        """
        return await self._passwords.verify(stored_hash, password)

    async def hash_password(self, password: Any) -> str:
        """
        The hash of an acceptable password (`check_password`'s rules) for a record kept elsewhere.
        """
        return await self._passwords.hash(check_password(password))

    async def authenticate_basic(self, username: str, password: str, otp: str | None = None) -> User:
        """
        HTTP Basic for the token-list endpoints: like `authenticate`, plus the OTP when MFA is on.
        """
        try:
            user = await self.authenticate(username, password)
        except InvalidGrant as exc:
            raise Unauthorized("User credentials are invalid") from exc
        if user.mfa_enabled and (not otp or not verify_otp(user, otp, self._clock.now())):
            raise Unauthorized(
                "A valid one-time password (otp) is required for this account", code="mfa_required"
            )
        return user

    # ------------------------------------------------------------------ create, read, update, delete

    async def sign_up(self, username: Any, password: Any, account_info: Any = None) -> User:
        """
        Public sign-up; only when the server allows it.
        """
        if not self._policy.signup_open:
            raise Unavailable("Sign-up is closed on this server", code="signup_closed")
        return await self.create_user(username, password, account_info)

    async def create_user(self, username: Any, password: Any, account_info: Any = None) -> User:
        """
        Create an account (operators and sign-up). Raises `InvalidInput` or `Conflict`.
        """
        name = check_username(username)
        secret = check_password(password)
        info = check_account_info(account_info)
        password_hash = await self._passwords.hash(secret)
        async with self._store.transaction() as tx:
            return await tx.users.add(
                username=name, password_hash=password_hash, account_info=info, now=self._clock.now()
            )

    async def list_users(self) -> list[User]:
        async with self._store.transaction(readonly=True) as tx:
            return list(await tx.users.list())

    async def count_users(self) -> int:
        async with self._store.transaction(readonly=True) as tx:
            return await tx.users.count()

    async def get_by_username(self, username: str) -> User:
        async with self._store.transaction(readonly=True) as tx:
            user = await tx.users.get_by_username(normalise_username(username))
        if user is None:
            raise NotFound(f"No user {username}")
        return user

    async def update_profile(
        self,
        user: User,
        *,
        username: Any = None,
        password: Any = None,
        current_password: Any = None,
        account_info: Any = None,
        invalidate_tokens: bool = False,
        keep_token_id: int | None = None,
    ) -> tuple[User, str]:
        """
        ``PUT /v1/user``: change email and/or password (both need the current password) and account info.

        Returns the updated user and the message the API shows.
        """
        changes: dict[str, Any] = {}
        message = "User updated."
        if username is not None or password is not None:
            if not isinstance(current_password, str) or not await self._passwords.verify(
                user.password_hash, current_password
            ):
                raise PermissionDenied("current_password is incorrect", code="invalid_password")
            if username is not None:
                changes["username"] = check_username(username)
                message = "User's username updated."
            if password is not None:
                changes["password_hash"] = await self._passwords.hash(check_password(password))
                message = "User's password updated."
                invalidate_tokens = True
        if account_info is not None:
            changes["account_info"] = {**user.account_info, **check_account_info(account_info)}
        if not changes:
            raise InvalidInput("Nothing to update: give username, password or account_info")
        changes["updated_at"] = self._clock.now()
        async with self._store.transaction() as tx:
            updated = await tx.users.update(user.id, **changes)
            if invalidate_tokens:
                await tx.tokens.delete_for_user(user.id, except_token_id=keep_token_id)
        return updated, message

    async def set_password(self, username: str, password: str) -> None:
        """
        Operator reset from the CLI; revokes the user's tokens.
        """
        user = await self.get_by_username(username)
        password_hash = await self._passwords.hash(check_password(password))
        async with self._store.transaction() as tx:
            await tx.users.update(user.id, password_hash=password_hash, updated_at=self._clock.now())
            await tx.tokens.delete_for_user(user.id)

    async def delete_account(self, user: User, password: Any) -> None:
        """
        ``DELETE /v1/user``: needs the current password. Tokens and clients go with the account.
        """
        if not isinstance(password, str) or not await self._passwords.verify(user.password_hash, password):
            raise PermissionDenied("password is incorrect", code="invalid_password")
        async with self._store.transaction() as tx:
            await tx.users.delete(user.id)

    async def delete_by_username(self, username: str) -> None:
        """
        Operator deletion from the CLI.
        """
        user = await self.get_by_username(username)
        async with self._store.transaction() as tx:
            await tx.users.delete(user.id)

    # ------------------------------------------------------------------ password reset

    async def request_password_reset(self, username: Any) -> None:
        """
        Send a one-time reset token. Unknown emails succeed silently, so accounts cannot be probed.
        """
        if not isinstance(username, str) or not username.strip():
            raise InvalidInput("username is required")
        async with self._store.transaction() as tx:
            user = await tx.users.get_by_username(normalise_username(username))
            if user is None:
                return
            token = new_token()
            await tx.secrets.delete_for_user(user.id, PASSWORD_RESET)
            await tx.secrets.add(
                kind=PASSWORD_RESET,
                secret_hash=hash_secret(token),
                user_id=user.id,
                expires_at=self._clock.now() + timedelta(seconds=self._policy.reset_lifetime),
                payload={},
            )
        reset_url = f"{self._policy.public_url}/v1/user/password-reset"
        await self._notifier.send_password_reset(email=user.username, token=token, reset_url=reset_url)

    async def complete_password_reset(self, token: Any, password: Any) -> User:
        """
        Set a new password with a reset token; the token is used up and every session revoked. Returns the
        account, whose owner has just proved they read its mail.
        """
        if not isinstance(token, str) or not token:
            raise InvalidInput("token is required")
        secret = check_password(password)
        password_hash = await self._passwords.hash(secret)
        token_hash = hash_secret(token)
        async with self._store.transaction() as tx:
            found = await tx.secrets.get(PASSWORD_RESET, token_hash)
            if (
                found is None
                or found[1] <= self._clock.now()
                or not await tx.secrets.delete(PASSWORD_RESET, token_hash)
            ):
                raise InvalidInput("The password reset token is invalid or has expired", code="invalid_token")
            user = await tx.users.update(found[0], password_hash=password_hash, updated_at=self._clock.now())
            await tx.tokens.delete_for_user(found[0])
        return user

    # ------------------------------------------------------------------ MFA

    async def start_mfa_enrollment(self, user: User) -> MfaEnrollment:
        """
        A new TOTP secret for the user to confirm with a first code.
        """
        if user.mfa_enabled:
            raise Conflict("Multifactor authentication is already enabled", code="mfa_already_enabled")
        secret = pyotp.random_base32()
        mfa_token = new_token()
        async with self._store.transaction() as tx:
            await tx.secrets.delete_for_user(user.id, MFA_ENROLL)
            await tx.secrets.add(
                kind=MFA_ENROLL,
                secret_hash=hash_secret(mfa_token),
                user_id=user.id,
                expires_at=self._clock.now() + timedelta(seconds=self._policy.mfa_lifetime * 4),
                payload={"secret": secret},
            )
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=self._policy.issuer)
        return MfaEnrollment(mfa_token=mfa_token, secret=secret, qr_url=quote(uri, safe=":/?=&"))

    async def confirm_mfa_enrollment(
        self,
        user: User,
        mfa_token: Any,
        otp: Any,
        *,
        invalidate_tokens: bool = False,
        keep_token_id: int | None = None,
    ) -> list[str]:
        """
        Turn MFA on once the first code checks out. Returns the recovery codes (shown once).
        """
        if not isinstance(mfa_token, str) or not isinstance(otp, str) or not mfa_token or not otp:
            raise InvalidInput("mfa_token and otp are required")
        token_hash = hash_secret(mfa_token)
        codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODE_COUNT)]
        now = self._clock.now()
        async with self._store.transaction() as tx:
            found = await tx.secrets.get(MFA_ENROLL, token_hash)
            if found is None or found[0] != user.id or found[1] <= now:
                raise InvalidInput("The mfa_token is invalid or has expired", code="invalid_mfa_token")
            secret = str(found[2]["secret"])
            if not pyotp.TOTP(secret).verify(otp.strip(), for_time=now, valid_window=1):
                raise InvalidInput("The one-time password is incorrect", code="invalid_otp")
            await tx.secrets.delete(MFA_ENROLL, token_hash)
            await tx.users.update(user.id, mfa_enabled=True, mfa_secret=secret, updated_at=now)
            await tx.secrets.delete_for_user(user.id, MFA_RECOVERY)
            for code in codes:
                await tx.secrets.add(
                    kind=MFA_RECOVERY,
                    secret_hash=hash_secret(code),
                    user_id=user.id,
                    expires_at=now + FAR_FUTURE,
                    payload={},
                )
            if invalidate_tokens:
                await tx.tokens.delete_for_user(user.id, except_token_id=keep_token_id)
        return codes

    async def disable_mfa(self, user: User, current_password: Any) -> None:
        """
        Turn MFA off; needs the current password.
        """
        if not isinstance(current_password, str) or not await self._passwords.verify(
            user.password_hash, current_password
        ):
            raise PermissionDenied("current_password is incorrect", code="invalid_password")
        async with self._store.transaction() as tx:
            await tx.users.update(user.id, mfa_enabled=False, mfa_secret=None, updated_at=self._clock.now())
            await tx.secrets.delete_for_user(user.id, MFA_RECOVERY)
