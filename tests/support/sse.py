"""
A runtime's HTTP app behind a real uvicorn server on a free port, and an event-stream reader.

Streams are read as clients read them, so keep-alives, disconnects and flow control are the real thing;
httpx's ASGI transport would buffer a stream until it ends, which an event stream never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from devicecloud.api.sse import StreamRegistry
from devicecloud.runtime import Runtime
from tests.support.api import Account
from tests.support.devices import wait_until


@dataclass
class Served:
    url: str
    app: FastAPI
    http: httpx.AsyncClient

    @property
    def streams(self) -> StreamRegistry:
        registry: StreamRegistry = self.app.state.event_streams
        return registry


@asynccontextmanager
async def serve_app(runtime: Runtime, **config: Any) -> AsyncIterator[Served]:
    """
    The runtime's app behind uvicorn on a free port, and an httpx client on it; ``config`` adds
    ``uvicorn.Config`` options (e.g. ``http=`` the guarded protocol of ``devicecloud.httpserver``).
    """
    app = runtime.asgi_app(manage_lifecycle=False)
    sock = socket.socket()
    # Accepted sockets inherit this small send buffer: a client that stops reading blocks the server soon.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = {"lifespan": "off", "log_level": "critical", "access_log": False, **config}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(flag(lambda: server.started))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield Served(url=f"http://127.0.0.1:{port}", app=app, http=http)
    finally:
        app.state.event_streams.close_all()
        server.should_exit = True
        await serving
        sock.close()


def flag(check: Any) -> Any:
    async def predicate() -> bool:
        return bool(check())

    return predicate


class Reader:
    """
    Reads an event stream block by block (a block ends with a blank line), keeping every byte received.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self.buffer = b""
        self.raw = b""

    async def block(self, timeout: float = 5.0) -> bytes:
        while b"\n\n" not in self.buffer:
            chunk = await asyncio.wait_for(anext(self._chunks), timeout)
            self.buffer += chunk
            self.raw += chunk
        block, _, self.buffer = self.buffer.partition(b"\n\n")
        return block

    async def event(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]]:
        """
        The next event (keep-alive comments skipped) as (name, data JSON).
        """
        while True:
            block = await self.block(timeout)
            if block.startswith(b":"):
                continue
            event_line, data_line = block.decode().split("\n")
            assert event_line.startswith("event: ")
            assert data_line.startswith("data: ")
            return event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))

    async def names(self, count: int) -> list[str]:
        return [(await self.event())[0] for _ in range(count)]

    async def rest(self, timeout: float = 5.0) -> bytes:
        """
        What the server still sends until it ends the stream. A stream the server cuts instead of ending it
        cleanly (chunked encoding finished) raises here; one that does not end in time raises TimeoutError.
        """

        async def drain() -> bytes:
            rest = self.buffer
            async for chunk in self._chunks:
                rest += chunk
                self.raw += chunk
            self.buffer = b""
            return rest

        return await asyncio.wait_for(drain(), timeout)


@asynccontextmanager
async def stream(
    served: Served, path: str, account: Account, *, query_token: bool = False, **params: str
) -> AsyncIterator[Reader]:
    """
    An open stream (``:ok`` already read, so the subscription exists) on ``path``.
    """
    headers = {} if query_token else account.auth
    if query_token:
        params["access_token"] = account.token
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(
                served.http.stream("GET", path, headers=headers, params=params)
            )
        except httpx.TimeoutException as exc:  # rare under load: say where every task of the loop stood
            raise AssertionError(f"opening {path} timed out; the loop's tasks:\n{task_stacks()}") from exc
        assert 200 == response.status_code, await response.aread()
        reader = Reader(response)
        assert b":ok" == await reader.block()
        yield reader


def task_stacks() -> str:
    """Each task of the running loop and the chain of awaits it waits in (innermost last), one line each."""
    lines = []
    for task in asyncio.all_tasks():
        where = " > ".join(_frame(frame) for frame in _awaiting(task.get_coro()))
        lines.append(f"{task.get_name()}: {where or repr(task)}")
    return "\n".join(sorted(lines))


def _awaiting(awaitable: Any) -> list[Any]:
    frames = []
    while awaitable is not None and len(frames) < 30:
        frame = next(
            (getattr(awaitable, a) for a in ("cr_frame", "gi_frame", "ag_frame") if hasattr(awaitable, a)),
            None,
        )
        if frame is None:
            break
        frames.append(frame)
        awaitable = next(
            (
                getattr(awaitable, a)
                for a in ("cr_await", "gi_yieldfrom", "ag_await")
                if hasattr(awaitable, a)
            ),
            None,
        )
    return frames


def _frame(frame: Any) -> str:
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}"
