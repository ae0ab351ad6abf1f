"""
The device event source of ``webhook_bench.py``: one process (pinned to core 1) of virtual devices
(``_devicegen.Fleet``), driven by lines on stdin; every answer is one ``<WORD> {json}`` line on stdout.

``connect N`` → ``STATE`` (with every device id); ``publish NAME RATE SECONDS`` → the devices publish (NON,
private) ``RATE`` events per second in all, round-robin so that each keeps a steady period (``RATE`` / N per
device: keep it under the server's device publish limit of 1/s), each event's data
``<device index>:<seq>:<monotonic ns at send>`` with a sequence per device starting at 0, then ``RESULT``
(events sent per device, lag behind the schedule, CPU); ``quit`` stops the devices.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from typing import Any

import structlog

from _devicegen import Fleet, raise_open_files
from _events_gen import _loop_factory, emit, read_commands
from devicecloud.virtualdevice import NotConnectedError


async def publish(fleet: Fleet, name: str, rate: float, duration: float) -> dict[str, Any]:
    devices = fleet.devices
    sent = [0] * len(devices)
    errors: Counter[str] = Counter()
    lag_max = 0.0
    last_send = start = time.monotonic()
    cpu_start = time.process_time()
    total = round(rate * duration)
    n = 0
    while n < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        lag_max = max(lag_max, (due - n - 1) / rate)
        stamp = time.monotonic_ns()
        last_send = time.monotonic()
        while n < due:
            index = n % len(devices)
            try:
                await devices[index].publish(name, f"{index}:{sent[index]}:{stamp}", private=True, ttl=60)
                sent[index] += 1
            except (NotConnectedError, ValueError) as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            n += 1
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
    return {
        "published": sum(sent),
        "sent": {str(i): s for i, s in enumerate(sent) if s},
        "duration_s": time.monotonic() - start,
        "send_window_s": last_send - start + 1 / rate,
        "errors": dict(errors.most_common(5)),
        "lag_p99_ms": lag_max * 1000,  # the largest lag: this loop does not keep every one
        "statuses": {},
        "cpu_s": time.process_time() - cpu_start,
        "connected": sum(1 for d in devices if d.connected),
    }


async def run(spec: dict[str, Any]) -> None:
    fleet = Fleet(spec)
    commands = await read_commands()
    try:
        while True:
            words = await commands.get()
            if words[0] == "connect":
                await fleet.connect(int(words[1]))
                state = fleet.state()
                state["ids"] = [d.device_id for d in fleet.devices]
                emit("STATE", state)
            elif words[0] == "publish":
                emit("RESULT", await publish(fleet, words[1], float(words[2]), float(words[3])))
            elif words[0] == "report":
                emit("STATE", fleet.state())
            else:
                break
    finally:
        await fleet.stop()


def main() -> int:
    raise_open_files()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
