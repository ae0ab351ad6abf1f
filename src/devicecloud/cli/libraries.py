"""
``devicecloud libraries``: what only an operator decides about the library registry.
"""

from __future__ import annotations

from pathlib import Path

import click

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.runtime import Runtime


@click.group()
def libraries() -> None:
    """
    Manage the firmware library registry.
    """


@libraries.command("mark")
@click.argument("name")
@click.option(
    "--official/--not-official", default=None, help="List it under scope=official (public versions)."
)
@click.option(
    "--verified/--not-verified", default=None, help="List it under scope=verified (public versions)."
)
@data_dir_option
def mark(name: str, official: bool | None, verified: bool | None, data_dir: Path | None) -> None:
    """
    Mark a library official and/or verified (or take the mark away); without options, show its marks.
    """

    async def action(runtime: Runtime) -> tuple[str, bool, bool]:
        library = await runtime.libraries.mark(name, official=official, verified=verified)
        return library.name, library.official, library.verified

    shown, is_official, is_verified = run_with_runtime(settings_from(data_dir=data_dir), action)
    yes_no = {True: "yes", False: "no"}
    click.echo(f"{shown}\tofficial={yes_no[is_official]}\tverified={yes_no[is_verified]}")
