"""
The one access function of everything a product owns (decision 0016): find the product by id or slug, read
the caller's standing in it, and let `domain.access.can` decide.

Rules kept here:
- a caller with no standing at all in the product (not in its team, not its API user or client) gets the
  same `NotFound` as for a product that does not exist: products cannot be probed;
- a caller with standing but without the right gets `PermissionDenied` (403).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devicecloud.domain.access import AnyPrincipal, Resource, ResourceKind, Role, can
from devicecloud.domain.accounts import Principal
from devicecloud.errors import NotFound, PermissionDenied

if TYPE_CHECKING:
    from devicecloud.domain.products import Product
    from devicecloud.store.interfaces import UnitOfWork

PRODUCT_ID = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True, slots=True)
class ProductStanding:
    """
    A product and what the caller is to it (its role when a person).
    """

    product: Product
    role: Role | None
    #: The product's group names, when asked for (``groups=True``): read in the same statement.
    groups: tuple[str, ...] = ()


def product_not_found() -> NotFound:
    return NotFound("Product not found", code="Not Found")


def refused(action: str) -> PermissionDenied:
    return PermissionDenied(f"Permission Denied: this token may not use {action}", code="Permission Denied")


async def find_product(tx: UnitOfWork, ref: str) -> Product | None:
    """
    A product by numeric id or by slug (``:productIdOrSlug``).
    """
    if PRODUCT_ID.match(ref):
        return await tx.products.get(int(ref))
    return await tx.products.get_by_slug(ref.lower()) if len(ref) <= 64 else None


async def standing(
    tx: UnitOfWork, principal: AnyPrincipal, ref: str, *, groups: bool = False
) -> ProductStanding:
    """
    The product and the caller's role in it (and its group names if ``groups``); `NotFound` when the caller
    has no standing there (one read).
    """
    user_id = principal.user.id if isinstance(principal, Principal) else None
    key: int | str | None = None
    if PRODUCT_ID.match(ref):
        key = int(ref)
    elif len(ref) <= 64:
        key = ref.lower()
    names: tuple[str, ...] = ()
    if key is None:
        found = None
    elif groups:
        with_groups = await tx.products.with_role_and_groups(key, user_id)
        found = with_groups[:2] if with_groups is not None else None
        names = tuple(with_groups[2]) if with_groups is not None else ()
    else:
        found = await tx.products.with_role(key, user_id)
    if found is None:
        raise product_not_found()
    product, role = found
    if isinstance(principal, Principal):
        if role is None:
            raise product_not_found()
        return ProductStanding(product, role, names)
    if principal.product_id != product.id:
        raise product_not_found()
    return ProductStanding(product, None, names)


async def access_product(
    tx: UnitOfWork,
    principal: AnyPrincipal,
    ref: str,
    action: str,
    kind: ResourceKind = "product",
    *,
    groups: bool = False,
) -> ProductStanding:
    """
    The product named by ``ref`` if ``principal`` may do ``action`` to its ``kind`` of resource (with its
    group names if ``groups``).
    """
    found = await standing(tx, principal, ref, groups=groups)
    if not can(principal, action, Resource(kind, product_id=found.product.id), found.role):
        raise refused(action)
    return found
