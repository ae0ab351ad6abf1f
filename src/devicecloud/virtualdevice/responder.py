"""
How a virtual device answers the cloud: Describe, function calls, variable reads, signal, events, pings.

Theory of operation:
    The link hands every event that is not the answer to one of our own requests to :meth:`Responder.handle`,
    synchronously and in order. Answers come from the application registries:

    - Describe → the function names and variable types (``build_describe``, the flags the cloud asked for);
    - a function call → the callable runs with the argument decoded as UTF-8; a sync one is answered at once,
      an async one in a task so a slow function never blocks the socket. An unknown name is refused with
      4.04 and an over-long argument with 4.00 (Device OS 2.x), a function that raises or returns a non-int32
      is logged and answers -1 (a real device cannot report an exception either);
    - a variable read → the current value (getters run now) or 4.04 for an unknown name, 5.00 if a getter
      fails;
    - an event → every matching subscription's handler (async ones in tasks; a failing handler is logged);
    - signal → ``signaling`` on/off, logged.

    ACKs, separate vs piggy-backed responses and keep-alives are the protocol connection's business.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from devicecloud.protocol import (
    Code,
    DescribeRequested,
    Event,
    EventReceived,
    FunctionCallRequested,
    LocalProtocolError,
    PingReceived,
    RejectRequest,
    RespondDescribe,
    RespondFunction,
    RespondVariable,
    SignalRequested,
    VariableRequested,
)
from devicecloud.virtualdevice.application import CloudFunctions, CloudVariables
from devicecloud.virtualdevice.link import DeviceLink
from devicecloud.virtualdevice.support import Counters, Subscription

__all__ = ["Responder", "shorten"]


def shorten(data: str | bytes | None, limit: int = 64) -> str | None:
    """
    A log-friendly excerpt of an argument or event data.

    Returns:
        At most ``limit`` characters, with the full length noted when cut.
    """
    if data is None:
        return None
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


class Responder:
    """
    Answers peer requests for one virtual device (across its successive links).

    Args:
        functions: the cloud functions.
        variables: the cloud variables.
        subscriptions: the device's subscriptions (shared, mutated by the device).
        counters: where to count.
        describe: builds the Describe answer for the given flags: (payload, Content-Format or None), or None
            to refuse the request (4.00).
        max_argument_length: longer function arguments are refused with 4.00.
        log: a bound structlog logger.
    """

    def __init__(
        self,
        *,
        functions: CloudFunctions,
        variables: CloudVariables,
        subscriptions: list[Subscription],
        counters: Counters,
        describe: Callable[[int], tuple[bytes, int | None] | None],
        max_argument_length: int,
        log: Any,
    ) -> None:
        self.functions = functions
        self.variables = variables
        self.subscriptions = subscriptions
        self.counters = counters
        self.describe = describe
        self.max_argument_length = max_argument_length
        self.log = log
        self.signaling = False
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, link: DeviceLink, event: Event) -> None:
        """Answer or record one event."""
        if isinstance(event, FunctionCallRequested):
            self._call_function(link, event)
        elif isinstance(event, VariableRequested):
            self._read_variable(link, event)
        elif isinstance(event, DescribeRequested):
            answer = self.describe(int(event.flags))
            if answer is None:  # Device OS ≥ 3.3 answers one part per request: "Invalid message options"
                self._reject(
                    link, event.request_id, Code.BAD_REQUEST, "describe refused", flags=int(event.flags)
                )
                return
            payload, content_format = answer
            link.send(RespondDescribe(event.request_id, payload, content_format))
            self.counters.describes += 1
            self.log.debug("describe sent", flags=int(event.flags))
        elif isinstance(event, SignalRequested):
            self.signaling = event.on
            self.counters.signals += 1
            self.log.info("signal on" if event.on else "signal off")
        elif isinstance(event, EventReceived):
            self._deliver(event)
        elif isinstance(event, PingReceived):
            self.counters.pings_received += 1
        else:
            self.log.debug("event ignored", kind=type(event).__name__)

    async def aclose(self) -> None:
        """Cancel running async functions and handlers, and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ functions

    def _reject(self, link: DeviceLink, request_id: int, code: Code, why: str, **details: Any) -> None:
        link.send(RejectRequest(request_id, code))
        self.counters.rejected_requests += 1
        self.log.info(why, **details)

    def _call_function(self, link: DeviceLink, event: FunctionCallRequested) -> None:
        name, rid = event.name, event.request_id
        if name not in self.functions:
            self._reject(link, rid, Code.NOT_FOUND, "unknown function called", function=name)
            return
        if len(event.argument) > self.max_argument_length:
            size = len(event.argument)
            self._reject(link, rid, Code.BAD_REQUEST, "function argument too long", function=name, size=size)
            return
        argument = event.argument.decode("utf-8", "replace")
        try:
            outcome = self.functions.invoke(name, argument)
        except Exception:
            self.log.exception("function failed", function=name)
            outcome = -1
        if isinstance(outcome, int):
            self._return(link, rid, name, argument, outcome)
        else:
            self._spawn(self._finish_function(link, rid, name, argument, outcome))

    async def _finish_function(
        self, link: DeviceLink, rid: int, name: str, argument: str, pending: Awaitable[int]
    ) -> None:
        try:
            result = self.functions.check_result(name, await pending)
        except Exception:
            self.log.exception("function failed", function=name)
            result = -1
        self._return(link, rid, name, argument, result)

    def _return(self, link: DeviceLink, rid: int, name: str, argument: str, result: int) -> None:
        self.counters.function_calls += 1
        self.log.info("function called", function=name, argument=shorten(argument), result=result)
        try:
            link.send(RespondFunction(rid, result))
        except LocalProtocolError:  # the link closed while an async function ran
            self.log.info("function result not sent: link closed", function=name)

    # ------------------------------------------------------------------ variables

    def _read_variable(self, link: DeviceLink, event: VariableRequested) -> None:
        name, rid = event.name, event.request_id
        if name not in self.variables:
            self._reject(link, rid, Code.NOT_FOUND, "unknown variable read", variable=name)
            return
        try:
            var_type, value = self.variables.type_of(name), self.variables[name]
            link.send(RespondVariable(rid, var_type, value))
        except (TypeError, ValueError, LocalProtocolError, ArithmeticError):
            self.log.exception("variable getter failed", variable=name)
            self._reject(link, rid, Code.INTERNAL_SERVER_ERROR, "variable not read", variable=name)
            return
        self.counters.variable_reads += 1
        self.log.info("variable read", variable=name, value=value)

    # ------------------------------------------------------------------ events

    def _deliver(self, event: EventReceived) -> None:
        self.counters.events_received += 1
        data = event.data.decode("utf-8", "replace") if event.data is not None else None
        matching = [s for s in self.subscriptions if s.matches(event.name)]
        self.log.info("event received", event_name=event.name, data=shorten(data), handlers=len(matching))
        for subscription in matching:
            try:
                outcome = subscription.handler(event.name, data)
            except Exception:
                self.log.exception("event handler failed", event_name=event.name)
                continue
            if inspect.isawaitable(outcome):
                self._spawn(self._await_handler(event.name, outcome))

    async def _await_handler(self, name: str, outcome: Awaitable[None]) -> None:
        try:
            await outcome
        except Exception:
            self.log.exception("event handler failed", event_name=name)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)
