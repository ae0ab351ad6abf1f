"""
Who may do what (decision 0016): the principals a token stands for, who owns a resource, the catalogue's
scopes and the product roles as data, and `can`, the one pure decision every access function applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from devicecloud.domain.accounts import AccessToken, Principal, User

# Catalogue §1.6: every scope an API user or a product token may carry.
SCOPES: frozenset[str] = frozenset(
    {
        "clients:list", "clients:create", "clients:update", "clients:remove",
        "configuration:get",
        "customers:list", "customers:update", "customers:remove",
        "devices:list", "devices:get", "devices:import", "devices:remove", "devices:release",
        "devices:update", "devices:ping",
        "devices.variable:get", "devices.function:call",
        "devices.diagnostics:get", "devices.diagnostics:update", "devices.diagnostics.metadata:get",
        "devices.diagnostics.summary:get",
        "events:get", "events:send",
        "firmware:get", "firmware:list", "firmware:create", "firmware:update", "firmware:release",
        "firmware:remove", "firmware.binary:get",
        "groups:get", "groups:list", "groups:create", "groups:update", "groups:remove", "groups.impact:get",
        "integrations:get", "integrations:list", "integrations:create", "integrations:update",
        "integrations:remove", "integrations:test",
        "locations:get",
        "products:list", "products:get",
        "service_agreements:list", "service_agreements.usage_reports:get",
        "service_agreements.usage_reports:create", "service_agreements.notifications:list",
        "sims:list", "sims:get", "sims:import", "sims:update", "sims:remove", "sims.status:get",
        "sims.usage:get",
        "teams.users:list", "teams.users:invite", "teams.users:update", "teams.users:remove",
        # Catalogue §3: the OAuth client scope that lets a product's client create customers (§16 row 2).
        "customers:create",
    }
)  # fmt: skip

# devicecloud extensions: a self-hosted cloud has no console, so products are created and edited by API.
PRODUCT_SETTINGS = "products:update"
EXTENSION_ACTIONS: frozenset[str] = frozenset({PRODUCT_SETTINGS})
ACTIONS: frozenset[str] = SCOPES | EXTENSION_ACTIONS

TEAM_MANAGEMENT: frozenset[str] = frozenset(
    {"teams.users:invite", "teams.users:update", "teams.users:remove"}
)


class Role(StrEnum):
    """
    A team member's role in one product (Particle's team access controls).
    """

    OWNER = "Owner"
    ADMINISTRATOR = "Administrator"
    DEVELOPER = "Developer"
    SUPPORT = "Support"
    VIEW_ONLY = "View-only"

    @property
    def id(self) -> str:
        return self.value.lower().replace("-", "_")

    @classmethod
    def parse(cls, value: object) -> Role | None:
        """
        A role from its name or id, case-insensitively (``"view-only"``, ``"view_only"``); None if unknown.
        """
        if not isinstance(value, str):
            return None
        wanted = value.strip().lower().replace("_", "-")
        return next((role for role in cls if role.value.lower() == wanted), None)


def _reads() -> frozenset[str]:
    # "Read-only access to all information": every get/list, except what talks to a device or hands out
    # firmware binaries.
    unsafe = {"devices.variable:get", "firmware.binary:get"}
    return frozenset(s for s in SCOPES if s.endswith((":get", ":list")) and s not in unsafe)


_VIEW_ONLY = _reads()
_SUPPORT = _VIEW_ONLY | {
    "devices.variable:get",
    "devices.function:call",
    "devices:ping",
    "devices:update",
    "devices.diagnostics:update",
}
_ADMINISTRATOR = ACTIONS
_DEVELOPER = ACTIONS - TEAM_MANAGEMENT - EXTENSION_ACTIONS

#: What each role may do in its product. The only place roles are interpreted.
ROLE_ACTIONS: Mapping[Role, frozenset[str]] = {
    Role.OWNER: _ADMINISTRATOR,
    Role.ADMINISTRATOR: _ADMINISTRATOR,
    Role.DEVELOPER: _DEVELOPER,
    Role.SUPPORT: _SUPPORT,
    Role.VIEW_ONLY: _VIEW_ONLY,
}

#: What a customer may do with its own devices (those it claimed with its claim codes), and nothing else.
CUSTOMER_ACTIONS: frozenset[str] = frozenset(
    {
        "devices:list",
        "devices:get",
        "devices.variable:get",
        "devices.function:call",
        "devices:ping",
        "events:get",
    }
)

ProductPrincipalKind = Literal["api_user", "product_client", "customer"]
ResourceKind = Literal["device", "webhook", "client", "product", "team", "group", "event", "sim", "firmware"]


@dataclass(frozen=True, slots=True)
class ProductPrincipal:
    """
    A caller that is not a person: an API user, a product client's token, a customer. It acts for one
    product, with the scopes its token carries (none means nothing, unlike a person's own token). A customer
    (``customer_id``) carries no scopes: `CUSTOMER_ACTIONS` on its own devices is all it may do.
    """

    kind: ProductPrincipalKind
    token: AccessToken
    product_id: int
    scopes: frozenset[str] = field(default_factory=frozenset)
    customer_id: int | None = None

    def allows(self, scope: str) -> bool:
        return scopes_allow(self.scopes, scope, empty_means_all=False)


AnyPrincipal = Principal | ProductPrincipal


@dataclass(frozen=True, slots=True)
class Resource:
    """
    What an access check is about: its kind and its owner, a user (``user_id``) or a product (``product_id``);
    a product device a customer claimed also names that customer (``customer_id``).
    """

    kind: ResourceKind
    user_id: int | None = None
    product_id: int | None = None
    customer_id: int | None = None


def scopes_allow(scopes: Iterable[str], action: str, *, empty_means_all: bool) -> bool:
    """
    Whether a token's scopes cover ``action`` (``*:*`` and ``group:*`` are wildcards).
    """
    granted = frozenset(scopes)
    if not granted:
        return empty_means_all
    return "*:*" in granted or action in granted or f"{action.split(':', 1)[0]}:*" in granted


def can(principal: AnyPrincipal | User, action: str, resource: Resource, role: Role | None = None) -> bool:
    """
    The one decision: may ``principal`` do ``action`` to ``resource``? ``role`` is a person's role in the
    resource's product, read by the caller together with the product (never on the token hot path).

    A bare `User` stands for a person on a user path, whose token's scopes the door (`require`) has checked.
    """
    if action not in ACTIONS:
        return False
    if isinstance(principal, User | Principal):
        user = principal if isinstance(principal, User) else principal.user
        if isinstance(principal, Principal) and not principal.allows(action):
            return False
        if resource.product_id is None:
            return resource.user_id is not None and resource.user_id == user.id
        return role is not None and action in ROLE_ACTIONS[role]
    if resource.product_id is None or resource.product_id != principal.product_id:
        return False
    if principal.kind == "customer":  # its own devices only, whatever the product's other devices are
        return (
            action in CUSTOMER_ACTIONS
            and resource.kind == "device"
            and resource.customer_id is not None
            and resource.customer_id == principal.customer_id
        )
    if action in EXTENSION_ACTIONS:  # no scope grants them, not even a wildcard: people (roles) only
        return False
    return principal.allows(action)
