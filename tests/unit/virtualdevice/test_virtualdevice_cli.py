"""
``devicecloud virtual-device`` without a network: help, argument validation, and the server-key check.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devicecloud.cli.virtual_device import try_lines, virtual_device
from devicecloud.virtualdevice.updates import UpdateBehaviour


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_command_is_named_virtual_device() -> None:
    """The click command registers under the name the docs use."""
    assert "virtual-device" == virtual_device.name


def test_help_lists_the_options(runner: CliRunner) -> None:
    """--help documents every option the quick start mentions."""
    result = runner.invoke(virtual_device, ["--help"])
    assert 0 == result.exit_code
    for option in ("--host", "--port", "--server-key", "--api-url", "--token", "--state-dir", "--style"):
        assert option in result.output
    assert "--late-setup" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--style", "3x"], "Invalid value for '--style'"),
        (["--port", "0"], "Invalid value for '--port'"),
        (["--late-setup", "-1"], "Invalid value for '--late-setup'"),
        (["--password", "secret"], "--password needs --username"),
        ([], "needs --token"),
    ],
)
def test_bad_arguments_are_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    """Bad or missing arguments exit with status 2 and say what is wrong."""
    result = runner.invoke(virtual_device, args, env={"DEVICECLOUD_VD_TOKEN": None})
    assert 2 == result.exit_code
    assert message in result.output


def test_missing_server_key_says_how_to_get_one(runner: CliRunner, tmp_path: Path) -> None:
    """Without the server's public key the command stops before doing anything, pointing at `serve`."""
    result = runner.invoke(virtual_device, ["--no-register", "--data-dir", str(tmp_path)])
    assert 1 == result.exit_code
    assert "server_key.pub.pem" in result.output
    assert "devicecloud serve" in result.output
    assert not (tmp_path / "virtual-devices").exists()


def test_unreachable_api_is_a_readable_error(runner: CliRunner, tmp_path: Path) -> None:
    """A registration that cannot reach the API fails with one readable line, after saving the identity."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "server_key.pub.pem").write_bytes(pem)
    args = ["--data-dir", str(tmp_path), "--token", "t", "--api-url", "http://127.0.0.1:9", "--name", "bob"]
    result = runner.invoke(virtual_device, args)
    assert 1 == result.exit_code
    assert "could not register the device key (no answer)" in result.output
    assert (tmp_path / "virtual-devices" / "bob" / "device_id").exists()


def test_try_lines_name_the_device() -> None:
    """The hints are exact particle-cli commands for the demo functions and variables."""
    lines = try_lines("bob")
    assert "particle call bob digitalwrite D7,HIGH" in lines
    assert "particle get bob temperature" in lines


def test_late_setup_reaches_the_device(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--late-setup makes a device that registers its application after connecting, as 0.x firmware."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "server_key.pub.pem").write_bytes(pem)
    made: dict[str, object] = {}

    def capture(*args: object, **options: object) -> None:
        made.update(options)
        raise KeyboardInterrupt  # stop before connecting

    # The package's ``virtual_device`` is the command; the module is in sys.modules.
    monkeypatch.setattr(importlib.import_module(virtual_device.callback.__module__), "VirtualDevice", capture)
    args = ["--no-register", "--data-dir", str(tmp_path), "--style", "0x", "--late-setup", "2.5"]
    runner.invoke(virtual_device, args)
    assert 2.5 == made["late_setup"]


def test_update_faults_reach_the_device(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--refuse-updates, --drop-chunks and --disconnect-after-chunks; images go to the state dir."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "server_key.pub.pem").write_bytes(pem)
    made: dict[str, object] = {}

    def capture(*args: object, **options: object) -> None:
        made.update(options)
        raise KeyboardInterrupt  # stop before connecting

    monkeypatch.setattr(importlib.import_module(virtual_device.callback.__module__), "VirtualDevice", capture)
    args = ["--no-register", "--data-dir", str(tmp_path), "--name", "bob", "--refuse-updates"]
    runner.invoke(virtual_device, [*args, "--drop-chunks", "0.25", "--disconnect-after-chunks", "9"])
    assert UpdateBehaviour(enabled=False, drop_chunks=0.25, disconnect_after_chunks=9) == made["updates"]
    assert tmp_path / "virtual-devices" / "bob" / "firmware.bin" == made["firmware_path"]
