"""
The ``devicecloud`` command: one module per command group.
"""

from __future__ import annotations

import click

from devicecloud import __version__
from devicecloud.cli.db import db
from devicecloud.cli.keys import keys
from devicecloud.cli.libraries import libraries
from devicecloud.cli.products import products
from devicecloud.cli.serve import serve
from devicecloud.cli.sims import sims
from devicecloud.cli.users import users
from devicecloud.cli.virtual_device import virtual_device


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="devicecloud")
def main() -> None:
    """
    devicecloud: a self-hosted, Particle-compatible device cloud.

    Settings come from DEVICECLOUD_* environment variables and an optional TOML file
    (DEVICECLOUD_CONFIG, or devicecloud.toml in the data dir); see the README.
    """


main.add_command(serve)
main.add_command(users)
main.add_command(db)
main.add_command(keys)
main.add_command(libraries)
main.add_command(virtual_device)
main.add_command(products)
main.add_command(sims)
