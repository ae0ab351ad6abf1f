"""
A product's customers (catalogue §16, issue 11 section 6): create, list with their devices, set a password,
delete; and the claim codes a customer (or a team member) gets for the product's devices.

Rules kept here:
- a customer is created by a team member's token (`customers:create`, a Developer or Administrator), by a
  product client's token, or by the product's client itself: its id and secret (two-legged), or for a
  ``web`` client its id alone with ``response_type=token`` (the implicit flow of a browser app). Each way
  answers the new customer's token. A client of another product sees "Product not found", like any caller
  without standing;
- a customer's username is an email (or an id of the product's app), unique in its product, lower-cased; a
  password is required unless ``no_password`` (a shadow customer: tokens only through the client);
- deleting a customer revokes its tokens and claim codes (cascades of the store) and leaves its devices in
  the product, owned by nobody;
- customers reach only the devices they claimed (`domain.access.can`); the product's other routes refuse
  them (403: they have standing in the product, not the right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from devicecloud.domain.access import AnyPrincipal, ProductPrincipal, scopes_allow
from devicecloud.domain.accounts import Customer, IssuedToken, OAuthClient, Principal
from devicecloud.errors import InvalidInput, NotFound
from devicecloud.services.accounts import check_username
from devicecloud.services.product_access import (
    access_product,
    find_product,
    product_not_found,
    refused,
    standing,
)

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.domain.devices import Device
    from devicecloud.services.accounts import AccountService
    from devicecloud.services.devices import DeviceService
    from devicecloud.services.tokens import TokenService
    from devicecloud.store.interfaces import Store

CREATE = "customers:create"
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class NewCustomer:
    """
    What ``POST /v1/products/:p/customers`` carries besides its credentials.
    """

    email: Any
    password: Any = None
    no_password: bool = False


@dataclass(frozen=True, slots=True)
class CreatedCustomer:
    """
    The new customer's token, and for the implicit flow the client's redirect URI with the token in its hash.
    """

    token: IssuedToken
    redirect: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerPage:
    """
    One page of a product's customers, each with the ids of its devices, and those devices.
    """

    customers: list[tuple[Customer, list[str]]]
    devices: list[Device]
    total_pages: int


def _customer_not_found() -> NotFound:
    return NotFound("Customer not found", code="Not Found")


def _page_number(value: Any, name: str, default: int, maximum: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(str(value))
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a positive whole number") from exc
    if number < 1:
        raise InvalidInput(f"{name} must be a positive whole number")
    return min(number, maximum) if maximum is not None else number


class CustomerService:
    """
    The customers of products.
    """

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        accounts: AccountService,
        tokens: TokenService,
        devices: DeviceService,
    ) -> None:
        self._store = store
        self._clock = clock
        self._accounts = accounts
        self._tokens = tokens
        self._devices = devices

    # ------------------------------------------------------------------ create

    async def create_by_principal(
        self, principal: AnyPrincipal, ref: str, new: NewCustomer
    ) -> CreatedCustomer:
        """
        A customer made with a bearer token: a team member's, or a product client's token.
        """
        async with self._store.transaction(readonly=True) as tx:
            found = await access_product(tx, principal, ref, CREATE, "product")
        token = await self._create(found.product.id, new, principal.token.client_id)
        return CreatedCustomer(token)

    async def create_by_client(
        self, client_id: str | None, client_secret: str | None, ref: str, new: NewCustomer, *, implicit: bool
    ) -> CreatedCustomer:
        """
        A customer made by the product's own client: two-legged (id and secret), or the implicit flow (a
        ``web`` client's id alone), which also answers the redirect URI carrying the token.
        """
        if implicit:
            client = await self._tokens.public_client(client_id)
        else:
            client = await self._tokens.authenticate_client(client_id, client_secret)
        async with self._store.transaction(readonly=True) as tx:
            product = await find_product(tx, ref)
        if product is None or client.product_id is None or client.product_id != product.id:
            raise product_not_found()
        if not scopes_allow(client.scopes or ("*:*",), CREATE, empty_means_all=True):
            raise refused(CREATE)
        if implicit:
            redirect = self._implicit_redirect(client)
            if new.no_password:
                raise InvalidInput("The implicit flow needs a password: a browser cannot keep a secret")
        token = await self._create(product.id, new, client.id, refreshable=not implicit)
        if not implicit:
            return CreatedCustomer(token)
        fragment = {"access_token": token.access_token, "token_type": "bearer"}
        if token.expires_in is not None:
            fragment["expires_in"] = str(token.expires_in)
        return CreatedCustomer(token, f"{redirect}#{urlencode(fragment)}")

    @staticmethod
    def _implicit_redirect(client: OAuthClient) -> str:
        if client.type != "web" or not client.redirect_uri:
            raise InvalidInput(
                "The implicit flow is for web clients with a redirect_uri", code="unauthorized_client"
            )
        return client.redirect_uri

    async def _create(
        self, product_id: int, new: NewCustomer, client_id: str, *, refreshable: bool = True
    ) -> IssuedToken:
        username = check_username(new.email)
        if new.no_password:
            password_hash = None
        elif new.password is None or new.password == "":
            raise InvalidInput("password is required unless no_password is true", code="invalid_password")
        else:
            password_hash = await self._accounts.hash_password(new.password)
        async with self._store.transaction() as tx:
            customer = await tx.customers.add(product_id, username, password_hash, self._clock.now())
        lifetime = self._tokens.default_lifetime
        return await self._tokens.issue_for_customer(customer, client_id, lifetime, refreshable=refreshable)

    # ------------------------------------------------------------------ read, change, delete

    async def list_customers(
        self, principal: AnyPrincipal, ref: str, page: Any, per_page: Any
    ) -> CustomerPage:
        number = _page_number(page, "page", 1)
        size = _page_number(per_page, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
        async with self._store.transaction(readonly=True) as tx:
            found = await access_product(tx, principal, ref, "customers:list")
            listed, total = await tx.customers.page(found.product.id, (number - 1) * size, size)
            owned = await tx.customers.device_ids([c.id for c in listed])
            devices = [d for c in listed for d in await tx.customers.devices(c.id)]
        devices.sort(key=lambda d: d.id)
        return CustomerPage(
            customers=[(c, owned.get(c.id, [])) for c in listed],
            devices=[self._devices.present(d) for d in devices],
            total_pages=max(1, -(-total // size)),
        )

    async def set_password(self, principal: AnyPrincipal, ref: str, email: str, password: Any) -> None:
        password_hash = await self._accounts.hash_password(password)
        async with self._store.transaction() as tx:
            found = await access_product(tx, principal, ref, "customers:update")
            customer = await tx.customers.get_by_username(found.product.id, email.strip().lower())
            if customer is None:
                raise _customer_not_found()
            await tx.customers.set_password(customer.id, password_hash)

    async def delete(self, principal: AnyPrincipal, ref: str, email: str) -> None:
        async with self._store.transaction() as tx:
            found = await access_product(tx, principal, ref, "customers:remove")
            customer = await tx.customers.get_by_username(found.product.id, email.strip().lower())
            if customer is None:
                raise _customer_not_found()
            owned = (await tx.customers.device_ids([customer.id]))[customer.id]
            await tx.customers.delete(customer.id)
        # Its devices are nobody's now: their events stop carrying the customer (decision 0032).
        self._devices.changed_hands(owned)

    # ------------------------------------------------------------------ claim codes

    async def create_claim_code(self, principal: AnyPrincipal, ref: str) -> tuple[str, list[str]]:
        """
        ``POST /v1/products/:p/device_claims``: a customer's code (a device of the product presenting it
        becomes the customer's), or a team member's own (as ``POST /v1/device_claims``). API users and
        product clients own no devices: refused.
        """
        async with self._store.transaction(readonly=True) as tx:
            if isinstance(principal, Principal):  # any role: the code is the member's own
                await access_product(tx, principal, ref, "products:get")
            else:
                await standing(tx, principal, ref)
        if isinstance(principal, Principal):
            return await self._devices.create_claim_code(principal.user)
        if not isinstance(principal, ProductPrincipal) or principal.kind != "customer":
            raise refused("device_claims")
        return await self._devices.create_customer_claim_code(principal)
