"""
Product devices benchmark (issue 11, "Performance"): 100,000 product devices on PostgreSQL behind a real
``devicecloud serve`` pinned to core 0, the load generator (``_loadgen.py``) pinned to core 1.

``import``
    The product's devices are imported through the API, ``--import-size`` (10,000) ids per
    ``POST /v1/products/:p/devices``: all but the last as a JSON ``ids`` list, the last as a multipart
    ``.txt`` file, then the last batch again (every id already the product's). Each request's wall time.
    **Target: 10,000 ids in one request within 2 s.** Then the seeding the API cannot do quickly, or at all
    (what only devices' connections write), straight into the database: each device's last connection
    (90 % within 30 days, the rest never) and its product firmware version (1-5); then ``VACUUM ANALYZE``. The
    devices are put into ``--groups`` (10) groups through the API's batch edit (``PUT …/devices``,
    ``action=groups``, one request per group).

``list``
    ``GET /v1/products/:p/devices`` filtered, sorted and paginated at ``--rate`` (200) requests/s **open
    loop** (latency counted from when a request was due), random pages of random groups, ``perPage=25``:
    ``groups`` + ``sortAttr=firmwareVersion``, ``groups`` + the default last-connection order, and no filter
    in the default order over the whole product. Beside them the same run's **baseline**:
    ``GET /v1/products/:p`` with the same token at the same rate (authentication, the product's access check,
    the framework). **Target: p99 ≤ 50 ms.**

``access``
    ``GET /v1/devices/:id`` by one user: its own device (the user path) and one of the product's devices
    through its Developer role in the product (the product path), closed loop, alternating user, product,
    user, product. **Target: the product path costs ≤ 1.10× the user path's server CPU per request.**

PostgreSQL: ``--postgres-url`` (default ``DEVICECLOUD_BENCH_POSTGRES_URL``, else
``postgresql+asyncpg://postgres@127.0.0.1:5432/bench_products``; ``--smoke`` adds ``_smoke`` to the database
name). The database is created when missing and its ``public`` schema emptied: give the benchmark a database
of its own. Without a reachable server the benchmark prints why and exits 0, except under ``CI=true`` (CI
provides PostgreSQL: its absence there is a failure). The PostgreSQL server itself is not pinned.

Exit status: 1 when anything fails (server start, a non-2xx reply, an import or a page that answers other
than expected); in a full run 3 when a target is missed. ``--smoke``: 400 devices in batches of 100, 4 groups,
1.5 s per run; no targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from _common import (
    BenchError,
    LoadResult,
    Outcome,
    Request,
    Server,
    Table,
    call,
    can_pin,
    format_table,
    get_token,
    report,
    run_load,
    run_main,
    running_server,
)

EMAIL = "products-bench@example.com"
PASSWORD = "products bench password"  # noqa: S105 - a throwaway account of a throwaway server
MEMBER = "products-bench-member@example.com"
STRANGER = "products-bench-stranger@example.com"
DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/bench_products"
IMPORT_TARGET_S = 2.0
LIST_TARGET_MS = 50.0
ACCESS_TARGET = 1.10
IMPORT_TITLE = "Importing device ids into a product, one request each (target: 10,000 ids within 2 s)"
LIST_TITLE = (
    "GET /v1/products/:p/devices, filtered, sorted, random pages of 25, open loop (target: p99 ≤ 50 ms)"
)
ACCESS_TITLE = (
    "GET /v1/devices/:id: a product device through a team role against one's own device "
    "(target: ≤ 1.10× the server CPU)"
)


# ---------------------------------------------------------------------------------------------- PostgreSQL


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _prepare_database(url: str) -> str | None:
    """
    Create the benchmark's database if missing and empty its public schema; why PostgreSQL is unusable,
    or None.
    """
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install devicecloud[postgres])"
    parts = urllib.parse.urlsplit(_dsn(url))
    name = parts.path.lstrip("/")
    if not name or not name.replace("_", "").isalnum():
        return f"give the database a plain name (letters, digits, _), not {name!r}"
    maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    try:
        admin = await asyncpg.connect(maintenance, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {maintenance} is unreachable: {exc}"
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()
    return None


async def _seed_connections(url: str, product_id: int, seed: int) -> dict[str, float]:
    """
    What only devices' connections write, straight into the database (no API sets it): each product device's
    last connection (90 % within 30 days, the rest never) and product firmware version; then VACUUM ANALYZE:
    the updates leave a dead version of every row, which autovacuum would otherwise clean up while the lists
    are measured (a fleet's tables are in a steady state, not just bulk-written).
    """
    import asyncpg

    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        started = time.monotonic()
        await conn.execute(f"SELECT setseed({(seed % 1000) / 1000})")
        await conn.execute(
            """
            UPDATE devices SET
              last_handshake_at = CASE WHEN random() < 0.9
                                  THEN now() - random() * interval '30 days' END,
              last_heard = NULL
            WHERE id IN (SELECT device_id FROM product_devices WHERE product_id = $1)
            """,
            product_id,
        )
        await conn.execute(
            "UPDATE product_devices SET firmware_version = 1 + floor(random() * 5)::int"
            " WHERE product_id = $1",
            product_id,
        )
        written = time.monotonic() - started
        await conn.execute("VACUUM ANALYZE")
        return {"write_s": written, "analyze_s": time.monotonic() - started - written}
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------- HTTP


def api(
    server: Server, method: str, path: str, token: str | None = None, body: Any = None, *, want: int = 200
) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, reply = call(
        server.port, Request(method, path, headers, json.dumps(body) if body is not None else ""), timeout=120
    )
    if status != want:
        raise BenchError(f"{method} {path} answered {status} (wanted {want}): {reply[:300]!r}")
    return json.loads(reply) if reply else None


def device_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.randbytes(12).hex() for _ in range(count)]


def multipart_ids(ids: list[str]) -> tuple[str, str]:
    """
    A multipart body with the ids as a .txt file (one per line) and its content type.
    """
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="devices.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n" + "\n".join(ids) + f"\n\r\n--{boundary}--\r\n"
    )
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Fixture:
    """
    What the sections share: the server, tokens, the product and its devices.
    """

    server: Server
    admin: str
    member: str
    stranger: str
    product: int
    ids: list[str]
    groups: dict[str, list[str]]
    own_device: str


def _timed_import(
    server: Server, fx_admin: str, product: int, ids: list[str], as_file: bool
) -> tuple[float, Any]:
    path = f"/v1/products/{product}/devices"
    auth = {"Authorization": f"Bearer {fx_admin}"}
    if as_file:
        body, ctype = multipart_ids(ids)
    else:
        body, ctype = json.dumps({"ids": ids}), "application/json"
    started = time.perf_counter()
    status, reply = call(
        server.port, Request("POST", path, {**auth, "Content-Type": ctype}, body), timeout=120
    )
    elapsed = time.perf_counter() - started
    if status != 200:
        raise BenchError(f"import of {len(ids)} ids answered {status}: {reply[:300]!r}")
    return elapsed, json.loads(reply)


def setup(args: argparse.Namespace, server: Server, outcome: Outcome) -> Fixture:
    """
    Accounts, the product, its imported devices (timed: the import section), groups and seeded connections.
    """
    admin = get_token(server.port, EMAIL, PASSWORD)
    for email in (MEMBER, STRANGER):
        api(server, "POST", "/v1/users", body={"username": email, "password": PASSWORD})
    member = get_token(server.port, MEMBER, PASSWORD)
    stranger = get_token(server.port, STRANGER, PASSWORD)
    created = api(server, "POST", "/v1/products", admin, {"name": "Bench fleet", "platform_id": 6}, want=201)
    product = int(created["product"]["id"])
    api(server, "POST", f"/v1/products/{product}/team", admin, {"username": MEMBER, "role": "Developer"})

    # The user path's device: its key registered, then claimed, by the member (who is its owner).
    own = device_ids(1, args.seed + 1)[0]
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the protocol's size
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    api(server, "POST", f"/v1/provisioning/{own}", member, {"publicKey": pem.decode()})
    api(server, "POST", "/v1/devices", member, {"id": own})

    ids = device_ids(args.devices, args.seed)
    batches = [ids[i : i + args.import_size] for i in range(0, len(ids), args.import_size)]
    rows: list[list[str]] = []
    timings: list[dict[str, Any]] = []
    for n, batch in enumerate(batches):
        as_file = n == len(batches) - 1
        elapsed, result = _timed_import(server, admin, product, batch, as_file)
        if result["updated"] != len(batch) or result["invalidDeviceIds"] or result["nonmemberDeviceIds"]:
            raise BenchError(f"import {n + 1} answered {json.dumps(result)[:300]}")
        timings.append(
            {"ids": len(batch), "as_file": as_file, "held_before": n * args.import_size, "s": elapsed}
        )
    again, result = _timed_import(server, admin, product, batches[-1], False)
    if result["updated"] or len(result["existingDeviceIds"]) != len(batches[-1]):
        raise BenchError(f"importing known ids again answered {json.dumps(result)[:300]}")
    timings.append(
        {"ids": len(batches[-1]), "as_file": False, "held_before": len(ids), "s": again, "again": True}
    )
    total = api(server, "GET", f"/v1/products/{product}/devices?perPage=1", admin)["meta"]["total"]
    if total != len(ids):
        raise BenchError(f"the product lists {total} devices after importing {len(ids)}")
    outcome.figures["imports"] = timings
    for t in timings:
        kind = "file (.txt)" if t["as_file"] else "JSON list"
        what = "again (all known)" if t.get("again") else "new ids"
        rows.append([
            f"{t['ids']:,} {what}, {kind}", f"{t['held_before']:,}", f"{t['s'] * 1000:,.0f}",
            f"{t['s'] / t['ids'] * 1e6:,.1f}", f"{t['s'] / IMPORT_TARGET_S:.2f}×",
        ])  # fmt: skip
        if t["ids"] >= 10_000 and t["s"] > IMPORT_TARGET_S:
            outcome.missed.append(
                f"import of {t['ids']:,} ids took {t['s']:.2f} s (target {IMPORT_TARGET_S} s)"
            )
    outcome.table = Table(
        IMPORT_TITLE, ["request", "devices held before", "ms", "µs per id", "÷ target (2 s)"], rows
    )
    print("\n" + format_table([outcome.table.columns, *rows]))

    # Groups through the batch edit: device n goes to group n % groups.
    groups: dict[str, list[str]] = {f"fleet-{g}": ids[g :: args.groups] for g in range(args.groups)}
    started = time.monotonic()
    for name, members in groups.items():
        for start in range(0, len(members), 10_000):
            body = {
                "action": "groups",
                "devices": members[start : start + 10_000],
                "metadata": {"add": [name]},
            }
            api(server, "PUT", f"/v1/products/{product}/devices", admin, body)
    grouped = time.monotonic() - started
    seeded = asyncio.run(_seed_connections(args.postgres_url, product, args.seed))
    outcome.figures["seeding"] = {"groups_s": grouped, **seeded}
    print(
        f"\nseeded: {args.groups} groups through the batch edit in {grouped:.1f} s; last connections and"
        f" firmware versions in SQL in {seeded['write_s']:.1f} s; VACUUM ANALYZE {seeded['analyze_s']:.1f} s"
    )
    return Fixture(server, admin, member, stranger, product, ids, groups, own)


# ---------------------------------------------------------------------------------------------- list


def _list_path(product: int, params: dict[str, Any]) -> str:
    return f"/v1/products/{product}/devices?" + urllib.parse.urlencode(params)


def check_list(fx: Fixture, sorts: dict[str, tuple[dict[str, Any], Any]]) -> list[str]:
    """
    Correctness of the list before it is loaded: totals, page sizes, order and the group filter.
    """
    problems: list[str] = []
    name, members = next(iter(fx.groups.items()))
    wanted = set(members)
    for sort_attr, (extra, key) in sorts.items():
        seen: list[Any] = []
        pages = -(-len(members) // 25)
        for page in sorted({1, 2, pages}):
            params = {"groups": name, "sortAttr": sort_attr, **extra, "perPage": 25, "page": page}
            reply = api(fx.server, "GET", _list_path(fx.product, params), fx.member)
            meta = reply["meta"]
            if meta["total"] != len(members) or meta["total_pages"] != pages:
                problems.append(f"{sort_attr}: meta {meta}, expected total {len(members)}, {pages} pages")
            expected = 25 if page < pages else len(members) - 25 * (pages - 1)
            if len(reply["devices"]) != expected:
                problems.append(
                    f"{sort_attr} page {page}: {len(reply['devices'])} devices, expected {expected}"
                )
            if any(d["id"] not in wanted or name not in d["groups"] for d in reply["devices"]):
                problems.append(f"{sort_attr} page {page}: a device outside group {name}")
            if page < 3:
                seen += [key(d) for d in reply["devices"]]
        if seen != sorted(seen, key=lambda k: (k[0] is None, k)):
            problems.append(f"{sort_attr}: pages 1-2 are not in order")
    return problems


def bench_list(args: argparse.Namespace, fx: Fixture) -> Outcome:
    outcome = Outcome()
    auth = {"Authorization": f"Bearer {fx.member}"}

    def firmware(
        d: dict[str, Any],
    ) -> Any:  # descending: negated to compare ascending, the tie (id) ascending
        return (None if d["firmware_version"] is None else -d["firmware_version"], d["id"])

    def connection(d: dict[str, Any]) -> Any:
        last = d["last_handshake_at"]
        return (
            None if last is None else -datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp(),
            d["id"],
        )

    problems = check_list(
        fx, {"firmwareVersion": ({"sortDir": "desc"}, firmware), "lastConnection": ({}, connection)}
    )
    outcome.failures += [f"list: {p}" for p in problems]
    rng = random.Random(args.seed + 2)
    names = list(fx.groups)
    group_pages = max(1, -(-len(fx.groups[names[0]]) // 25))
    all_pages = max(1, -(-len(fx.ids) // 25))

    def variants(make: Any) -> list[Request]:
        return [Request("GET", _list_path(fx.product, make()), auth) for _ in range(args.variants)]

    shapes: list[tuple[str, list[Request]]] = [
        ("GET /v1/products/:p (baseline)", [Request("GET", f"/v1/products/{fx.product}", auth)]),
        ("groups + sortAttr=firmwareVersion desc", variants(lambda: {
            "groups": rng.choice(names), "sortAttr": "firmwareVersion", "sortDir": "desc", "perPage": 25,
            "page": rng.randint(1, group_pages)})),
        ("groups + last connection (default order)", variants(lambda: {
            "groups": rng.choice(names), "sortAttr": "lastConnection", "perPage": 25,
            "page": rng.randint(1, group_pages)})),
        ("no filter, default order, whole product", variants(lambda: {
            "perPage": 25, "page": rng.randint(1, all_pages)})),
    ]  # fmt: skip
    results: list[LoadResult] = []
    for label, requests in shapes:
        load = {"generator": "python", "connections": args.connections, "pin": args.pin, "variants": requests,
                "rate": args.rate}  # fmt: skip
        run_load("warm-up", fx.server, requests[0], duration=args.warmup, **load)
        result = run_load(label, fx.server, requests[0], duration=args.duration, **load)
        results.append(result)
        if result.requests == 0 or result.errors:
            outcome.failures.append(
                f"list {label}: {result.requests} requests, {result.status_errors} non-2xx,"
                f" {result.socket_errors} socket errors"
            )
    base = results[0]
    rows = []
    for r in results:
        is_base = r is base
        rows.append([
            r.label, f"{args.rate:,.0f}", f"{r.rate:,.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
            f"{r.server_cpu_us_per_request:,.0f}", f"{r.server_cpu_share * 100:.0f}%",
            "—" if is_base else f"{r.p99_ms / LIST_TARGET_MS:.2f}×",
            "—" if is_base else f"{r.p99_ms / base.p99_ms:.1f}×",
        ])  # fmt: skip
        if not is_base and r.p99_ms > LIST_TARGET_MS:
            outcome.missed.append(f"list {r.label}: p99 {r.p99_ms:.1f} ms (target {LIST_TARGET_MS:.0f} ms)")
    columns = ["request", "offered/s", "answered/s", "p50 ms", "p99 ms", "server CPU µs/req", "server CPU",
               "p99 ÷ target", "p99 ÷ baseline"]  # fmt: skip
    print("\n" + format_table([columns, *rows]))
    outcome.table = Table(LIST_TITLE, columns, rows)
    outcome.figures["runs"] = [{**r.__dict__, "rate": r.rate} for r in results]
    return outcome


# ---------------------------------------------------------------------------------------------- access


def bench_access(args: argparse.Namespace, fx: Fixture) -> Outcome:
    outcome = Outcome()
    product_device = fx.ids[len(fx.ids) // 2]
    paths = {"user": f"/v1/devices/{fx.own_device}", "product": f"/v1/devices/{product_device}"}
    auth = {"Authorization": f"Bearer {fx.member}"}
    for kind, path in paths.items():
        reply = api(fx.server, "GET", path, fx.member)
        if reply.get("id") != path.rsplit("/", 1)[1]:
            outcome.failures.append(f"access: GET {path} ({kind}) answered {json.dumps(reply)[:200]}")
    status, _ = call(
        fx.server.port, Request("GET", paths["product"], {"Authorization": f"Bearer {fx.stranger}"})
    )
    if status != 403:
        outcome.failures.append(
            f"access: a user outside the product read its device ({status}, expected 403)"
        )
    runs: dict[str, list[LoadResult]] = {"user": [], "product": []}
    for kind in ("user", "product") * args.access_rounds:
        request = Request("GET", paths[kind], auth)
        run_load("warm-up", fx.server, request, generator="python", connections=args.access_connections,
                 duration=args.warmup, pin=args.pin)  # fmt: skip
        result = run_load(kind, fx.server, request, generator="python", connections=args.access_connections,
                          duration=args.duration, pin=args.pin)  # fmt: skip
        runs[kind].append(result)
        if result.requests == 0 or result.errors:
            outcome.failures.append(f"access {kind}: {result.requests} requests, {result.errors} errors")
    labels = {"user": "own device (user path)", "product": "product device, Developer role (product path)"}
    columns = ["run", "device", "conns", "req/s", "p50 ms", "p99 ms", "server CPU µs/req",
               "÷ user path (CPU)", "÷ user path (req/s)"]  # fmt: skip
    rows = []
    for n in range(args.access_rounds):
        user, prod = runs["user"][n], runs["product"][n]
        for r in (user, prod):
            is_user = r is user
            rows.append([
                str(n + 1), labels[r.label], str(r.connections), f"{r.rate:,.0f}", f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}", f"{r.server_cpu_us_per_request:,.0f}",
                "—" if is_user else f"{r.server_cpu_us_per_request / user.server_cpu_us_per_request:.3f}×",
                "—" if is_user else f"{r.rate / user.rate:.3f}×",
            ])  # fmt: skip
    user_cpu = sum(r.server_cpu_s for r in runs["user"]) / max(1, sum(r.requests for r in runs["user"]))
    prod_cpu = sum(r.server_cpu_s for r in runs["product"]) / max(1, sum(r.requests for r in runs["product"]))
    ratio = prod_cpu / user_cpu if user_cpu else float("nan")
    rows.append([
        "all", "product ÷ user", "", "", "", "", f"{prod_cpu * 1e6:,.0f} ÷ {user_cpu * 1e6:,.0f}",
        f"{ratio:.3f}×", "",
    ])  # fmt: skip
    print("\n" + format_table([columns, *rows]))
    print(
        f"\nthe product path costs {ratio:.3f}× the user path's server CPU per request"
        f" (target ≤ {ACCESS_TARGET}×)"
    )
    if ratio > ACCESS_TARGET:
        outcome.missed.append(
            f"access: the product path costs {ratio:.3f}× the user path (target {ACCESS_TARGET}×)"
        )
    outcome.table = Table(ACCESS_TITLE, columns, rows)
    outcome.figures = {
        "ratio": ratio,
        **{k: [{**r.__dict__, "rate": r.rate} for r in v] for k, v in runs.items()},
    }
    return outcome


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="every path tiny, for CI: no targets")
    parser.add_argument(
        "--only", action="append", choices=("list", "access"), help="repeatable (import always runs)"
    )
    parser.add_argument("--devices", type=int, default=None, help="product devices (100,000)")
    parser.add_argument("--import-size", type=int, default=None, help="ids per import request (10,000)")
    parser.add_argument("--groups", type=int, default=None, help="groups the devices are spread over (10)")
    parser.add_argument("--rate", type=float, default=None, help="list requests/s, open loop (200)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (15)")
    parser.add_argument("--connections", type=int, default=32, help="list: keep-alive connections (32)")
    parser.add_argument("--access-connections", type=int, default=16, help="access: connections (16)")
    parser.add_argument("--access-rounds", type=int, default=None, help="access: user/product pairs (2)")
    parser.add_argument("--variants", type=int, default=2000, help="list: distinct requests per shape (2000)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--postgres-url", default=None, help=f"default DEVICECLOUD_BENCH_POSTGRES_URL or {DEFAULT_URL}"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin even where possible")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    smoke: bool = args.smoke
    args.devices = args.devices or (400 if smoke else 100_000)
    args.import_size = args.import_size or (100 if smoke else 10_000)
    args.groups = args.groups or (4 if smoke else 10)
    args.rate = args.rate or (100.0 if smoke else 200.0)
    args.duration = args.duration or (1.5 if smoke else 15.0)
    args.warmup = 0.5 if smoke else 3.0
    args.access_rounds = args.access_rounds or (1 if smoke else 2)
    if smoke:
        args.variants = min(args.variants, 200)
    url = args.postgres_url or os.environ.get("DEVICECLOUD_BENCH_POSTGRES_URL", DEFAULT_URL)
    if smoke:
        url += "_smoke"
    args.postgres_url = url
    args.pin = can_pin() and not args.no_pin
    print(
        f"devicecloud products benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}"
        f"  mode={'smoke' if smoke else 'full'}"
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        "server pinned to core 0, load generator to core 1 (PostgreSQL not pinned)"
        if args.pin
        else "not pinned"
    )
    problem = asyncio.run(_prepare_database(url))
    if problem is not None:
        if os.environ.get("CI") == "true":
            raise BenchError(f"CI must provide PostgreSQL: {problem}")
        print(f"SKIP: {problem}")
        return 0
    print(f"database: {url.rsplit('@', 1)[-1]} (emptied)")
    outcomes: dict[str, Outcome] = {}
    env = {"DEVICECLOUD_DATABASE_URL": url}
    with running_server(email=EMAIL, password=PASSWORD, pin=args.pin, extra_env=env,
                        extra_args=["--no-demo-device"]) as server:  # fmt: skip
        outcomes["import"] = Outcome()
        fx = setup(args, server, outcomes["import"])
        for name, bench in (("list", bench_list), ("access", bench_access)):
            if args.only and name not in args.only:
                continue
            try:
                outcomes[name] = bench(args, fx)
            except BenchError as exc:
                outcomes[name] = Outcome(failures=[f"{name}: {exc}"])
    return report("products", outcomes, json_path=args.json, smoke=smoke, pin=args.pin, started=started)


if __name__ == "__main__":
    run_main(main)
