"""
``devicecloud sims``: what only an operator does with the SIM registry.
"""

from __future__ import annotations

from pathlib import Path

import click

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.domain.sims import parse_usage_csv
from devicecloud.errors import InvalidInput
from devicecloud.runtime import Runtime


@click.group()
def sims() -> None:
    """
    Manage the SIM card registry.
    """


@sims.command("import-usage")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_dir_option
def import_usage(file: Path, data_dir: Path | None) -> None:
    """
    Import data usage from a carrier's report: a CSV with the columns iccid, date (YYYY-MM-DD), mbs_used
    (megabytes) and optionally device_id. A reading replaces an earlier one of the same SIM and day; rows of
    ICCIDs nobody registered are skipped. A bad row imports nothing.
    """
    try:
        rows = parse_usage_csv(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise click.ClickException("The file is not UTF-8 text") from exc
    except InvalidInput as exc:
        raise click.ClickException(exc.description) from exc

    async def action(runtime: Runtime) -> int:
        return await runtime.sims.import_usage(rows)

    stored = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"imported {stored} usage rows; skipped {len(rows) - stored} of unregistered SIM cards")
