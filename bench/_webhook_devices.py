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
from typing import Any

import structlog

from _common import emit
from _devicegen import Fleet, raise_open_files
from _events_gen import connect_fleet, publish_round_robin, read_commands
from devicecloud.cli.common import new_event_loop


async def publish(fleet: Fleet, name: str, rate: float, duration: float) -> dict[str, Any]:
    result = await publish_round_robin(fleet.devices, name, rate, duration)
    result["sent"] = {index: count for index, count in result["sent"].items() if count}
    result["lag_p99_ms"] = result.pop("lag_max_s") * 1000  # the largest lag: the loop does not keep every one
    result["statuses"] = {}
    return result


async def run(spec: dict[str, Any]) -> None:
    fleet = Fleet(spec)
    commands = await read_commands()
    try:
        while True:
            words = await commands.get()
            if words[0] == "connect":
                await connect_fleet(fleet, int(words[1]))
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
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(run(json.loads(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
