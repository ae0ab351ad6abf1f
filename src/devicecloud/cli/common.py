"""
Helpers shared by the command modules: settings from flags, and running a coroutine with a started runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from devicecloud.errors import DomainError
from devicecloud.runtime import Runtime, build_runtime, configure_logging
from devicecloud.settings import Settings, load_settings

T = TypeVar("T")

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default ./data, or DEVICECLOUD_DATA_DIR).",
)


def settings_from(**overrides: Any) -> Settings:
    """
    Settings with the non-None command-line overrides applied; a bad value is a usage error.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return load_settings(**given)
    except ValidationError as exc:
        raise click.UsageError(f"invalid setting: {exc}") from exc


def new_event_loop() -> asyncio.AbstractEventLoop:
    """
    uvloop where it is installed (it is, with uvicorn[standard]), else the default loop.
    """
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - platform without uvloop
        return asyncio.new_event_loop()


def run_with_runtime(settings: Settings, action: Callable[[Runtime], Awaitable[T]]) -> T:
    """
    Start a runtime, run ``action`` with it, stop it; domain errors become clean CLI errors.
    """
    configure_logging(settings)

    async def main() -> T:
        runtime = build_runtime(settings)
        await runtime.start()
        try:
            return await action(runtime)
        finally:
            await runtime.stop()

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main())
    except DomainError as exc:
        raise click.ClickException(exc.description) from exc
