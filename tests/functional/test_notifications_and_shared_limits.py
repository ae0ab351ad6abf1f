"""
The real backends behind two settings: password-reset mail over SMTP, and rate-limit counters in Redis.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from tests.conftest import FAST_HASH
from tests.support import unavailable
from tests.support.api import login, make_account
from tests.support.server import free_port

from devicecloud.runtime import build_runtime
from devicecloud.settings import Settings


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


async def test_password_reset_mail_over_smtp(tmp_path: Path, smtp_server: tuple[int, Mailbox]) -> None:
    """With SMTP configured, the reset token arrives by mail and completes the reset."""
    port, mailbox = smtp_server
    settings = Settings(
        data_dir=tmp_path,
        rate_limits_enabled=False,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=False,
        smtp_from="cloud@example.com",
        **FAST_HASH,
    )
    runtime = build_runtime(settings)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=runtime.asgi_app(manage_lifecycle=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            account = await make_account(client, "ada@example.com")
            response = await client.post("/v1/user/password-reset", json={"username": account.email})
            assert 200 == response.status_code
            await runtime.notifier.drain()
            mail = message_from_bytes(mailbox.messages[0])
            assert ("ada@example.com", "cloud@example.com") == (mail["To"], mail["From"])
            body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
            token = body.split("Reset token: ", 1)[1].split()[0]
            done = await client.put(
                "/v1/user/password-reset", json={"token": token, "password": "mailed reset"}
            )
            assert 200 == done.status_code
            assert 200 == (await login(client, account.email, "mailed reset")).status_code
    finally:
        await runtime.stop()


async def test_unreachable_smtp_does_not_change_the_reply(tmp_path: Path) -> None:
    """A dead mail server is logged, not shown: the reply is the same as for an unknown email."""
    settings = Settings(
        data_dir=tmp_path,
        rate_limits_enabled=False,
        smtp_host="127.0.0.1",
        smtp_port=free_port(),
        smtp_starttls=False,
        **FAST_HASH,
    )
    runtime = build_runtime(settings)
    await runtime.start()
    try:
        transport = httpx.ASGITransport(app=runtime.asgi_app(manage_lifecycle=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await make_account(client, "ada@example.com")
            known = await client.post("/v1/user/password-reset", json={"username": "ada@example.com"})
            unknown = await client.post("/v1/user/password-reset", json={"username": "ghost@example.com"})
            assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
    finally:
        await runtime.stop()


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


async def test_rate_limits_shared_through_redis(tmp_path: Path) -> None:
    """Two servers using the same Redis share one per-IP budget, as nodes of a cluster must."""
    if not redis_available():
        unavailable("no Redis server on 127.0.0.1:6379")
    source = f"2001:db8::{uuid.uuid4().hex[:4]}"  # a fresh address: earlier runs' counters must not count
    values: dict[str, Any] = {
        "rate_limits_enabled": True,
        "rate_limit_all": "4/minute",
        "rate_limit_storage": "redis://127.0.0.1:6379/0",
        **FAST_HASH,
    }
    runtimes = [build_runtime(Settings(data_dir=tmp_path / str(n), **values)) for n in range(2)]
    statuses: list[int] = []
    for runtime in runtimes:
        await runtime.start()
    try:
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=rt.asgi_app(manage_lifecycle=False), client=(source, 1)),
                base_url="http://testserver",
            )
            for rt in runtimes
        ]
        statuses = [(await clients[n % 2].get("/healthz")).status_code for n in range(6)]
        await asyncio.gather(*(c.aclose() for c in clients))
    finally:
        for runtime in runtimes:
            await runtime.stop()
    assert [200, 200, 200, 200, 429, 429] == statuses
