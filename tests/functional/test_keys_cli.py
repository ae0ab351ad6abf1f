"""
``devicecloud keys``: the server key slot for devices, and device keys added, pending and approved.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.support.clock import FakeClock
from tests.support.devices import virtual_device, wait_until

from devicecloud.cli import main
from devicecloud.protocol.keyslot import server_key_slot
from devicecloud.runtime import Runtime
from devicecloud.store.keyfiles import load_or_create_udp_server_key
from devicecloud.virtualdevice import VirtualDevice, generate_identity

FAST = {
    "DEVICECLOUD_PASSWORD_TIME_COST": "1",
    "DEVICECLOUD_PASSWORD_MEMORY_COST": "8",
    "DEVICECLOUD_PASSWORD_PARALLELISM": "1",
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'devicecloud.db'}"


async def cli(runtime: Runtime, *args: str) -> Result:
    """
    Run the CLI against the running test server's data dir and database (in a thread: it runs its own loop).
    """
    env = {
        **FAST,
        "DEVICECLOUD_DATA_DIR": str(runtime.settings.data_dir),
        "DEVICECLOUD_DATABASE_URL": runtime.settings.effective_database_url,
    }
    return await asyncio.to_thread(CliRunner(env=env).invoke, main, list(args))


def test_server_key_slot(tmp_path: Path) -> None:
    """keys server prints the public PEM and writes the 512-byte slot for the given address."""
    out = tmp_path / "slot.bin"
    result = CliRunner(env={"DEVICECLOUD_DATA_DIR": str(tmp_path / "data")}).invoke(
        main, ["keys", "server", "--host", "10.0.0.7", "--port", "5700", "--out", str(out)]
    )
    assert 0 == result.exit_code, result.output
    assert result.output.startswith("-----BEGIN PUBLIC KEY-----")
    public = (tmp_path / "data" / "server_key.pub.pem").read_bytes()
    der = serialization.load_pem_public_key(public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert server_key_slot(der, "10.0.0.7", 5700) == out.read_bytes()


def test_udp_server_key_slot(tmp_path: Path) -> None:
    """keys server --protocol udp writes the 320-byte Gen3 slot: EC SPKI padded to 192, address, port."""
    result = CliRunner(env={"DEVICECLOUD_DATA_DIR": str(tmp_path / "data")}).invoke(
        main, ["keys", "server", "--host", "cloud.example.com", "--protocol", "udp"]
    )
    assert 0 == result.exit_code, result.output
    assert "--protocol udp" in result.output
    public = (tmp_path / "data" / "server_key_udp.pub.pem").read_bytes()
    der = serialization.load_pem_public_key(public).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    image = (tmp_path / "data" / "server_key_udp_slot.bin").read_bytes()
    assert 320 == len(image)
    assert der == image[: len(der)]
    assert b"\xff" * (192 - len(der)) == image[len(der) : 192]
    assert bytes([1, 17]) + b"cloud.example.com" == image[192 : 192 + 19]
    assert b"\xff\xff" == image[258:260]  # the default port, 5684


def test_server_key_slot_refuses_ipv6(tmp_path: Path) -> None:
    """An address a TCP device cannot use is a usage error."""
    result = CliRunner(env={"DEVICECLOUD_DATA_DIR": str(tmp_path)}).invoke(
        main, ["keys", "server", "--host", "::1"]
    )
    assert 2 == result.exit_code


async def test_pending_then_approved(
    runtime: Runtime, client: httpx.AsyncClient, tmp_path: Path, clock: FakeClock
) -> None:
    """An unknown device is refused and listed by keys pending; keys approve lets it connect."""
    identity = generate_identity()
    device = virtual_device(runtime, identity)
    await device.start()

    async def pending() -> bool:
        clock.advance(1.0)  # offered keys are written behind, with the next flush
        return bool(await runtime.device_keys.pending())

    await wait_until(pending)
    await device.stop()
    listed = await cli(runtime, "keys", "pending")
    assert listed.output.startswith(f"{identity.device_id}\tfrom 127.0.0.1")
    approved = await cli(runtime, "keys", "approve", identity.device_id)
    assert (0, f"approved {identity.device_id}; it will connect on its next attempt\n") == (
        approved.exit_code,
        approved.output,
    )
    await device.start()
    await device.wait_connected(10)
    await device.stop()
    assert "no device is waiting for approval\n" == (await cli(runtime, "keys", "pending")).output


async def test_keys_add(runtime: Runtime, tmp_path: Path) -> None:
    """keys add registers a PEM file; the device then connects; a bad key is a clean error."""
    identity = generate_identity()
    pem = tmp_path / "device.pub.pem"
    pem.write_text(identity.public_key_pem())
    added = await cli(runtime, "keys", "add", identity.device_id, str(pem))
    assert (0, f"registered the key of {identity.device_id}\n") == (added.exit_code, added.output)
    async with virtual_device(runtime, identity) as device:
        await device.wait_connected(10)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    refused = await cli(runtime, "keys", "add", identity.device_id, str(junk))
    assert (1, "Error: publicKey is not a readable public key\n") == (refused.exit_code, refused.output)


async def test_keys_add_takes_an_ec_key_in_der_and_the_udp_device_connects(
    runtime: Runtime, tmp_path: Path
) -> None:
    """A Gen3 EC P-256 key, as the DER particle-cli sends, registers; the device connects over UDP."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = tmp_path / "argon.pub.der"
    der.write_bytes(key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    device_id = "e00fce680123456789abcdef"
    added = await cli(runtime, "keys", "add", device_id, str(der))
    assert (0, f"registered the key of {device_id}\n") == (added.exit_code, added.output)
    device = VirtualDevice(
        "127.0.0.1",
        runtime.gateway.udp_port or 0,
        device_id=device_id,
        device_key=key,
        server_public_key=load_or_create_udp_server_key(runtime.settings.data_dir).public_key(),
        platform_id=13,
        protocol="udp",
        reconnect=False,
    )
    try:
        await device.start()
        await device.wait_connected(10)
    finally:
        await device.stop()
