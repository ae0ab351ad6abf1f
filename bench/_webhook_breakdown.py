"""
Where one webhook delivery spends the server's CPU, stage by stage, measured in-process (``webhook_bench.py``
runs it pinned to core 0 as its ``breakdown`` section; on its own: ``taskset -c 0 python
bench/_webhook_breakdown.py``).

It builds the server's runtime on a temporary database (no HTTP API, no dispatcher tasks), makes one account
with ``--hooks`` hooks like the benchmark's (JSON and form templates in turn, all on the ``benchhook``
prefix, to a ``_webhook_sink.py`` process pinned to core 1), and then, ``--rounds`` times, takes ``--events``
events through the same calls the dispatcher makes, each stage timed on its own with ``time.process_time``
(the whole process: aiosqlite's threads included) and its SQL statements counted:

    match + target host     ``WebhookService.matching``, ``hook_event``, ``dispatcher.target_host`` (writer)
    enqueue                 ``WebhookService.enqueue``: one transaction for the batch (writer)
    claim                   ``WebhookService.claim`` in batches of the dispatcher's ``claim_batch``
    build request           ``WebhookService.hook`` + ``templating.build_request`` (claimer)
    HTTP                    ``HttpSender.send``, at most ``host_concurrency`` at once, one task each
    response events         ``templating.response_events`` + ``OutgoingRequest.log_entry`` (after a reply)
    record                  ``WebhookService.record`` in batches of 1,000: one transaction (delete, logs,
                            prune) and the ``hook-sent`` events on the bus

Prints one ``BENCH_JSON`` line: µs per delivery and statements per batch for each stage, and the pieces of
the templating (``event_context`` alone, one ``combustache`` render).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event as sa_event

from devicecloud.domain.events import CloudEvent
from devicecloud.domain.webhooks import Delivery, DeliveryOutcome, HookEvent, Webhook
from devicecloud.runtime import build_runtime
from devicecloud.services.webhooks import hook_event
from devicecloud.settings import load_settings
from devicecloud.webhooks.dispatcher import DispatchPolicy, target_host
from devicecloud.webhooks.http import HttpSender, SenderLimits
from devicecloud.webhooks.templating import (
    OutgoingRequest,
    build_request,
    event_context,
    render,
    response_events,
)

BENCH_DIR = Path(__file__).resolve().parent
EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a temporary database
TEMPLATE = {
    "value": "{{{PARTICLE_EVENT_VALUE}}}",
    "device": "{{PARTICLE_DEVICE_ID}}",
    "published": "{{{PARTICLE_PUBLISHED_AT}}}",
}
STAGES = ("match + target host", "enqueue", "claim", "build request", "HTTP", "response events", "record")
T = TypeVar("T")


class Stages:
    def __init__(self) -> None:
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.statements = dict.fromkeys(STAGES, 0)
        self.counted = 0

    async def run(self, stage: str, work: Callable[[], Awaitable[T]]) -> T:
        cpu, wall, before = time.process_time(), time.perf_counter(), self.counted
        result = await work()
        self.cpu[stage] += time.process_time() - cpu
        self.wall[stage] += time.perf_counter() - wall
        self.statements[stage] += self.counted - before
        return result


async def one_round(
    runtime: Any, sender: HttpSender, user_id: int, stages: Stages, events: int, round_no: int, limit: int
) -> int:
    service = runtime.webhooks
    now = datetime.now(UTC)
    cloud_events = [
        CloudEvent(name="benchhook/x", data=f"{i % 7}:{round_no * events + i}:{time.monotonic_ns()}", ttl=60,
                   published_at=now, coreid="e0b000000000000000000001", public=False, owner_id=user_id,
                   device_id="e0b000000000000000000001")
        for i in range(events)
    ]  # fmt: skip

    async def match() -> list[tuple[Webhook, HookEvent, str]]:
        items: list[tuple[Webhook, HookEvent, str]] = []
        for cloud_event in cloud_events:
            hooks = await service.matching(cloud_event)
            if hooks:
                stored = hook_event(cloud_event)
                items.extend((hook, stored, target_host(hook.config, stored)) for hook in hooks)
        return items

    items = await stages.run("match + target host", match)
    await stages.run("enqueue", lambda: service.enqueue(items))

    async def claim() -> list[Delivery]:
        claimed: list[Delivery] = []
        while batch := await service.claim(DispatchPolicy().claim_batch):
            claimed.extend(batch)
        return claimed

    deliveries = await stages.run("claim", claim)

    async def build() -> list[tuple[Webhook, Delivery, OutgoingRequest]]:
        out = []
        for delivery in deliveries:
            hook = await service.hook(delivery.hook_id)
            assert hook is not None
            out.append((hook, delivery, build_request(hook.config, delivery.event)))
        return out

    requests = await stages.run("build request", build)
    gate = asyncio.Semaphore(limit)

    async def send_one(request: OutgoingRequest) -> Any:
        async with gate:
            return await sender.send(request, verify_tls=True)

    async def send_all() -> list[Any]:
        tasks = [asyncio.create_task(send_one(request)) for _hook, _delivery, request in requests]
        return list(await asyncio.gather(*tasks))

    responses = await stages.run("HTTP", send_all)

    async def outcomes() -> list[DeliveryOutcome]:
        out = []
        for (hook, delivery, request), response in zip(requests, responses, strict=True):
            events_out = response_events(hook.config, delivery.event, response.body)
            out.append(
                DeliveryOutcome(delivery=delivery, request=request.log_entry(), status=response.status,
                                elapsed_ms=response.elapsed_ms, body=response.body,
                                response_events=events_out)
            )  # fmt: skip
        return out

    booked = await stages.run("response events", outcomes)

    async def record() -> None:
        for start in range(0, len(booked), 1000):
            await service.record(booked[start : start + 1000])

    await stages.run("record", record)
    return len(deliveries)


async def measure(args: argparse.Namespace, data_dir: Path, sink_port: int) -> dict[str, Any]:
    settings = load_settings(
        data_dir=data_dir,
        rate_limits_enabled=False,
        webhook_block_private=False,
        password_time_cost=1,
        password_memory_cost=1024,
        password_parallelism=1,
    )
    runtime = build_runtime(settings)
    await runtime.start()
    stages = Stages()

    def count(*_args: Any) -> None:
        stages.counted += 1

    sa_event.listen(runtime.store.engine.sync_engine, "before_cursor_execute", count)
    sender = HttpSender(SenderLimits())
    try:
        user = await runtime.accounts.create_user(EMAIL, PASSWORD)
        for i in range(args.hooks):
            params = {"integration_type": "Webhook", "event": "benchhook",
                      "url": f"http://127.0.0.1:{sink_port}/h/{i}", "requestType": "POST",
                      ("json" if i % 2 == 0 else "form"): TEMPLATE}  # fmt: skip
            await runtime.webhooks.create(user, params)
        limit = settings.webhook_host_concurrency
        await one_round(runtime, sender, user.id, Stages(), args.events, 0, limit)  # warm-up
        delivered = 0
        for round_no in range(1, args.rounds + 1):
            delivered += await one_round(runtime, sender, user.id, stages, args.events, round_no, limit)
        sample = HookEvent(id="x" * 24, name="benchhook/x", data="0:1:2", coreid="e0b0" * 6,
                           published_at=datetime.now(UTC), device_id="e0b0" * 6)  # fmt: skip
        n = 5000
        cpu = time.process_time()
        for _ in range(n):
            context = event_context(sample)
        context_us = (time.process_time() - cpu) / n * 1e6
        cpu = time.process_time()
        for _ in range(n):
            render("{{{PARTICLE_EVENT_VALUE}}}", context)
        render_us = (time.process_time() - cpu) / n * 1e6
    finally:
        await sender.close()
        await runtime.stop()
    per = 1e6 / max(1, delivered)
    batches = args.rounds
    return {
        "deliveries": delivered,
        "events_per_round": args.events,
        "hooks": args.hooks,
        "stages": {
            stage: {
                "cpu_us_per_delivery": stages.cpu[stage] * per,
                "wall_us_per_delivery": stages.wall[stage] * per,
                "statements_per_round": stages.statements[stage] / batches,
            }
            for stage in STAGES
        },
        "total_cpu_us_per_delivery": sum(stages.cpu.values()) * per,
        "event_context_us": context_us,
        "one_render_us": render_us,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hooks", type=int, default=4)
    parser.add_argument("--events", type=int, default=125, help="events per round (125 x 4 hooks = 500)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sink-core", type=int, default=1, help="pin the sink here (-1: do not pin)")
    args = parser.parse_args(argv)
    from devicecloud.cli.common import new_event_loop

    spec = json.dumps({"listeners": [{"host": "127.0.0.1", "mode": "ok"}]})
    argv_sink = [sys.executable, str(BENCH_DIR / "_webhook_sink.py"), spec]
    if args.sink_core >= 0:
        argv_sink = ["taskset", "-c", str(args.sink_core), *argv_sink]
    sink = subprocess.Popen(argv_sink, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert sink.stdout is not None
        assert sink.stdin is not None
        ready = json.loads(sink.stdout.readline().removeprefix("READY "))
        with tempfile.TemporaryDirectory(prefix="devicecloud-breakdown-") as tmp:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                results = runner.run(measure(args, Path(tmp), int(ready["ports"][0])))
        sink.stdin.write("report\n")
        sink.stdin.flush()
        report = json.loads(sink.stdout.readline().removeprefix("REPORT "))
        results["sink_requests"] = report["requests"]
        results["sink_bad"] = report["bad"]
    finally:
        if sink.stdin is not None:
            sink.stdin.close()
        sink.wait(timeout=10)
    print("BENCH_JSON " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
