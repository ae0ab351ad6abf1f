"""
``devicecloud serve``: run the HTTP API (and, once it exists, the device gateway) until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import click
import uvicorn

from devicecloud.cli.common import data_dir_option, new_event_loop, settings_from
from devicecloud.runtime import Runtime, build_runtime, configure_logging
from devicecloud.settings import Settings


def banner(settings: Settings, created: tuple[str, str] | None) -> str:
    """
    What to try first: the account, and exact particle-cli, particle-api-js and curl lines.
    """
    url = settings.effective_public_url
    lines = [f"devicecloud is listening on {url}  (data: {settings.data_dir.resolve()})", ""]
    if created is None:
        lines += [
            "Accounts already exist. Create another with: devicecloud users create you@example.com",
            "",
        ]
        email, password = "<email>", "<password>"
    else:
        email, password = created
        lines += ["A first account was created:", f"  email:    {email}", f"  password: {password}", ""]
    q_email, q_password = shlex.quote(email), shlex.quote(password)
    lines += [
        "Try it with particle-cli:",
        f"  particle config local apiUrl {url} && particle config local && "
        f"particle login --username {q_email} --password {q_password}",
        "curl:",
        f"  curl -u particle:particle -d grant_type=password -d username={q_email} -d password={q_password} "
        f"{url}/oauth/token",
        "particle-api-js:",
        f"  node -e \"new (require('particle-api-js'))({{baseUrl:'{url}'}}).login({{username:'{email}',"
        f"password:'{password}'}}).then(r => console.log(r.body))\"",
        "",
        f"API reference: {url}/docs   Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


class QuietSignalsServer(uvicorn.Server):
    """
    uvicorn re-raises SIGINT/SIGTERM after shutting down, which ends the process with a signal status; we
    handle them ourselves so a requested stop is a clean exit 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True


@click.command()
@click.option("--host", default=None, help="HTTP address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="HTTP port (default 8080).")
@click.option("--admin-email", default=None, help="Email of the first account, created when none exists.")
@click.option("--admin-password", default=None, help="Its password (generated when omitted).")
@data_dir_option
def serve(
    host: str | None,
    port: int | None,
    admin_email: str | None,
    admin_password: str | None,
    data_dir: Path | None,
) -> None:
    """
    Start the server: creates the data dir and database on first run, and a first account if there is none.
    """
    settings = settings_from(
        http_host=host,
        http_port=port,
        admin_email=admin_email,
        admin_password=admin_password,
        data_dir=data_dir,
    )
    configure_logging(settings)

    async def main() -> None:
        runtime: Runtime = build_runtime(settings)
        await runtime.start()
        first = await runtime.ensure_first_account()
        created = (first[0].username, first[1]) if first else None
        config = uvicorn.Config(
            runtime.asgi_app(),
            host=settings.http_host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            lifespan="on",
            server_header=False,
        )
        server = QuietSignalsServer(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_exit)
        serving = asyncio.create_task(server.serve())
        # uvicorn exposes only a `started` flag (set once the socket listens), no event to await.
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if server.started:
            click.echo(banner(settings, created))
        await serving  # returns after a graceful shutdown, which also ran runtime.stop() via the lifespan
        if not server.started:
            raise click.ClickException(f"could not listen on {settings.http_host}:{settings.http_port}")

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
