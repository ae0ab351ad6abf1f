"""
``devicecloud virtual-device``: run one virtual Photon (or, ``--protocol udp``, a Gen3 device such as an
Argon) against a devicecloud server until Ctrl-C.

Steps, one printed line each: load the server's public key; load (or create and save) the device identity in
the state dir; unless ``--no-register``, log in (or use the token) and send the device's public key as
``particle keys send`` does; connect to the device gateway with Tinker's functions and the demo variables;
once connected (some servers let only online devices be claimed) claim and name the device; print the
``particle get/call`` lines to try; keep reconnecting until SIGINT/SIGTERM, which is a clean exit 0. An HTTP
failure ends the command with the server's ``error_description``.

The two protocols differ in their keys and port only: TCP (5683) uses RSA keys (the device's RSA-1024, the
server's ``server_key.pub.pem``); UDP/DTLS (5684) EC P-256 ones (the device's, registered as ``ecc``, and
the server's ``server_key_udp.pub.pem``, both written by ``serve`` on first start). A UDP device can sleep
and wake (``--sleep-after``, ``--sleep-for``): it keeps its DTLS session and resumes it without a handshake,
as a Gen3 device does after ``System.sleep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.protocol import ResponseStyle, load_public_key
from devicecloud.virtualdevice import (
    ApiError,
    CloudApi,
    DeviceIdentity,
    EcDeviceIdentity,
    IdentityError,
    VirtualDevice,
    load_or_create_ec_identity,
    load_or_create_identity,
)
from devicecloud.virtualdevice.updates import UpdateBehaviour

__all__ = ["virtual_device"]

STYLES = {"0x": ResponseStyle.PIGGYBACK, "2x": ResponseStyle.SEPARATE}
#: Per protocol: the gateway port, the server's public key file in its data dir, the default platform.
DEFAULT_PORTS = {"tcp": 5683, "udp": 5684}
SERVER_KEY_FILES = {"tcp": "server_key.pub.pem", "udp": "server_key_udp.pub.pem"}
DEFAULT_PLATFORMS = {"tcp": 6, "udp": 12}


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _read_server_key(path: Path, protocol: str) -> bytes | ec.EllipticCurvePublicKey:
    """The server's RSA public key PEM (TCP), or its EC P-256 public key (UDP)."""
    try:
        pem = path.read_bytes()
        if protocol == "tcp":
            load_public_key(pem)
            return pem
        key = serialization.load_pem_public_key(pem)
    except FileNotFoundError:
        raise click.ClickException(
            f"no server public key at {path}: start `devicecloud serve` (it writes "
            f"{SERVER_KEY_FILES[protocol]} in its data dir) or pass --server-key"
        ) from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot use {path} as the server public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise click.ClickException(
            f"{path} is not an EC P-256 public key: over UDP use the server's {SERVER_KEY_FILES['udp']}"
        )
    return key


@dataclass
class Registration:
    """The HTTP steps: the key before connecting (the gateway refuses unknown keys), claim and name after."""

    api_url: str
    token: str | None
    username: str | None
    password: str | None
    name: str | None

    def _api(self) -> CloudApi:
        return CloudApi(self.api_url, token=self.token)

    async def send_key(self, identity: DeviceIdentity | EcDeviceIdentity) -> None:
        algorithm = "ecc" if isinstance(identity, EcDeviceIdentity) else "rsa"
        async with self._api() as api:
            if self.token is None and self.username is not None and self.password is not None:
                self.token = await api.login(self.username, self.password)
                click.echo(f"Logged in to {self.api_url} as {self.username}")
            await api.send_public_key(identity.device_id, identity.public_key_pem(), algorithm)
        click.echo(f"Registered the device's public key ({algorithm}) with {self.api_url}")

    async def claim(self, device_id: str) -> None:
        async with self._api() as api:
            if await api.claim(device_id):
                click.echo(f"Claimed device {device_id}")
            else:
                click.echo(f"Device {device_id} is already yours")
            if self.name:
                await api.rename(device_id, self.name)
                click.echo(f"Named it {self.name}")


def try_lines(target: str) -> str:
    """The particle-cli lines worth trying against the demo device."""
    return "\n".join(
        [
            "Try:",
            f"  particle list {target}",
            f"  particle get {target} temperature",
            f"  particle get {target} uptime",
            f"  particle call {target} digitalwrite D7,HIGH",
            f"  particle get {target} led",
            f"  particle call {target} analogread A0",
            f"  particle nyan {target}",
            f"  particle flash {target} firmware.bin",
            "Stop with Ctrl-C.",
        ]
    )


@dataclass(frozen=True)
class SleepCycle:
    """UDP: stay awake ``awake`` seconds once connected, then sleep ``asleep`` seconds (session kept)."""

    awake: float
    asleep: float


async def _sleep_and_wake(device: VirtualDevice, cycle: SleepCycle, stop: asyncio.Event) -> None:
    """Until ``stop``: awake, asleep (silent, DTLS session kept), wake and resume without a handshake."""

    async def stopped_within(seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()

    while not await stopped_within(cycle.awake):
        if not device.connected:
            continue  # reconnecting: sleep only from an established session
        await device.sleep()
        click.echo(f"Sleeping for {cycle.asleep:g} s (DTLS session kept) …")
        if await stopped_within(cycle.asleep):
            return
        await device.wake()
        waking = asyncio.ensure_future(device.wait_connected())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waking, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not waking.done():
            waking.cancel()
            return
        if waking.exception() is None:
            click.echo("Awake and connected again.")


async def _run(
    device: VirtualDevice,
    identity: DeviceIdentity | EcDeviceIdentity,
    target: str,
    registration: Registration | None,
    cycle: SleepCycle | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if registration is not None:
        await registration.send_key(identity)
    click.echo(f"Connecting to the device gateway at {device.host}:{device.port} …")
    async with device:
        stopping = asyncio.ensure_future(stop.wait())
        connecting = asyncio.ensure_future(device.wait_connected())
        await asyncio.wait({stopping, connecting}, return_when=asyncio.FIRST_COMPLETED)
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            click.echo(f"Connected as {device.device_id}.")
            if registration is not None:
                await registration.claim(device.device_id)
            click.echo(try_lines(target))
        connecting.cancel()
        if cycle is not None:
            await _sleep_and_wake(device, cycle, stop)
        await stopping
    click.echo("Stopped.")


@click.command("virtual-device")
@click.option("--host", default="127.0.0.1", show_default=True, help="Device gateway address.")
@click.option(
    "--protocol",
    type=click.Choice(["tcp", "udp"]),
    default="tcp",
    show_default=True,
    help="tcp: a Photon (RSA keys); udp: a Gen3 device over DTLS (EC P-256 keys), e.g. an Argon.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Device gateway port (default 5683 for tcp, 5684 for udp).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    envvar="DEVICECLOUD_DATA_DIR",
    help="The server's data dir (for the default --server-key and --state-dir).",
)
@click.option(
    "--server-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Server public key PEM (default: <data-dir>/server_key.pub.pem, udp: server_key_udp.pub.pem).",
)
@click.option("--api-url", default="http://127.0.0.1:8080", show_default=True, help="The server's HTTP API.")
@click.option("--username", default=None, help="Account to register the device with (asks for the password).")
@click.option("--password", default=None, help="Its password.")
@click.option("--token", envvar="DEVICECLOUD_VD_TOKEN", default=None, help="Access token instead of a login.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=(
        "Where the device id and key live (default: <data-dir>/virtual-devices/<name, else 'default' or "
        "'default-udp'>)."
    ),
)
@click.option("--name", default=None, help="Device name to set after claiming.")
@click.option(
    "--platform-id",
    type=click.IntRange(0, 0xFFFF),
    default=None,
    help="tcp: 6 Photon (default), 8 P1, 0 Core; udp: 12 Argon (default), 13 Boron, 23 B SoM, 26 Tracker, "
    "32 P2 / Photon 2, 10 Electron.",
)
@click.option(
    "--style",
    type=click.Choice(sorted(STYLES)),
    default="2x",
    show_default=True,
    help="Response style: 0x piggy-backed (Device OS ≤ 1.4) or 2x separate responses.",
)
@click.option(
    "--late-setup",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help=(
        "Register the functions and variables only after connecting (right after the cloud's first Describe, "
        "at most SECONDS later), as Device OS 0.x does."
    ),
)
@click.option("--refuse-updates", is_flag=True, help="Refuse over-the-air updates (updates disabled).")
@click.option(
    "--drop-chunks",
    type=click.FloatRange(0, 1),
    default=0.0,
    metavar="SHARE",
    help="Lose this share of fast-OTA chunks on their first arrival (tests of the resend path).",
)
@click.option(
    "--disconnect-after-chunks",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Drop the connection once N chunks of an update have arrived.",
)
@click.option(
    "--sleep-after",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="udp: go to sleep SECONDS after connecting (and after each wake), keeping the DTLS session.",
)
@click.option(
    "--sleep-for",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="udp: how long each sleep lasts; the device then resumes its session without a handshake.",
)
@click.option("--no-register", is_flag=True, help="Skip key registration, claim and rename.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def virtual_device(
    host: str,
    protocol: str,
    port: int | None,
    data_dir: Path,
    server_key: Path | None,
    api_url: str,
    username: str | None,
    password: str | None,
    token: str | None,
    state_dir: Path | None,
    name: str | None,
    platform_id: int | None,
    style: str,
    late_setup: float | None,
    refuse_updates: bool,
    drop_chunks: float,
    disconnect_after_chunks: int | None,
    sleep_after: float | None,
    sleep_for: float,
    no_register: bool,
    log_level: str,
) -> None:
    """
    Run a virtual device (Tinker functions, demo variables) against a devicecloud server until Ctrl-C.

    --protocol udp makes it a Gen3 device (Argon by default) speaking DTLS to port 5684 with an EC P-256
    key. It takes over-the-air updates (particle flash) and keeps the last image in <state-dir>/firmware.bin.
    """
    if sleep_after is not None and protocol != "udp":
        raise click.UsageError("--sleep-after needs --protocol udp (only a DTLS session survives a sleep)")
    if password is not None and username is None:
        raise click.UsageError("--password needs --username")
    if not no_register and token is None and username is None:
        raise click.UsageError(
            "registering the device needs --token (or DEVICECLOUD_VD_TOKEN) or --username; "
            "pass --no-register if the key is already known to the server"
        )
    if not no_register and token is None and password is None:
        password = click.prompt(f"Password for {username}", hide_input=True)
    _configure_logging(log_level)
    udp = protocol == "udp"
    server_public = _read_server_key(server_key or data_dir / SERVER_KEY_FILES[protocol], protocol)
    state = state_dir or data_dir / "virtual-devices" / (name or ("default-udp" if udp else "default"))
    identity: DeviceIdentity | EcDeviceIdentity
    try:
        identity, created = load_or_create_ec_identity(state) if udp else load_or_create_identity(state)
    except (OSError, IdentityError) as exc:
        raise click.ClickException(f"cannot use the state dir {state}: {exc}") from exc
    how = "new identity saved in" if created else "identity loaded from"
    click.echo(f"Device {identity.device_id} ({how} {state})")
    if no_register:
        click.echo(
            f"Its public key is {state / 'device_key.pub.pem'}; if the server does not know it yet:\n"
            f"  devicecloud keys add {identity.device_id} {state / 'device_key.pub.pem'}"
        )
    registration = None if no_register else Registration(api_url, token, username, password, name)
    with asyncio.Runner() as runner:
        device = VirtualDevice(
            host,
            port if port is not None else DEFAULT_PORTS[protocol],
            device_id=identity.device_id,
            device_key=identity.private_key,
            server_public_key=server_public,
            platform_id=platform_id if platform_id is not None else DEFAULT_PLATFORMS[protocol],
            response_style=STYLES[style],
            demo=True,
            late_setup=late_setup,
            updates=UpdateBehaviour(
                enabled=not refuse_updates,
                drop_chunks=drop_chunks,
                disconnect_after_chunks=disconnect_after_chunks,
            ),
            firmware_path=state / "firmware.bin",
            protocol="udp" if udp else "tcp",
        )
        cycle = SleepCycle(sleep_after, sleep_for) if sleep_after is not None else None
        try:
            runner.run(_run(device, identity, name or identity.device_id, registration, cycle))
        except ApiError as exc:
            raise click.ClickException(str(exc)) from exc
