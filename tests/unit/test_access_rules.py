"""
The access decision as data (decision 0016): the role table, the scope catalogue, and `can` on each kind
of principal and owner.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devicecloud.domain.access import (
    ACTIONS,
    CUSTOMER_ACTIONS,
    ROLE_ACTIONS,
    SCOPES,
    TEAM_MANAGEMENT,
    ProductPrincipal,
    Resource,
    Role,
    can,
)
from devicecloud.domain.accounts import AccessToken, Principal, User

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _token(**extra: object) -> AccessToken:
    values: dict[str, object] = {
        "id": 1,
        "token_hash": "h",
        "hint": "h",
        "user_id": None,
        "client_id": "c",
        "scopes": (),
        "created_at": NOW,
        "expires_at": None,
    }
    values.update(extra)
    return AccessToken(**values)  # type: ignore[arg-type]


def _person(user_id: int, scopes: frozenset[str] = frozenset()) -> Principal:
    user = User(user_id, f"u{user_id}@example.com", "x", {}, False, None, NOW)
    return Principal(user=user, token=_token(user_id=user_id), scopes=scopes)


def _api_user(product_id: int, *scopes: str) -> ProductPrincipal:
    return ProductPrincipal(
        "api_user", _token(product_id=product_id, api_user_id=9), product_id, frozenset(scopes)
    )


PRODUCT = Resource("product", product_id=7)


def test_the_role_table_is_ordered_by_power() -> None:
    view, support, developer = (
        ROLE_ACTIONS[Role.VIEW_ONLY],
        ROLE_ACTIONS[Role.SUPPORT],
        ROLE_ACTIONS[Role.DEVELOPER],
    )
    assert (
        view < support < developer < ROLE_ACTIONS[Role.ADMINISTRATOR] == ROLE_ACTIONS[Role.OWNER] == ACTIONS
    )
    assert TEAM_MANAGEMENT.isdisjoint(developer)
    assert all(action.endswith((":get", ":list")) for action in view)
    assert {"devices.function:call", "devices:ping"} <= support - view
    assert "groups:create" in developer - support


def test_every_scope_a_role_grants_is_in_the_catalogue() -> None:
    for actions in ROLE_ACTIONS.values():
        assert actions <= ACTIONS
    assert "groups.impact:get" in SCOPES
    assert "teams.users:invite" in SCOPES


@pytest.mark.parametrize("role", list(Role))
def test_a_member_may_do_exactly_what_its_role_lists(role: Role) -> None:
    member = _person(1)
    for action in ACTIONS:
        assert can(member, action, PRODUCT, role) == (action in ROLE_ACTIONS[role])


def test_a_person_without_a_role_may_do_nothing_to_a_product() -> None:
    assert not any(can(_person(1), action, PRODUCT) for action in ACTIONS)


def test_a_scoped_person_token_narrows_its_role() -> None:
    narrow = _person(1, frozenset({"groups:list"}))
    assert can(narrow, "groups:list", PRODUCT, Role.OWNER)
    assert not can(narrow, "groups:create", PRODUCT, Role.OWNER)


def test_user_owned_resources_belong_to_their_user_only() -> None:
    device = Resource("device", user_id=1)
    assert can(_person(1), "devices:get", device)
    assert not can(_person(2), "devices:get", device)
    assert not can(_person(2), "devices:get", Resource("device"))  # unowned
    assert can(_person(1).user, "devices:get", device)  # a bare User: the door already checked the scope
    assert not can(_api_user(7, "*:*"), "devices:get", device)


def test_an_api_user_has_its_scopes_in_its_own_product_only() -> None:
    bot = _api_user(7, "groups:list", "devices:*")
    assert can(bot, "groups:list", PRODUCT)
    assert can(bot, "devices:import", PRODUCT)
    assert not can(bot, "groups:create", PRODUCT)
    assert not can(bot, "groups:list", Resource("product", product_id=8))
    assert not can(_api_user(7), "groups:list", PRODUCT)  # no scopes: nothing


def test_wildcards_never_reach_the_devicecloud_actions() -> None:
    client = ProductPrincipal("product_client", _token(product_id=7), 7, frozenset({"*:*"}))
    assert can(client, "teams.users:invite", PRODUCT)
    assert not can(client, "products:update", PRODUCT)
    assert can(_person(1, frozenset({"*:*"})), "products:update", PRODUCT, Role.ADMINISTRATOR)


def test_unknown_actions_are_refused_to_everyone() -> None:
    assert not can(_person(1), "products:delete-everything", PRODUCT, Role.OWNER)
    assert not can(_api_user(7, "*:*"), "nope:nope", PRODUCT)


def _customer(product_id: int, customer_id: int) -> ProductPrincipal:
    token = _token(product_id=product_id, customer_id=customer_id)
    return ProductPrincipal("customer", token, product_id, customer_id=customer_id)


def test_a_customer_reaches_only_the_devices_it_claimed() -> None:
    jane = _customer(7, 1)
    hers = Resource("device", product_id=7, customer_id=1)
    for action in sorted(ACTIONS):
        assert can(jane, action, hers) is (action in CUSTOMER_ACTIONS), action
    for other in (
        Resource("device", product_id=7),  # the product's, nobody's
        Resource("device", product_id=7, customer_id=2),  # another customer's
        Resource("device", product_id=8, customer_id=1),  # another product's
        Resource("device", user_id=1),  # a user's (user ids are not customer ids)
        PRODUCT,
        Resource("group", product_id=7),
    ):
        assert not any(can(jane, action, other) for action in ACTIONS), other


def test_customers_create_is_a_client_scope_developers_and_up_hold() -> None:
    assert "customers:create" in SCOPES
    assert can(_api_user(7, "customers:create"), "customers:create", PRODUCT)
    assert not can(_api_user(7, "customers:list"), "customers:create", PRODUCT)
    holders = {role for role in Role if "customers:create" in ROLE_ACTIONS[role]}
    assert holders == {Role.OWNER, Role.ADMINISTRATOR, Role.DEVELOPER}


def test_roles_parse_from_names_and_ids() -> None:
    assert Role.parse("view_only") is Role.VIEW_ONLY
    assert Role.parse("View-only") is Role.VIEW_ONLY
    assert Role.parse("administrator") is Role.ADMINISTRATOR
    assert Role.parse("root") is None
    assert Role.parse(3) is None
    assert Role.VIEW_ONLY.id == "view_only"
