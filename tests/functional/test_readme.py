"""
The README stays true: its configuration table lists every setting, and its quick-start commands exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from devicecloud.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    """Each Settings field has a DEVICECLOUD_* row in the README, and no row names a setting that is gone."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `DEVICECLOUD_([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert {name.upper() for name in Settings.model_fields} == documented


def test_quick_start_commands_exist() -> None:
    """The two quick-start commands are the ones ./dev implements."""
    readme = (ROOT / "README.md").read_text()
    dev = (ROOT / "dev").read_text()
    assert "./dev serve" in readme
    assert "./dev test" in readme
    assert "  serve)" in dev
    assert "  test)" in dev


def test_the_virtual_device_command_lines_parse() -> None:
    """Every `devicecloud virtual-device …` line in the README (TCP and Gen3) is one the command accepts."""
    from devicecloud.cli.virtual_device import virtual_device

    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"^devicecloud virtual-device (.+)$", readme, flags=re.MULTILINE)
    assert any("--protocol udp" in line for line in lines), lines
    for line in lines:
        context = virtual_device.make_context("virtual-device", shlex.split(line))
        assert context.params["username"] == "you@example.com", line
