"""
Where one authenticated ``GET /v1/user`` spends its time, layer by layer, measured in-process.

Each line times one layer in a tight loop on the same event loop (uvloop, as ``devicecloud serve`` uses) and
the same database file, so the differences between lines are the cost each layer adds:

    sqlite3 (sync)            the SQL itself: the indexed token lookup joined to its user
    aiosqlite                 + the hop to aiosqlite's worker thread and back, per statement
    transaction (empty)       the store's read transaction: pool checkout, BEGIN/COMMIT, reset-on-return
    TokenService.verify       the whole token check the API runs (hash, one statement, rows)
    ASGI GET /healthz         FastAPI/Starlette plus the project's middleware, no database
    ASGI GET /v1/user         the full route in-process: middleware, dependency, verify, render, JSON
    HTTP (from auth_bench)    ``auth_bench.py`` adds uvicorn's HTTP parsing and the socket on top

It also counts, per verification, the SQL statements sent (through SQLAlchemy, inline on the token lookup's
own ``sqlite3`` connection, or on its aiosqlite fallback; decision 0010) and the round trips to aiosqlite's
thread, and prints SQLite's plan for the lookup: one indexed search, no scan, no password hash.

Run: ``taskset -c 0 python bench/auth_breakdown.py`` (one core, like the server in ``auth_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event, text
from sqlalchemy.dialects import sqlite

from devicecloud.api.routes.users import render_user
from devicecloud.runtime import Runtime, build_runtime
from devicecloud.services.secrets import hash_secret
from devicecloud.services.tokens import GrantRequest
from devicecloud.settings import load_settings
from devicecloud.store.sql.accounts import FIND_TOKEN_WITH_USER

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a temporary database


async def _time_loop(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    """
    Microseconds per call of ``fn`` over ``n`` sequential calls (after a short warm-up).
    """
    for _ in range(min(200, n)):
        await fn()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


def _asgi_call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[int]]:
    scope_template: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope_template), receive, send)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
        return status

    return call


async def _measure(runtime: Runtime, n: int) -> dict[str, Any]:
    await runtime.start()
    try:
        return await _measure_started(runtime, n)
    finally:
        # Also on failure: the token lookup's aiosqlite thread would otherwise keep the process from exiting.
        await runtime.stop()


async def _measure_started(runtime: Runtime, n: int) -> dict[str, Any]:
    await runtime.accounts.create_user(EMAIL, PASSWORD)
    client = await runtime.tokens.authenticate_client("particle", "particle")
    issued = await runtime.tokens.grant(
        client, GrantRequest(grant_type="password", username=EMAIL, password=PASSWORD)
    )
    token = issued.access_token
    token_hash = hash_secret(token)
    db_path = str(runtime.settings.data_dir / "devicecloud.db")
    results: dict[str, Any] = {}

    # ---- what one token check sends: statements (the lookup's SQL is reused below) and thread round trips
    engine = runtime.store.engine
    statements: list[str] = []
    raw_statements: list[str] = []
    hops: list[str] = []

    def count_statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", count_statement)
    original_execute = aiosqlite.Connection._execute

    async def counting_execute(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__qualname__", repr(fn)))
        # Statements sent on a bare aiosqlite connection (the token lookup's own, store/sql/token_lookup.py)
        # bypass SQLAlchemy's events: count them here.
        if args and isinstance(args[0], str):
            raw_statements.append(" ".join(args[0].split()))
        return await original_execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    aiosqlite.Connection._execute = counting_execute  # type: ignore[method-assign]
    inline: sqlite3.Connection | None = None
    inline_statements: list[str] = []
    try:
        await runtime.tokens.verify(token)  # opens the lookup's connections
        # The inline reads run on a plain sqlite3 connection that neither SQLAlchemy nor aiosqlite sees: trace
        # it. It is private to the store, hence the lookup by attribute names.
        inline = getattr(getattr(runtime.store, "_token_lookup", None), "_inline", None)
        if inline is not None:
            inline.set_trace_callback(lambda sql: inline_statements.append(" ".join(sql.split())))
        statements.clear()
        raw_statements.clear()
        hops.clear()
        await runtime.tokens.verify(token)
        # SQLAlchemy's own aiosqlite connections also pass through _execute: keep only what it did not see.
        seen = set(statements)
        statements.extend(t for t in raw_statements if t not in seen)
        statements.extend(inline_statements)
        results["statements"] = [text[:60] for text in statements]
        results["statements_per_verify"] = len(statements)
        results["lookups_per_verify"] = sum(not t.upper().startswith(TRANSACTION_CONTROL) for t in statements)
        results["inline_statements_per_verify"] = len(inline_statements)
        results["aiosqlite_hops"] = list(hops)
        results["aiosqlite_hops_per_verify"] = len(hops)
    finally:
        aiosqlite.Connection._execute = original_execute  # type: ignore[method-assign]
        event.remove(engine.sync_engine, "before_cursor_execute", count_statement)
        if inline is not None:
            inline.set_trace_callback(None)

    lookups = [text for text in statements if not text.upper().startswith(TRANSACTION_CONTROL)]
    if not lookups:
        raise RuntimeError(f"no lookup seen in a token check: {statements}")
    # The statement as prepared (a trace shows it with its parameters filled in).
    sql = str(FIND_TOKEN_WITH_USER.compile(dialect=sqlite.dialect()))

    # ---- the SQL alone, synchronous sqlite3 on a persistent connection
    raw = sqlite3.connect(db_path)
    plan = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, (token_hash,))]
    start = time.perf_counter()
    for _ in range(n):
        raw.execute(sql, (token_hash,)).fetchone()
    results["sqlite3_sync_us"] = (time.perf_counter() - start) / n * 1e6
    raw.close()

    # ---- plus aiosqlite's thread hops: cursor, execute, fetchone and close are one round trip each
    async with aiosqlite.connect(db_path) as adb:

        async def aio_query() -> None:
            async with adb.execute(sql, (token_hash,)) as cursor:
                await cursor.fetchone()

        results["aiosqlite_us"] = await _time_loop(aio_query, n)

    # ---- the store's transaction with no statement inside: pool checkout, BEGIN/COMMIT, reset on return

    async def empty_tx() -> None:
        async with runtime.store.transaction(readonly=True):
            pass

    results["empty_transaction_us"] = await _time_loop(empty_tx, n)

    async def core_text_query() -> None:
        async with engine.connect() as conn:
            (await conn.execute(text(sql.replace("?", ":h")), {"h": token_hash})).first()

    results["sqlalchemy_text_query_us"] = await _time_loop(core_text_query, n)

    async def verify() -> None:
        await runtime.tokens.verify(token)

    results["verify_us"] = await _time_loop(verify, n)

    # ---- rendering the body
    principal = await runtime.tokens.verify(token)
    start = time.perf_counter()
    for _ in range(n):
        json.dumps(render_user(principal.user)).encode()
    results["render_json_us"] = (time.perf_counter() - start) / n * 1e6

    # ---- the ASGI app in-process, without uvicorn or a socket
    app = runtime.asgi_app(manage_lifecycle=False)
    results["asgi_healthz_us"] = await _time_loop(_asgi_call(app, "/healthz", []), n)
    auth = [(b"authorization", f"Bearer {token}".encode())]
    results["asgi_user_us"] = await _time_loop(_asgi_call(app, "/v1/user", auth), n)
    results["query_plan"] = plan
    return results


def run(n: int) -> dict[str, Any]:
    """
    Measure every layer with ``n`` iterations each, in a fresh temporary data dir.
    """
    from devicecloud.cli.common import new_event_loop

    with tempfile.TemporaryDirectory(prefix="devicecloud-breakdown-") as tmp:
        settings = load_settings(
            data_dir=Path(tmp),
            rate_limits_enabled=False,
            password_time_cost=1,  # only the setup login hashes; keep it quick
            password_memory_cost=1024,
            password_parallelism=1,
        )
        runtime = build_runtime(settings)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(_measure(runtime, n))


def render(results: dict[str, Any]) -> str:
    rows = [
        ("sqlite3, sync (the SQL itself)", results["sqlite3_sync_us"], None),
        ("aiosqlite execute+fetchone", results["aiosqlite_us"], results["sqlite3_sync_us"]),
        ("store transaction, no statement", results["empty_transaction_us"], None),
        ("engine.connect() + text() query", results["sqlalchemy_text_query_us"], None),
        ("TokenService.verify (what the API runs)", results["verify_us"], None),
        ("render_user + json.dumps", results["render_json_us"], None),
        ("ASGI GET /healthz (framework floor)", results["asgi_healthz_us"], None),
        ("ASGI GET /v1/user (whole route)", results["asgi_user_us"], results["asgi_healthz_us"]),
    ]
    lines = [f"{'layer':<44} {'µs/call':>9} {'calls/s':>9}  note"]
    for name, us, base in rows:
        note = f"+{us - base:.0f} µs over the line it builds on" if base is not None else ""
        lines.append(f"{name:<44} {us:9.1f} {1e6 / us:9.0f}  {note}")
    lines.append("")
    lines.append(
        f"per verification: {results['lookups_per_verify']} lookup, "
        f"{results['statements_per_verify']} SQL statement(s) in all"
        f" ({results['inline_statements_per_verify']} inline on the loop's thread), "
        f"{results['aiosqlite_hops_per_verify']} round trips to aiosqlite's thread"
    )
    lines.append("  statements: " + " ; ".join(results["statements"]))
    lines.append("  thread round trips: " + ", ".join(results["aiosqlite_hops"]))
    lines.append("SQLite plan of the lookup: " + " | ".join(results["query_plan"]))
    return "\n".join(lines)


def check(results: dict[str, Any]) -> list[str]:
    """
    The structural promises of issue "token verification": one statement, indexed, no scan.
    """
    problems = []
    if results["lookups_per_verify"] != 1:
        problems.append(
            f"verify ran {results['lookups_per_verify']} queries, expected one lookup:"
            f" {results['statements']}"
        )
    if any(step.startswith("SCAN") for step in results["query_plan"]):
        problems.append(f"token lookup scans a table: {results['query_plan']}")
    if not any("token_hash" in step for step in results["query_plan"]):
        problems.append(f"token lookup does not use the token_hash index: {results['query_plan']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=5000, help="iterations per layer (default 5000)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    results = run(args.n)
    print(json.dumps(results, indent=2) if args.json else render(results))
    problems = check(results)
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
