"""
``devicecloud users``: account administration for operators.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import click

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.runtime import Runtime


@click.group()
def users() -> None:
    """
    Create, list and manage accounts.
    """


@users.command("create")
@click.argument("email")
@click.option("--password", help="Password (generated and printed when omitted).")
@data_dir_option
def create(email: str, password: str | None, data_dir: Path | None) -> None:
    """
    Create an account.
    """
    chosen = password or secrets.token_urlsafe(12)

    async def action(runtime: Runtime) -> str:
        user = await runtime.accounts.create_user(email, chosen)
        return user.username

    username = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"created {username}" + ("" if password else f" with password {chosen}"))


@users.command("list")
@data_dir_option
def list_users(data_dir: Path | None) -> None:
    """
    List accounts.
    """

    async def action(runtime: Runtime) -> list[tuple[str, bool, str]]:
        return [
            (u.username, u.mfa_enabled, u.created_at.isoformat(timespec="seconds"))
            for u in await runtime.accounts.list_users()
        ]

    for username, mfa, created in run_with_runtime(settings_from(data_dir=data_dir), action):
        click.echo(f"{username}\tmfa={'on' if mfa else 'off'}\tcreated={created}")


@users.command("set-password")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="The new password.")
@data_dir_option
def set_password(email: str, password: str, data_dir: Path | None) -> None:
    """
    Set an account's password and revoke its tokens.
    """

    async def action(runtime: Runtime) -> None:
        await runtime.accounts.set_password(email, password)

    run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"password of {email} changed; its tokens were revoked")


@users.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def delete(email: str, yes: bool, data_dir: Path | None) -> None:
    """
    Delete an account with its tokens and clients.
    """
    if not yes:
        click.confirm(f"Delete {email} and everything it owns?", abort=True)

    async def action(runtime: Runtime) -> None:
        await runtime.accounts.delete_by_username(email)

    run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"deleted {email}")
