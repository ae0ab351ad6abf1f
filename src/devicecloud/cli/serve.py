"""
``devicecloud serve``: run the HTTP API and the device gateway (either can run alone) until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import structlog
import uvicorn

from devicecloud.cli.common import data_dir_option, new_event_loop, settings_from
from devicecloud.cli.demo_device import DemoDevice, start_demo_device
from devicecloud.cli.supervisor import (
    Supervisor,
    die_with_parent,
    watch_supervisor,
    worker_command,
    worker_environment,
)
from devicecloud.clock import SystemClock
from devicecloud.heap import CollectionPacer, FrozenHeap
from devicecloud.httpserver import HttpLimits, guarded_protocol, plan_descriptors, raise_descriptor_limit
from devicecloud.runtime import Runtime, build_runtime, configure_logging
from devicecloud.settings import Settings

logger = structlog.get_logger("devicecloud.serve")

# What `devicecloud virtual-device` assumes when it is given no --api-url or --data-dir.
VIRTUAL_DEVICE_API_URL = "http://127.0.0.1:8080"
VIRTUAL_DEVICE_DATA_DIR = Path("data")


def launcher() -> str:
    """
    How the person reading the banner runs a devicecloud command: ``./dev`` from a clone (nothing is on PATH
    there), else ``devicecloud`` when it is on PATH, else this interpreter's ``-m devicecloud``.
    """
    root = Path(__file__).resolve().parents[3]
    dev = root / "dev"
    if dev.is_file() and (root / "pyproject.toml").is_file() and (root / "src" / "devicecloud").is_dir():
        try:
            return f"./{dev.relative_to(Path.cwd())}"
        except ValueError:
            return shlex.quote(str(dev))
    if shutil.which("devicecloud"):
        return "devicecloud"
    return f"{shlex.quote(sys.executable)} -m devicecloud"


def virtual_device_line(
    settings: Settings, device_port: int, q_email: str, q_password: str, *, udp: bool = False
) -> str:
    """
    The exact ``virtual-device`` command that registers with this server: its API and data dir when not the
    command's defaults, and its gateway (``udp``: a Gen3 device on the UDP port).
    """
    words = [launcher(), "virtual-device"]
    words += ["--protocol", "udp", "--port", str(device_port)] if udp else ["--port", str(device_port)]
    if settings.device_host not in ("0.0.0.0", "::", "127.0.0.1"):  # noqa: S104 - comparing, not binding
        words += ["--host", shlex.quote(settings.device_host)]
    url = settings.effective_public_url
    if url != VIRTUAL_DEVICE_API_URL:
        words += ["--api-url", shlex.quote(url)]
    data_dir = settings.data_dir.resolve()
    if data_dir != VIRTUAL_DEVICE_DATA_DIR.resolve():
        words += ["--data-dir", shlex.quote(str(data_dir))]
    words += ["--username", q_email, "--password", q_password, "--name", "my-argon" if udp else "my-device"]
    return " ".join(words)


def banner(
    settings: Settings,
    created: tuple[str, str] | None,
    *,
    device_port: int | None,
    demo: DemoDevice | None,
    udp_port: int | None = None,
) -> str:
    """
    What to try first: the account, and exact particle-cli, particle-api-js and curl lines. ``udp_port``: the
    UDP/DTLS gateway's port when it runs.
    """
    url = settings.effective_public_url
    lines = [f"devicecloud API on {url}  (data: {settings.data_dir.resolve()})"]
    if device_port is not None:
        lines.append(f"device gateway on {settings.device_host}:{device_port} (TCP: Photon, P1, Core)")
    if udp_port is not None:
        lines.append(
            f"device gateway on {settings.device_host}:{udp_port} (UDP/DTLS: Gen3 devices, Electron)"
        )
    lines.append("")
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
    ]
    if demo is not None:
        lines += [
            f"A demo virtual device is connected as {demo.name!r}"
            + (f" (owned by {demo.owner}):" if demo.owner else ":"),
            f"  particle list   particle call {demo.name} digitalwrite D7,HIGH"
            f"   particle get {demo.name} temperature",
        ]
    if device_port is not None:
        lines += [
            "Connect another virtual device:",
            f"  {virtual_device_line(settings, device_port, q_email, q_password)}",
        ]
        if udp_port is not None:
            lines += [
                "Or a Gen3 one (an Argon, over UDP/DTLS):",
                f"  {virtual_device_line(settings, udp_port, q_email, q_password, udp=True)}",
            ]
        lines.append("")
    lines.append(f"API reference: {url}/docs   Stop with Ctrl-C.")
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
@click.option("--device-port", type=int, default=None, help="Device gateway TCP port (default 5683).")
@click.option(
    "--only",
    type=click.Choice(["api", "devices"]),
    default=None,
    help="Run only the HTTP API or only the device gateway (default: both in one process).",
)
@click.option("--admin-email", default=None, help="Email of the first account, created when none exists.")
@click.option("--admin-password", default=None, help="Its password (generated when omitted).")
@click.option(
    "--demo-device/--no-demo-device",
    default=None,
    help="Run a demo virtual device owned by the first account (default on; DEVICECLOUD_DEMO_DEVICE).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    envvar="DEVICECLOUD_WORKERS",
    show_default=True,
    help="Worker processes sharing the HTTP and device ports (SO_REUSEPORT); more than one needs "
    "DEVICECLOUD_BUS_URL=nats://… (DEVICECLOUD_WORKERS).",
)
@click.option("--worker", "is_worker", is_flag=True, hidden=True, help="Run as one worker of `--workers N`.")
@data_dir_option
def serve(
    host: str | None,
    port: int | None,
    device_port: int | None,
    only: str | None,
    admin_email: str | None,
    admin_password: str | None,
    demo_device: bool | None,
    workers: int,
    is_worker: bool,
    data_dir: Path | None,
) -> None:
    """
    Start the server: creates the data dir and database on first run, and a first account if there is none.
    """
    if is_worker:
        die_with_parent()  # first: a worker must not outlive its supervisor, even while it starts
    settings = settings_from(
        http_host=host,
        http_port=port,
        device_port=device_port,
        admin_email=admin_email,
        admin_password=admin_password,
        demo_device=demo_device,
        data_dir=data_dir,
        node_id=worker_node_id() if is_worker else None,
    )
    configure_logging(settings)
    if workers > 1 and not is_worker:
        supervise(settings, workers=workers, only=only)
        return
    run_api, run_devices = only != "devices", only != "api"
    settings, http_connections = share_descriptors(settings, run_api=run_api, run_devices=run_devices)

    async def main() -> None:
        runtime: Runtime = build_runtime(settings)
        structlog.contextvars.bind_contextvars(node=runtime.node.node_id)  # every log line names the node
        await runtime.start()
        # A worker's supervisor created the first account and prints the banner.
        first = None if is_worker else await runtime.ensure_first_account()
        created = (first[0].username, first[1]) if first else None
        demo: DemoDevice | None = None
        if run_devices:
            try:
                await runtime.start_gateway()
            except OSError as exc:
                await runtime.stop()
                message = f"could not listen for devices on port {settings.device_port}: {exc}"
                raise click.ClickException(message) from exc
            if settings.demo_device:
                demo = await start_demo_device(runtime)
        # Both halves deliver webhooks: each subscribes to its own process's events and they share the outbox.
        await runtime.start_webhooks()
        # A process-wide policy, so only the serving process installs it (decision 0028).
        loop = asyncio.get_running_loop()
        heap = FrozenHeap(
            settings.heap_sweep_growth, settings.heap_sweep_interval, schedule=loop.call_soon_threadsafe
        )
        if settings.heap_freeze:
            heap.install()
        # Young collections on a timer: an idle fleet churns without net growth, which the collector's own
        # trigger waits for while the young generations grow (decision 0034).
        # Under the frozen heap a full collection scans only what survived since the last: one every 2 s too.
        full_every = 20 if settings.heap_freeze else 0
        young = settings.heap_young_interval
        pacer = CollectionPacer(loop.call_later, young, full_every=full_every) if young else None
        if pacer is not None:
            pacer.start()
        stop = asyncio.Event()
        # The supervisor died (SIGKILL): the same drain as SIGTERM, through the handlers installed below.
        unwatch = watch_supervisor(loop, lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            if run_api:
                await serve_api(runtime, settings, http_connections, created, demo, loop, quiet=is_worker)
            else:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, stop.set)
                if not is_worker:
                    click.echo(
                        banner(
                            settings,
                            created,
                            device_port=runtime.gateway_port,
                            demo=demo,
                            udp_port=runtime.gateway.udp_port,
                        )
                    )
                await stop.wait()
        finally:
            if unwatch is not None:
                unwatch()
            if demo is not None:
                await demo.device.stop()
            await runtime.stop()
            if pacer is not None:
                pacer.stop()
            heap.uninstall()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


def share_descriptors(settings: Settings, *, run_api: bool, run_devices: bool) -> tuple[Settings, int]:
    """
    Raise the descriptor limit and share it: the gateway keeps its links (fewer, said aloud, when the limit is
    too low for them), HTTP gets its cap. Returns the settings the runtime should use and the HTTP cap.
    """
    plan = plan_descriptors(
        raise_descriptor_limit(),
        reserve=settings.descriptor_reserve,
        device_links=settings.max_device_links,
        http_connections=settings.http_max_connections,
        serve_http=run_api,
        serve_devices=run_devices,
    )
    # Said aloud when the operator asked for more than fits; a default that is cut is only logged, so the
    # quick start on a machine with a modest hard limit prints no warning.
    asked = {"max_device_links", "http_max_connections"} & settings.model_fields_set
    if plan.shortfall is not None and asked:
        click.echo(f"warning: {plan.shortfall}", err=True)
    elif plan.shortfall is not None:
        logger.info("descriptor limit shared", detail=plan.shortfall)
    if run_devices and plan.device_links != settings.max_device_links:
        settings = settings.model_copy(update={"max_device_links": max(plan.device_links, 1)})
    return settings, plan.http_connections


async def serve_api(
    runtime: Runtime,
    settings: Settings,
    http_connections: int,
    created: tuple[str, str] | None,
    demo: DemoDevice | None,
    loop: asyncio.AbstractEventLoop,
    *,
    quiet: bool = False,
) -> None:
    """
    Run uvicorn until a stop signal, then drain: the device port closes at once (new devices go to another
    process on the port), HTTP stops accepting and lets the calls in flight finish within the drain timeout;
    the caller then stops the runtime, which closes the device links. The runtime's life stays with
    the caller.
    """
    app = runtime.asgi_app(manage_lifecycle=False)
    limits = HttpLimits(
        head_timeout=settings.http_head_timeout,
        body_timeout=settings.http_body_timeout,
        max_connections=http_connections,
        max_connections_per_ip=settings.http_max_connections_per_ip,
        proxy_protocol_from=tuple(settings.http_proxy_protocol),
        proxy_header_timeout=settings.proxy_protocol_timeout,
    )
    http = guarded_protocol(limits, SystemClock())
    runtime.metrics.watch_http(http.book)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        server_header=False,
        proxy_headers=False,  # the app believes X-Forwarded-For only from DEVICECLOUD_TRUSTED_PROXIES
        # Read deadlines and connection caps (ADR 0011); no WebSocket routes, so no upgrades to follow.
        http=http,
        ws="none",
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout),
    )
    server = QuietSignalsServer(config)
    draining: list[asyncio.Task[None]] = []

    def request_exit() -> None:
        if runtime.gateway_started and not draining:
            draining.append(loop.create_task(runtime.gateway.stop_accepting()))
        # Open event streams never end by themselves: end them, or uvicorn would wait for them forever.
        app.state.event_streams.close_all()
        server.request_exit()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_exit)
    sockets = [shared_socket(settings.http_host, settings.http_port)] if settings.reuse_port else None
    serving = asyncio.create_task(server.serve(sockets=sockets))
    # uvicorn exposes only a `started` flag (set once the socket listens), no event to await.
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started and not quiet:
        device_port = runtime.gateway_port if runtime.gateway_started else None
        udp_port = runtime.gateway.udp_port if runtime.gateway_started else None
        click.echo(banner(settings, created, device_port=device_port, demo=demo, udp_port=udp_port))
    await serving
    await asyncio.gather(*draining)
    if not server.started:
        raise click.ClickException(f"could not listen on {settings.http_host}:{settings.http_port}")


def shared_socket(host: str, port: int) -> socket.socket:
    """
    The HTTP listening socket of one worker: SO_REUSEPORT, so every worker binds the same port. Raises a
    usage error when the address is taken by a process that does not share it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"could not listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(False)
    return sock


def worker_node_id() -> str | None:
    """
    A worker's node id: ``<configured id>-w<index>`` when the operator configured one, else generated.
    """
    prefix = os.environ.get("DEVICECLOUD_NODE_ID_PREFIX")
    if not prefix:
        return None
    return f"{prefix[:60]}-w{os.environ.get('DEVICECLOUD_WORKER_INDEX', '0')}"


def supervise(settings: Settings, *, workers: int, only: str | None) -> None:
    """
    ``serve --workers N``: prepare once (schema, server key, first account), then run N workers under a
    supervisor until SIGINT/SIGTERM (decision 0024).
    """
    if settings.bus_url.startswith("memory://"):
        raise click.ClickException(
            f"--workers {workers} needs a shared event bus: with the in-process bus (memory://) an event "
            "published in one worker never reaches the event streams, devices and webhooks of the others, "
            "and a call for a device linked to another worker answers that it is offline. Run NATS with "
            "JetStream and set DEVICECLOUD_BUS_URL=nats://host:4222, or use --workers 1."
        )
    if settings.http_port == 0 or settings.device_port == 0:
        raise click.ClickException(f"--workers {workers} needs fixed ports: 0 would give each worker its own")

    async def prepare() -> tuple[str, str] | None:
        runtime = build_runtime(settings)  # creates the server key once, before the workers read it
        await runtime.start()  # the schema, before N processes would race to migrate it
        try:
            first = await runtime.ensure_first_account()
        finally:
            await runtime.stop()
        return (first[0].username, first[1]) if first else None

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        created = runner.run(prepare())
        supervisor = Supervisor(
            worker_command(
                host=settings.http_host,
                port=settings.http_port,
                device_port=settings.device_port,
                data_dir=str(settings.data_dir.resolve()),
                only=only,
            ),
            workers=workers,
            env=worker_environment(settings.node_id, demo_device=settings.demo_device and only != "api"),
            grace=settings.drain_timeout + 10,
        )
        device_port = settings.device_port if only != "api" else None
        udp_port = settings.device_udp_port if only != "api" and settings.device_udp_enabled else None
        click.echo(banner(settings, created, device_port=device_port, demo=None, udp_port=udp_port))
        if settings.demo_device and only != "api":
            click.echo(
                "Worker 0 runs the demo virtual device ('demo'): particle list shows it once it is up."
            )
        click.echo(f"{workers} workers share these ports; Ctrl-C or SIGTERM to this process stops them all.")
        runner.run(supervisor.run())
