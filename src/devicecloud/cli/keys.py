"""
``devicecloud keys``: the server key devices need, and device keys (add, pending, approve).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicecloud.cli.common import data_dir_option, run_with_runtime, settings_from
from devicecloud.runtime import (
    Runtime,
    load_server_key,
    load_udp_server_key,
    server_key_slot_image,
    udp_server_key_slot_image,
)


@click.group()
def keys() -> None:
    """
    Server and device keys.
    """


@keys.command("server")
@click.option("--host", required=True, help="Address devices connect to: IPv4 or domain name.")
@click.option("--port", type=int, default=None, help="Device port (default 5683 for tcp, 5684 for udp).")
@click.option(
    "--protocol",
    type=click.Choice(["tcp", "udp"]),
    default="tcp",
    show_default=True,
    help="tcp: Photon, P1, Core (RSA, 512-byte slot); udp: Gen3 devices, Electron (EC, 320-byte slot).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the key slot here.")
@data_dir_option
def server(host: str, port: int | None, protocol: str, out: Path | None, data_dir: Path | None) -> None:
    """
    Print the server public key (PEM, for `particle keys server`) and write the device key-slot image.
    """
    settings = settings_from(data_dir=data_dir)
    udp = protocol == "udp"
    port = port if port is not None else (5684 if udp else 5683)
    key = load_udp_server_key(settings) if udp else load_server_key(settings)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            image = udp_server_key_slot_image(key, host, port)
        else:
            image = server_key_slot_image(key, host, port)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    target = out or settings.data_dir / ("server_key_udp_slot.bin" if udp else "server_key_slot.bin")
    target.write_bytes(image)
    click.echo(pem.decode().rstrip())
    click.echo(f"\nwrote the {len(image)}-byte server key slot for {host}:{port} to {target}")
    if udp:
        click.echo(
            "Give it to a Gen3 device in DFU mode with:\n"
            f"  particle keys server {settings.data_dir / 'server_key_udp.pub.pem'} --host {host}"
            f" --port {port} --protocol udp\n"
            f"or write it at DCT offset 3298 (the device's UDP server key slot)."
        )
        return
    click.echo(
        "Give it to a device in DFU mode with:\n"
        f"  particle keys server {settings.data_dir / 'server_key.pub.pem'} --host {host} --port {port}\n"
        f"or: dfu-util -d 2b04:d006 -a 1 -s 2082 -D {target}"
    )


@keys.command("add")
@click.argument("device_id")
@click.argument("public_key", type=click.File("rb"))
@data_dir_option
def add(device_id: str, public_key: BinaryIO, data_dir: Path | None) -> None:
    """
    Register DEVICE_ID's public key from a PEM or DER file ('-' reads standard input): RSA for TCP devices,
    EC P-256 for UDP devices (Gen3, Electron; the DER particle-cli's `keys send` uses).
    """
    raw = public_key.read()
    text = raw.decode("ascii", "replace") if raw.lstrip().startswith(b"-----") else raw.hex()

    async def action(runtime: Runtime) -> str:
        return await runtime.device_keys.add(device_id, text)

    registered = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"registered the key of {registered}")


@keys.command("pending")
@data_dir_option
def pending(data_dir: Path | None) -> None:
    """
    List unknown devices that tried to connect, with the key they offered.
    """

    async def action(runtime: Runtime) -> list[str]:
        return [
            f"{p.device_id}\tfrom {p.ip_address or '?'}\tattempts={p.attempts}\t"
            f"last={p.last_seen.isoformat(timespec='seconds')}"
            for p in await runtime.device_keys.pending()
        ]

    lines = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo("\n".join(lines) if lines else "no device is waiting for approval")


@keys.command("approve")
@click.argument("device_id")
@data_dir_option
def approve(device_id: str, data_dir: Path | None) -> None:
    """
    Accept the key DEVICE_ID offered; it connects on its next attempt.
    """

    async def action(runtime: Runtime) -> str:
        return await runtime.device_keys.approve(device_id)

    approved = run_with_runtime(settings_from(data_dir=data_dir), action)
    click.echo(f"approved {approved}; it will connect on its next attempt")
