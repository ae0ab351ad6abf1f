"""
Products and their teams (catalogue §14): create and edit products (devicecloud extensions: a self-hosted
cloud has no console), list and read them, the team's people and roles, and programmatic API users.

Rules kept here:
- every product operation goes through `product_access.access_product` (decision 0016); no role is
  interpreted anywhere else;
- a product's creator is its Owner; the Owner's membership cannot be changed or removed, and nobody is made
  Owner by invitation or role change (there is no ownership transfer);
- an API user has exactly one valid token: creating it returns the token, updating it revokes the old one
  and returns a fresh one, removing it revokes it (its tokens cascade away with it);
- an API user inviting or updating another API user cannot hand out scopes it lacks itself.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devicecloud.domain.access import SCOPES, AnyPrincipal, ProductPrincipal, Role, scopes_allow
from devicecloud.domain.accounts import Principal, User
from devicecloud.domain.products import ApiUser, Product, TeamMember
from devicecloud.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from devicecloud.services.accounts import normalise_username
from devicecloud.services.product_access import access_product, find_product, refused

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.services.tokens import TokenService
    from devicecloud.store.interfaces import Store, UnitOfWork

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
MAX_SLUG = 63
MAX_NAME = 255
MAX_DESCRIPTION = 4096
MAX_PLATFORM_ID = 65535
API_USER_DOMAIN = "api.particle.io"  # API users' usernames look like the hosted cloud's (catalogue §14)
DEFAULT_INVITE_ROLE = Role.ADMINISTRATOR  # before roles existed every team member had full access


@dataclass(frozen=True, slots=True)
class ProductView:
    """
    A product with its group names, as the API renders it.
    """

    product: Product
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Team:
    members: Sequence[TeamMember]
    api_users: Sequence[ApiUser]


@dataclass(frozen=True, slots=True)
class ApiUserToken:
    api_user: ApiUser
    token: str


def _slugify(name: str) -> str:
    words = re.findall(r"[a-z0-9]+", name.lower())
    slug = "-".join(words)[:MAX_SLUG].strip("-")
    return slug if slug and not slug.isdigit() else f"product-{slug}".strip("-")


def check_slug(value: Any) -> str:
    """
    1-63 lower-case letters, digits and single dashes, not only digits (that would read as an id).
    """
    if not isinstance(value, str) or not SLUG.match(value) or len(value) > MAX_SLUG or value.isdigit():
        raise InvalidInput("slug must be 1-63 lower-case letters, digits and dashes, and not only digits")
    return value


def _check_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidInput(f"name is required (at most {MAX_NAME} characters)")
    return value.strip()


def _check_description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return value or None


def _check_quarantine(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidInput("settings.quarantine must be true or false")


def _check_platform(value: Any) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PLATFORM_ID:
        raise InvalidInput(
            "platform_id is required: the platform number of the product's devices (6 = Photon)"
        )
    return int(value)


def check_role(value: Any) -> Role:
    role = Role.parse(value)
    if role is None:
        names = ", ".join(r.value for r in Role if r is not Role.OWNER)
        raise InvalidInput(f"role must be one of {names}")
    if role is Role.OWNER:
        raise InvalidInput("Nobody can be made Owner: a product has one Owner, its creator")
    return role


def check_api_scopes(value: Any) -> tuple[str, ...]:
    """
    A non-empty list of catalogue scopes (§1.6), duplicates dropped.
    """
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise InvalidInput('scopes must be a non-empty list of scopes, e.g. ["devices:list"]')
    unknown = sorted({s for s in value if s not in SCOPES})
    if unknown:
        raise InvalidInput(f"Unknown scopes: {', '.join(unknown)}")
    return tuple(dict.fromkeys(value))


def _check_friendly_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidInput(f"friendly_name is required (at most {MAX_NAME} characters)")
    return value.strip()


class ProductService:
    """
    Products and their teams.
    """

    def __init__(self, *, store: Store, clock: Clock, tokens: TokenService) -> None:
        self._store = store
        self._clock = clock
        self._tokens = tokens
        # Called with a product's id after its settings changed (the gateway's cache of them listens).
        self.on_settings_change: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ products

    async def create(
        self,
        owner: User,
        *,
        name: Any,
        platform_id: Any,
        slug: Any = None,
        description: Any = None,
        quarantine: Any = None,
    ) -> ProductView:
        """
        A new product whose Owner is ``owner``. Without a slug one is made from the name.
        """
        checked_name = _check_name(name)
        platform = _check_platform(platform_id)
        text = _check_description(description)
        settings = {"quarantine": _check_quarantine(quarantine) if quarantine is not None else False}
        now = self._clock.now()
        async with self._store.transaction() as tx:
            if slug is not None:
                chosen = check_slug(slug)
            else:
                base = _slugify(checked_name)
                chosen, n = base, 1
                while await tx.products.slug_taken(chosen):
                    n += 1
                    chosen = f"{base[: MAX_SLUG - len(str(n)) - 1]}-{n}"
            product = await tx.products.add(
                slug=chosen,
                name=checked_name,
                description=text,
                platform_id=platform,
                owner_id=owner.id,
                settings=settings,
                now=now,
            )
            await tx.products.add_member(product.id, owner.id, Role.OWNER, now)
        return ProductView(product, ())

    async def list_products(self, principal: AnyPrincipal) -> list[ProductView]:
        """
        The products the caller may see: a person's teams, an API user's or client's own product.
        """
        if not principal.allows("products:list"):
            raise refused("products:list")
        async with self._store.transaction(readonly=True) as tx:
            if isinstance(principal, Principal):
                found = list(await tx.products.list_for_member(principal.user.id))
            else:
                product = await tx.products.get(principal.product_id)
                found = [product] if product is not None else []
            groups = await tx.groups.names_by_product([p.id for p in found])
        return [ProductView(p, tuple(groups.get(p.id, ()))) for p in found]

    async def get(self, principal: AnyPrincipal, ref: str) -> ProductView:
        async with self._store.transaction(readonly=True) as tx:
            found = await access_product(tx, principal, ref, "products:get", groups=True)
        return ProductView(found.product, found.groups)

    async def update(
        self,
        principal: AnyPrincipal,
        ref: str,
        *,
        name: Any = None,
        description: Any = ...,
        quarantine: Any = None,
    ) -> ProductView:
        """
        Edit a product's name, description or settings (``quarantine``); Administrators and the Owner.
        """
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _check_name(name)
        if description is not ...:
            changes["description"] = _check_description(description)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "products:update")).product
            if quarantine is not None:
                changes["settings"] = {**product.settings, "quarantine": _check_quarantine(quarantine)}
            if not changes:
                raise InvalidInput("Nothing to update: give name, description or settings.quarantine")
            updated = await tx.products.update(product.id, updated_at=self._clock.now(), **changes)
            groups = await tx.groups.names_by_product([product.id])
        if "settings" in changes and self.on_settings_change is not None:
            self.on_settings_change(product.id)
        return ProductView(updated, tuple(groups[product.id]))

    async def list_all(self) -> list[Product]:
        """
        Every product (for operators: `devicecloud products list`).
        """
        async with self._store.transaction(readonly=True) as tx:
            return list(await tx.products.list_all())

    async def by_ref(self, ref: str) -> Product | None:
        async with self._store.transaction(readonly=True) as tx:
            return await find_product(tx, ref)

    # ------------------------------------------------------------------ team

    async def team(self, principal: AnyPrincipal, ref: str) -> Team:
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "teams.users:list", "team")).product
            return Team(await tx.products.members(product.id), await tx.products.api_users(product.id))

    async def invite(self, principal: AnyPrincipal, ref: str, username: Any, role: Any = None) -> TeamMember:
        """
        Add an existing account to the team (there is no invitation mail: the account is added at once).
        """
        if not isinstance(username, str) or not username.strip():
            raise InvalidInput("username is required: the email of an existing account")
        chosen = check_role(role) if role is not None else DEFAULT_INVITE_ROLE
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "teams.users:invite", "team")).product
            user = await tx.users.get_by_username(normalise_username(username))
            if user is None:
                raise NotFound("User not found: only existing accounts can be invited", code="Not Found")
            await tx.products.add_member(product.id, user.id, chosen, self._clock.now())
        return _member(user, chosen)

    async def set_role(self, principal: AnyPrincipal, ref: str, username: str, role: Any) -> TeamMember:
        chosen = check_role(role)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "teams.users:update", "team")).product
            user, current = await _member_of(tx, product, username)
            if current is Role.OWNER:
                raise PermissionDenied("The product's Owner keeps that role", code="Permission Denied")
            await tx.products.set_role(product.id, user.id, chosen)
        return _member(user, chosen)

    async def remove(self, principal: AnyPrincipal, ref: str, username: str) -> None:
        """
        Remove a person or an API user from the team (an API user's token stops working at once).
        """
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "teams.users:remove", "team")).product
            bot = await tx.products.api_user_by_username(product.id, normalise_username(username))
            if bot is not None:
                # Revoked explicitly first; the foreign key's cascade would do it too.
                await tx.tokens.delete_for_api_user(bot.id)
                await tx.products.delete_api_user(bot.id)
                return
            user, current = await _member_of(tx, product, username)
            if current is Role.OWNER:
                raise PermissionDenied("The product's Owner cannot be removed", code="Permission Denied")
            await tx.products.remove_member(product.id, user.id)

    async def update_member(
        self,
        principal: AnyPrincipal,
        ref: str,
        username: str,
        *,
        role: Any = None,
        friendly_name: Any = None,
        scopes: Any = None,
    ) -> TeamMember | ApiUserToken:
        """
        ``POST``/``PUT /v1/products/:p/team/:username``: a person's role, or an API user's name and scopes.
        """
        async with self._store.transaction(readonly=True) as tx:
            product = (await access_product(tx, principal, ref, "teams.users:update", "team")).product
            bot = await tx.products.api_user_by_username(product.id, normalise_username(username))
        if bot is not None:
            return await self.update_api_user(
                principal, ref, username, friendly_name=friendly_name, scopes=scopes
            )
        if role is None:
            raise InvalidInput("role is required")
        return await self.set_role(principal, ref, username, role)

    # ------------------------------------------------------------------ API users

    async def create_api_user(
        self, principal: AnyPrincipal, ref: str, friendly_name: Any, scopes: Any
    ) -> ApiUserToken:
        name = _check_friendly_name(friendly_name)
        wanted = check_api_scopes(scopes)
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "teams.users:invite", "team")).product
            _no_escalation(principal, wanted)
            for _ in range(20):
                suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
                username = f"{product.slug[:40]}+{suffix}@{API_USER_DOMAIN}"
                try:
                    bot = await tx.products.add_api_user(
                        product_id=product.id,
                        username=username,
                        friendly_name=name,
                        scopes=wanted,
                        now=self._clock.now(),
                    )
                except Conflict:
                    continue
                token = await self._tokens.issue_for_api_user(tx, product.id, bot.id, bot.scopes)
                return ApiUserToken(bot, token)
        raise Conflict("Could not allocate an API user name; try again")

    async def update_api_user(
        self,
        principal: AnyPrincipal,
        ref: str,
        username: str,
        *,
        friendly_name: Any = None,
        scopes: Any = None,
    ) -> ApiUserToken:
        """
        Change an API user's name or scopes. Its token is replaced: the new one carries the new scopes.
        """
        changes: dict[str, Any] = {}
        if friendly_name is not None:
            changes["friendly_name"] = _check_friendly_name(friendly_name)
        if scopes is not None:
            changes["scopes"] = list(check_api_scopes(scopes))
        if not changes:
            raise InvalidInput("Nothing to update: give friendly_name or scopes")
        async with self._store.transaction() as tx:
            product = (await access_product(tx, principal, ref, "teams.users:update", "team")).product
            bot = await tx.products.api_user_by_username(product.id, normalise_username(username))
            if bot is None:
                raise _not_in_team()
            if "scopes" in changes:
                _no_escalation(principal, tuple(changes["scopes"]))
            bot = await tx.products.update_api_user(bot.id, **changes)
            token = await self._tokens.issue_for_api_user(tx, product.id, bot.id, bot.scopes)
        return ApiUserToken(bot, token)


def _no_escalation(principal: AnyPrincipal, wanted: Sequence[str]) -> None:
    # A person inviting holds a role with team management (Administrator/Owner): any scope. An API user may
    # only pass on what it has.
    if isinstance(principal, ProductPrincipal):
        beyond = sorted(s for s in wanted if not scopes_allow(principal.scopes, s, empty_means_all=False))
        if beyond:
            raise PermissionDenied(
                f"Permission Denied: cannot grant scopes this token lacks: {', '.join(beyond)}",
                code="Permission Denied",
            )


def _not_in_team() -> NotFound:
    return NotFound("User not found in this product's team", code="Not Found")


def _member(user: User, role: Role) -> TeamMember:
    return TeamMember(user.id, user.username, role)


async def _member_of(tx: UnitOfWork, product: Product, username: str) -> tuple[User, Role]:
    user = await tx.users.get_by_username(normalise_username(username))
    role = await tx.products.role_of(product.id, user.id) if user is not None else None
    if user is None or role is None:
        raise _not_in_team()
    return user, role
