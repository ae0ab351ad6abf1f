"""
Authentication benchmark: authenticated ``GET /v1/user`` throughput and ``POST /oauth/token`` logins.

What it does, in one run:
1. measures the cost of one argon2 password hash and one verify with the server's settings (defaults
   3 / 64 MiB / 4 unless DEVICECLOUD_PASSWORD_* say otherwise), in a process on the server's core;
2. runs ``auth_breakdown.py`` (in-process, layer by layer) and checks that a token check is one SQL
   statement with an indexed plan;
3. starts ``devicecloud serve`` on a free loopback port with a temporary data dir, pinned to core 0, and the
   load generator (``wrk`` or the Python fallback) pinned to core 1, with the per-IP rate limits off;
4. measures ``GET /healthz`` (the same run's no-auth baseline), ``GET /v1/user`` with a bearer token and
   ``POST /oauth/token`` password logins, each after a warm-up, and prints a table with the ratios:
   GET /v1/user to the 3,000 req/s target and to the baseline; logins to the one-core ceiling 1/hash-cost.

Exit status: 1 when anything fails (server start, any non-2xx reply or socket error, no requests, a failed
structural check such as the password hash running on the token path); in the full run (not ``--smoke``)
3 when GET /v1/user misses the 3,000 req/s target. ``--smoke`` keeps every path but runs for seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    SERVER_CORE,
    BenchError,
    LoadResult,
    Request,
    Table,
    call,
    can_pin,
    format_table,
    get_token,
    login_request,
    pinned,
    record,
    run_load,
    running_server,
)

TARGET_USER_RPS = 3000.0
RUNS_TITLE = "GET /v1/user (target ≥ 3,000 req/s) and POST /oauth/token (against 1 / one argon2 verify)"
EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a temporary data dir


# ---------------------------------------------------------------------------------------------- hash cost


def _hash_cost_child(iterations: int) -> None:
    """
    In a child process: time ``Passwords`` hash and verify with the server's own settings; print JSON.
    """
    from devicecloud.services.passwords import Passwords
    from devicecloud.settings import Settings

    settings = Settings()
    passwords = Passwords(
        time_cost=settings.password_time_cost,
        memory_cost=settings.password_memory_cost,
        parallelism=settings.password_parallelism,
    )
    hasher = passwords._hasher
    stored = passwords.hash_blocking("warm-up password")
    start = time.perf_counter()
    for i in range(iterations):
        passwords.hash_blocking(f"password {i}")
    hash_s = (time.perf_counter() - start) / iterations
    start = time.perf_counter()
    for _ in range(iterations):
        hasher.verify(stored, "warm-up password")
    verify_s = (time.perf_counter() - start) / iterations
    params = {
        "time_cost": settings.password_time_cost,
        "memory_cost_kib": settings.password_memory_cost,
        "parallelism": settings.password_parallelism,
    }
    print(json.dumps({"hash_s": hash_s, "verify_s": verify_s, "params": params}))


def measure_hash_cost(iterations: int, pin: bool) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--hash-cost-child", str(iterations)]
    out = subprocess.run(
        pinned(SERVER_CORE, argv, pin), capture_output=True, text=True, timeout=300, check=False
    )
    if out.returncode != 0:
        raise BenchError(f"hash cost measurement failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_breakdown(iterations: int, pin: bool) -> tuple[dict[str, Any], str, list[str]]:
    """
    ``auth_breakdown.py`` in its own process on the server's core: figures, rendered table, problems.
    """
    sys.path.insert(0, str(BENCH_DIR))
    import auth_breakdown

    argv = [sys.executable, str(BENCH_DIR / "auth_breakdown.py"), "-n", str(iterations), "--json"]
    out = subprocess.run(
        pinned(SERVER_CORE, argv, pin), capture_output=True, text=True, timeout=600, check=False
    )
    try:
        figures: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"auth_breakdown.py failed ({out.returncode}):\n{out.stderr[-2000:]}") from exc
    return figures, auth_breakdown.render(figures), auth_breakdown.check(figures)


# ---------------------------------------------------------------------------------------------- the run


def _row(result: LoadResult) -> list[str]:
    return [
        result.label,
        result.generator,
        str(result.connections),
        str(result.requests),
        f"{result.rate:,.0f}",
        f"{result.p50_ms:.2f}",
        f"{result.p99_ms:.2f}",
        str(result.errors),
        f"{result.server_cpu_us_per_request:,.0f}",
        f"{result.server_cpu_share * 100:.0f}%",
        f"{result.generator_cpu_share * 100:.0f}%",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long run for CI: every path, no targets"
    )
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (auto: wrk when installed, else the Python one)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run (default 15)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections for GET (32)")
    parser.add_argument("--login-connections", type=int, default=4, help="connections for logins (4)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset even where available")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    parser.add_argument("--hash-cost-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.hash_cost_child is not None:
        _hash_cost_child(args.hash_cost_child)
        return 0

    started = time.monotonic()
    smoke: bool = args.smoke
    duration = args.duration or (1.5 if smoke else 15.0)
    warmup = 0.5 if smoke else 3.0
    login_duration = args.duration or (2.0 if smoke else 15.0)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    pin = can_pin() and not args.no_pin
    failures: list[str] = []

    mode = "smoke" if smoke else "full"
    print(f"devicecloud auth benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M UTC}  mode={mode}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"server pinned to core 0, load generator ({generator}) to core 1"
        if pin
        else f"not pinned (taskset unavailable or disabled); load generator: {generator}"
    )

    hash_cost = measure_hash_cost(2 if smoke else 10, pin)
    hash_s = hash_cost["hash_s"]
    verify_s = hash_cost["verify_s"]
    print(
        f"argon2id {hash_cost['params']}: one hash {hash_s * 1000:.1f} ms,"
        f" one verify {verify_s * 1000:.1f} ms (on {'core 0' if pin else 'any core'})"
    )

    breakdown, breakdown_table, problems = run_breakdown(300 if smoke else 3000, pin)
    failures += problems
    print("\nPer-layer cost of one authenticated GET /v1/user, in-process (auth_breakdown.py):")
    print(breakdown_table)

    results: list[LoadResult] = []
    with running_server(email=EMAIL, password=PASSWORD, pin=pin) as server:
        token = get_token(server.port, EMAIL, PASSWORD)
        bearer = {"Authorization": f"Bearer {token}"}
        status, body = call(server.port, Request("GET", "/v1/user", bearer))
        if status != 200 or json.loads(body).get("username") != EMAIL:
            raise BenchError(f"GET /v1/user answered {status}: {body[:200]!r}")
        status, _ = call(server.port, Request("GET", "/v1/user", {"Authorization": "Bearer " + "0" * 40}))
        if status != 401:
            failures.append(f"GET /v1/user with an unknown token answered {status}, expected 401")

        runs = [
            ("GET /healthz (baseline)", Request("GET", "/healthz"), args.connections, duration),
            ("GET /v1/user", Request("GET", "/v1/user", bearer), args.connections, duration),
            ("POST /oauth/token", login_request(EMAIL, PASSWORD), args.login_connections, login_duration),
        ]
        for label, request, connections, seconds in runs:

            def load(
                name: str, seconds: float, request: Request = request, connections: int = connections
            ) -> LoadResult:
                return run_load(
                    name,
                    server,
                    request,
                    generator=generator,
                    connections=connections,
                    duration=seconds,
                    pin=pin,
                )

            load("warm-up", warmup)
            result = load(label, seconds)
            results.append(result)
            if result.requests == 0:
                failures.append(f"{label}: no request completed")
            if result.errors:
                failures.append(
                    f"{label}: {result.status_errors} non-2xx replies, {result.socket_errors} socket errors"
                )

    base, user, login = results
    header = ["benchmark", "gen", "conns", "requests", "req/s", "p50 ms", "p99 ms", "errors",
              "server CPU µs/req", "server CPU", "gen CPU"]  # fmt: skip
    print("\n" + format_table([header, *(_row(r) for r in results)]))

    login_ceiling = 1 / verify_s
    user_cost_vs_hash = user.server_cpu_us_per_request / (verify_s * 1e6)
    print()
    print(
        f"GET /v1/user: {user.rate:,.0f} req/s = {user.rate / TARGET_USER_RPS:.2f}x the"
        f" {TARGET_USER_RPS:,.0f} req/s target, {user.rate / base.rate:.2f}x this run's GET /healthz"
        f" baseline ({base.rate:,.0f} req/s);"
        f" p50 {user.p50_ms:.2f} ms, p99 {user.p99_ms:.2f} ms"
    )
    print(
        f"POST /oauth/token: {login.rate:,.1f} tokens/s = {login.rate / login_ceiling:.2f}x"
        f" the one-core ceiling 1/verify-cost = {login_ceiling:,.1f}/s"
        f" (one argon2 verify {verify_s * 1000:.1f} ms,"
        f" one hash {hash_s * 1000:.1f} ms); p50 {login.p50_ms:.1f} ms, p99 {login.p99_ms:.1f} ms"
    )
    print(
        f"token check: {user.server_cpu_us_per_request:,.0f} µs of server CPU per request ="
        f" {user_cost_vs_hash:.4f}x one password verify; {breakdown['lookups_per_verify']} lookup"
        f" ({breakdown['statements_per_verify']} SQL statements with transaction control),"
        f" plan: {' | '.join(breakdown['query_plan'])}"
    )
    if user_cost_vs_hash > 0.1:
        failures.append(
            f"GET /v1/user costs {user_cost_vs_hash:.2f}x a password hash per request:"
            " is the hash on the token path?"
        )
    target_missed = user.rate < TARGET_USER_RPS
    if target_missed:
        print(f"{'note' if smoke else 'MISSED'}: GET /v1/user below {TARGET_USER_RPS:,.0f} req/s"
              + (" (not enforced in --smoke)" if smoke else ""))  # fmt: skip

    if not failures:
        record("auth", {"runs": Table(RUNS_TITLE, header, [_row(r) for r in results])}, smoke=smoke)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "date": datetime.now(UTC).isoformat(), "mode": mode, "pinned": pin,
            "generator": generator, "hash_cost": hash_cost, "breakdown": breakdown,
            "runs": [{**asdict(r), "rate": r.rate} for r in results],
        }, indent=2))  # fmt: skip

    print(f"\nfinished in {time.monotonic() - started:.1f}s")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    if failures:
        return 1
    return 3 if target_missed and not smoke else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print("FAIL:", exc, file=sys.stderr)
        sys.exit(1)
