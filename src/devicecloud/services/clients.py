"""
OAuth clients a user creates for their own applications (``/v1/clients``), and a product's
(``/v1/products/:p/clients``): those belong to the product, not to the member who made them (no owner), so
they outlive that member's account; their client-credentials tokens act for the product (decision 0016).

A client id is a slug of its name plus a number (``myapp-2146``); its secret is 40 hex characters, shown once
and stored hashed. Scopes are recorded here and enforced on the tokens the client obtains (`tokens.py`).
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from devicecloud.domain.access import Resource, can
from devicecloud.domain.accounts import ClientType, NewClient, OAuthClient, User
from devicecloud.errors import Conflict, InvalidInput, NotFound
from devicecloud.services.product_access import access_product
from devicecloud.services.secrets import hash_secret, new_token

if TYPE_CHECKING:
    from collections.abc import Sequence

    from devicecloud.clock import Clock
    from devicecloud.domain.access import AnyPrincipal
    from devicecloud.store.interfaces import Store

KNOWN_SCOPES = frozenset(
    {
        "*:*",
        "customers:create",
        "clients:list",
        "clients:create",
        "clients:update",
        "clients:remove",
        "devices:list",
        "devices:get",
        "devices:update",
        "devices:remove",
        "devices:ping",
        "devices.variable:get",
        "devices.function:call",
        "events:get",
        "events:send",
        "integrations:get",
        "integrations:list",
        "integrations:create",
        "integrations:update",
        "integrations:remove",
        "integrations:test",
        "firmware:get",
        "firmware:list",
        "firmware:create",
        "firmware:update",
        "firmware:release",
        "firmware:remove",
    }
)
MAX_NAME_LENGTH = 255


def check_scopes(raw: Any) -> tuple[str, ...]:
    """
    Parse a space-separated scope string; ``none`` means no scopes. Raises `InvalidInput` on unknown scopes.
    """
    if raw is None or raw == "":
        return ()
    if isinstance(raw, list):
        raw = " ".join(str(part) for part in raw)
    if not isinstance(raw, str):
        raise InvalidInput("scope must be a space-separated string")
    parts = tuple(dict.fromkeys(raw.split()))
    if parts == ("none",):
        return ()
    unknown = [part for part in parts if part not in KNOWN_SCOPES and not part.endswith(":*")]
    if unknown:
        raise InvalidInput(f"Unknown scope: {', '.join(unknown)}", code="invalid_scope")
    return parts


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return (slug or "client")[:30]


class ClientService:
    """
    Create, list, change and delete OAuth clients, always within one owner (and optionally one product).
    """

    def __init__(self, *, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create(
        self,
        owner: User,
        *,
        name: Any,
        type: Any,
        redirect_uri: Any = None,
        scope: Any = None,
        product_id: int | None = None,
    ) -> NewClient:
        """
        A new client and its secret. ``web`` clients need a ``redirect_uri``.
        """
        return await self._create(
            owner.id, name=name, type=type, redirect_uri=redirect_uri, scope=scope, product_id=product_id
        )

    async def _create(
        self,
        owner_id: int | None,
        *,
        name: Any,
        type: Any,
        redirect_uri: Any,
        scope: Any,
        product_id: int | None,
    ) -> NewClient:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
            raise InvalidInput("name is required (at most 255 characters)")
        if type not in ("installed", "web"):
            raise InvalidInput("type must be installed or web")
        client_type: ClientType = type
        if client_type == "web":
            if not isinstance(redirect_uri, str) or not re.match(r"^https?://", redirect_uri):
                raise InvalidInput("redirect_uri is required for web clients and must be an http(s) URL")
        else:
            redirect_uri = None
        scopes = check_scopes(scope)
        secret = new_token()
        async with self._store.transaction() as tx:
            for _ in range(20):
                client = OAuthClient(
                    id=f"{_slug(name)}-{secrets.randbelow(9000) + 1000}",
                    name=name.strip(),
                    type=client_type,
                    secret_hash=hash_secret(secret),
                    owner_id=owner_id,
                    product_id=product_id,
                    redirect_uri=redirect_uri,
                    scopes=scopes,
                )
                try:
                    await tx.clients.add(client, now=self._clock.now())
                except Conflict:
                    continue
                return NewClient(client=client, secret=secret)
        raise Conflict("Could not allocate a client id; try another name")

    async def list(self, owner: User, product_id: int | None = None) -> list[OAuthClient]:
        async with self._store.transaction(readonly=True) as tx:
            return list(await tx.clients.list_for_owner(owner.id, product_id))

    async def access(self, owner: User, client_id: str, product_id: int | None = None) -> OAuthClient:
        """
        Load a client the owner may manage; others' clients are reported as missing.
        """
        async with self._store.transaction(readonly=True) as tx:
            client = await tx.clients.get(client_id)
        if (
            client is None
            or client.product_id != product_id
            or not can(
                owner, "clients:list", Resource("client", user_id=client.owner_id, product_id=product_id)
            )
        ):
            raise NotFound("Client not found")
        return client

    async def update(
        self,
        owner: User,
        client_id: str,
        *,
        name: Any = None,
        scope: Any = None,
        product_id: int | None = None,
    ) -> OAuthClient:
        """
        Rename a client and/or replace its scopes (``none`` clears them).
        """
        await self.access(owner, client_id, product_id)
        return await self._update(client_id, name, scope)

    async def _update(self, client_id: str, name: Any, scope: Any) -> OAuthClient:
        changes: dict[str, Any] = {}
        if name is not None:
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
                raise InvalidInput("name must be a non-empty string (at most 255 characters)")
            changes["name"] = name.strip()
        if scope is not None:
            changes["scopes"] = check_scopes(scope)
        if not changes:
            raise InvalidInput("Nothing to update: give name or scope")
        async with self._store.transaction() as tx:
            return await tx.clients.update(client_id, **changes)

    async def delete(self, owner: User, client_id: str, product_id: int | None = None) -> None:
        """
        Delete a client and revoke every token it issued.
        """
        await self.access(owner, client_id, product_id)
        await self._delete(client_id)

    async def _delete(self, client_id: str) -> None:
        async with self._store.transaction() as tx:
            await tx.tokens.delete_for_client(client_id)
            await tx.clients.delete(client_id)

    # ------------------------------------------------------------------ a product's clients

    async def create_for_product(
        self,
        principal: AnyPrincipal,
        product_ref: str,
        *,
        name: Any,
        type: Any,
        redirect_uri: Any,
        scope: Any,
    ) -> NewClient:
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, product_ref, "clients:create", "client")).product
        return await self._create(
            None, name=name, type=type, redirect_uri=redirect_uri, scope=scope, product_id=product.id
        )

    async def list_for_product(self, principal: AnyPrincipal, product_ref: str) -> Sequence[OAuthClient]:
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, product_ref, "clients:list", "client")).product
            return await tx.clients.list_for_product(product.id)

    async def product_client(
        self, principal: AnyPrincipal, product_ref: str, client_id: str, action: str
    ) -> OAuthClient:
        """
        The product's client ``client_id`` if the caller may do ``action`` to the product's clients; a client
        of a user or of another product is reported as missing.
        """
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, product_ref, action, "client")).product
            client = await tx.clients.get(client_id)
        if client is None or client.product_id != product.id:
            raise NotFound("Client not found")
        return client

    async def update_for_product(
        self, principal: AnyPrincipal, product_ref: str, client_id: str, *, name: Any, scope: Any
    ) -> OAuthClient:
        await self.product_client(principal, product_ref, client_id, "clients:update")
        return await self._update(client_id, name, scope)

    async def delete_for_product(self, principal: AnyPrincipal, product_ref: str, client_id: str) -> None:
        """
        Delete the product's client and revoke every token it issued.
        """
        await self.product_client(principal, product_ref, client_id, "clients:remove")
        await self._delete(client_id)
