"""
Poison never spreads in webhook delivery: an event, an outbox row or a response that cannot be handled ends
for that one delivery (a ``hook-error`` or a logged drop), while every other delivery — other accounts'
included — is still sent, and the dispatcher keeps working. Poison is injected below the API's door too (on
the bus, into the outbox table), since the door is not the only way in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import structlog
from pytest_httpserver import HTTPServer
from sqlalchemy import insert
from tests.support.api import Account, make_account
from tests.support.clock import FakeClock
from tests.support.webhooks import (
    create_hook,
    hook_events,
    next_events,
    outbox_empty,
    publish,
    requests_seen,
)

from devicecloud.domain.events import CloudEvent
from devicecloud.runtime import Runtime
from devicecloud.store.tables import webhook_deliveries

DEEP = "[" * 1000  # valid text within the API's 1,024 characters; json.loads gives up on it (RecursionError)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_timeout": 2.0}


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "ada@example.com")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await make_account(client, "bob@example.com")


async def user_id(runtime: Runtime, account: Account) -> int:
    return (await runtime.accounts.get_by_username(account.email)).id


def sent_data(httpserver: HTTPServer) -> list[str]:
    return sorted(parse_qs(request.get_data(as_text=True))["data"][0] for request, _ in httpserver.log)


async def test_deeply_nested_event_data_from_the_api_is_just_text(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, bob: Account, httpserver: HTTPServer
) -> None:
    """
    Data that looks like JSON nested too deep to parse is delivered as text, and the batch it came in with
    (another account's events included) is delivered too.
    """
    httpserver.expect_request("/in").respond_with_data("ok")
    await create_hook(client, ada, event="t", url=httpserver.url_for("/in"))
    await create_hook(client, bob, event="t", url=httpserver.url_for("/in"))
    for i in range(5):
        await publish(client, ada, "t", f"ada-{i}")
        await publish(client, bob, "t", f"bob-{i}")
        if i == 2:
            await publish(client, ada, "t", DEEP)
    await requests_seen(httpserver, 11)
    await outbox_empty(runtime)
    expected = [DEEP, *(f"{who}-{i}" for who in ("ada", "bob") for i in range(5))]
    assert sorted(expected) == sent_data(httpserver)


def poison(name: str, data: str, *, owner_id: int) -> CloudEvent:
    return CloudEvent(
        name=name,
        data=data,
        ttl=60,
        published_at=datetime.now(UTC),
        coreid="api",
        public=False,
        owner_id=owner_id,
    )


async def test_an_event_with_lone_surrogates_is_dropped_alone(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, bob: Account, httpserver: HTTPServer
) -> None:
    """
    An event that is not valid text (here put straight on the bus, below the API's and the event service's
    checks) is dropped by the intake with a log line; the events around it, of both accounts, are delivered,
    and delivery goes on afterwards.
    """
    httpserver.expect_request("/in").respond_with_data("ok")
    await create_hook(client, ada, event="t", url=httpserver.url_for("/in"))
    await create_hook(client, bob, event="t", url=httpserver.url_for("/in"))
    ada_id, bob_id = await user_id(runtime, ada), await user_id(runtime, bob)
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            await runtime.events.publish_internal("t", f"ada-{i}", owner_id=ada_id)
            await runtime.events.publish_internal("t", f"bob-{i}", owner_id=bob_id)
            if i == 2:
                await runtime.bus.publish(poison("t/\ud800", "name", owner_id=ada_id))
                await runtime.bus.publish(poison("t", "data \udfff", owner_id=bob_id))
        await requests_seen(httpserver, 10)
        await outbox_empty(runtime)
    assert sorted(f"{who}-{i}" for who in ("ada", "bob") for i in range(5)) == sent_data(httpserver)
    # Counted, and logged (the log capture sees loggers only if no earlier in-process CLI cached them).
    assert 2 == runtime.dispatcher.statistics()["events_dropped"]
    dropped = [entry for entry in logs if entry["event"] == "webhook event dropped"]
    assert len(dropped) in (0, 2), logs
    await publish(client, bob, "t", "after")
    await requests_seen(httpserver, 11)


async def test_unreadable_outbox_rows_are_dropped_and_logged_alone(
    client: httpx.AsyncClient,
    runtime: Runtime,
    clock: FakeClock,
    ada: Account,
    bob: Account,
    httpserver: HTTPServer,
) -> None:
    """
    Rows the dispatcher cannot turn into a delivery (a damaged event, text that is not valid) end with an
    entry in their hook's logs; the rows claimed with them are delivered.
    """
    httpserver.expect_request("/in").respond_with_data("ok")
    ada_hook = await create_hook(client, ada, event="t", url=httpserver.url_for("/in"))
    await create_hook(client, bob, event="t", url=httpserver.url_for("/in"))
    event = {"id": "e", "name": "t", "data": "d", "coreid": "api", "published_at": clock.now().isoformat()}
    poison = [
        {"name": 5},
        {**event, "published_at": "yesterday"},
        {**event, "name": "t/\ud800"},
        {**event, "data": DEEP + "\udc00"},
    ]
    earlier = clock.now() - timedelta(seconds=1)  # first in line: claimed in the same batch as the good rows
    async with runtime.store.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            insert(webhook_deliveries),
            [
                {
                    "hook_id": ada_hook,
                    "owner_id": await user_id(runtime, ada),
                    "host": "localhost",
                    "event": value,
                    "attempt": 0,
                    "next_attempt_at": earlier,
                    "created_at": earlier,
                }
                for value in poison
            ],
        )
    for i in range(3):
        await publish(client, ada, "t", f"ada-{i}")
        await publish(client, bob, "t", f"bob-{i}")
    await requests_seen(httpserver, 6)
    await outbox_empty(runtime)
    assert sorted(f"{who}-{i}" for who in ("ada", "bob") for i in range(3)) == sent_data(httpserver)
    got = (await client.get(f"/v1/integrations/{ada_hook}", headers=ada.auth)).json()["integration"]
    errors = [log["error"] for log in got["logs"] if log["error"]]
    assert 4 == len(errors), got["logs"]
    assert all(error.startswith("the queued event could not be read") for error in errors), errors


async def test_a_response_that_cannot_be_parsed_ends_its_delivery(
    client: httpx.AsyncClient, runtime: Runtime, ada: Account, httpserver: HTTPServer
) -> None:
    """
    A target's reply that breaks the response template's JSON parsing still books the attempt: the rows of
    the outbox drain and the next event is sent.
    """
    httpserver.expect_request("/deep").respond_with_data("[" * 5000, content_type="application/json")
    await create_hook(
        client, ada, event="deep", url=httpserver.url_for("/deep"), responseTemplate="got {{x}}"
    )
    seen = await hook_events(runtime, ada)
    await publish(client, ada, "deep", "1")
    assert [("hook-sent/deep", None), ("hook-response/deep/0", "got ")] == [
        (e.name, e.data) for e in await next_events(seen, 2)
    ]
    await outbox_empty(runtime)
    await publish(client, ada, "deep", "2")
    await requests_seen(httpserver, 2)
    await outbox_empty(runtime)
