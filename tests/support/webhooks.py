"""
Webhook test helpers that go through the API's doors: create a hook, publish, wait for what a target saw,
watch the owner's ``hook-*`` events, wait for the outbox to drain, or for the dispatcher to have looked at it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pytest_httpserver import HTTPServer
from werkzeug import Request

from devicecloud.bus.interfaces import Subscription
from devicecloud.domain.events import CloudEvent, EventFilter
from devicecloud.runtime import Runtime
from tests.support.api import Account
from tests.support.devices import wait_until
from tests.support.sse import flag


async def create_hook(client: httpx.AsyncClient, account: Account, **fields: Any) -> str:
    body = {"integration_type": "Webhook", **fields}
    response = await client.post("/v1/integrations", json=body, headers=account.auth)
    assert 201 == response.status_code, response.text
    hook_id: str = response.json()["id"]
    return hook_id


async def publish(client: httpx.AsyncClient, account: Account, name: str, data: str | None = None) -> None:
    fields: dict[str, Any] = {"name": name, "private": True}
    if data is not None:
        fields["data"] = data
    response = await client.post("/v1/devices/events", json=fields, headers=account.auth)
    assert 200 == response.status_code, response.text


async def requests_seen(httpserver: HTTPServer, count: int, timeout: float = 10) -> list[Request]:
    await wait_until(flag(lambda: len(httpserver.log) >= count), timeout=timeout)
    return [request for request, _response in httpserver.log]


async def hook_events(runtime: Runtime, account: Account) -> Subscription:
    user = await runtime.accounts.get_by_username(account.email)
    return runtime.bus.subscribe(EventFilter(prefix="hook-", owner_id=user.id))


async def next_events(subscription: Subscription, count: int, timeout: float = 10) -> list[CloudEvent]:
    return [await asyncio.wait_for(anext(aiter(subscription)), timeout) for _ in range(count)]


async def outbox_empty(runtime: Runtime) -> None:
    async def empty() -> bool:
        return await runtime.webhooks.pending() == 0 and await runtime.dispatcher.idle()

    await wait_until(empty, timeout=10)


async def settled_after_poke(runtime: Runtime) -> None:
    """
    Poke the dispatcher, wait for a claim pass that began after the poke (so it saw the clock as it is now),
    then until nothing is held in memory: whatever that pass found due has been sent and booked. A barrier
    for "nothing (else) is sent", not a sleep.
    """
    dispatcher = runtime.dispatcher
    started = dispatcher.statistics()["claim_passes_started"]  # no await since: no pass can begin meanwhile
    dispatcher.poke()
    await wait_until(flag(lambda: dispatcher.statistics()["claim_passes_done"] > started))
    await wait_until(dispatcher.idle)
