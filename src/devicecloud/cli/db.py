"""
``devicecloud db``: database maintenance.
"""

from __future__ import annotations

from pathlib import Path

import click

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.runtime import Runtime


@click.group()
def db() -> None:
    """
    Database maintenance.
    """


@db.command()
@data_dir_option
def upgrade(data_dir: Path | None) -> None:
    """
    Apply pending migrations (serve does this on start too).
    """
    settings = settings_from(data_dir=data_dir)

    async def noop(_runtime: Runtime) -> None:
        return None

    run_with_runtime(settings, noop)
    click.echo("database is up to date")
