"""
``devicecloud products``: create and list products from the shell (a self-hosted cloud has no console).
"""

from __future__ import annotations

from pathlib import Path

import click

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.runtime import Runtime


@click.group()
def products() -> None:
    """
    Create and list products.
    """


@products.command("create")
@click.argument("name")
@click.option("--owner", required=True, help="Email of the account that becomes the product's Owner.")
@click.option(
    "--platform-id", required=True, type=int, help="Platform of its devices (6 Photon, 8 P1, 10 Electron)."
)
@click.option("--slug", help="URL name (made from NAME when omitted).")
@click.option("--description", help="Free text.")
@click.option(
    "--quarantine/--no-quarantine", default=False, help="Quarantine devices that were not imported."
)
@data_dir_option
def create(
    name: str,
    owner: str,
    platform_id: int,
    slug: str | None,
    description: str | None,
    quarantine: bool,
    data_dir: Path | None,
) -> None:
    """
    Create a product owned by an existing account.
    """

    async def action(runtime: Runtime) -> tuple[int, str]:
        user = await runtime.accounts.get_by_username(owner)
        view = await runtime.products.create(
            user,
            name=name,
            platform_id=platform_id,
            slug=slug,
            description=description,
            quarantine=quarantine,
        )
        return view.product.id, view.product.slug

    product_id, chosen = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"created product {product_id} ({chosen}) owned by {owner}")


@products.command("list")
@data_dir_option
def list_products(data_dir: Path | None) -> None:
    """
    List every product: id, slug, platform, quarantine, Owner, name.
    """

    async def action(runtime: Runtime) -> list[str]:
        return [
            f"{p.id}\t{p.slug}\tplatform={p.platform_id}\tquarantine={'on' if p.quarantine else 'off'}"
            f"\towner={p.owner_username or '-'}\t{p.name}"
            for p in await runtime.products.list_all()
        ]

    for line in run_with_runtime(settings_from(data_dir=data_dir), action):
        click.echo(line)
