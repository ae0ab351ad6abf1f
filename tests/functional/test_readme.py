"""
The README stays true: its configuration table lists every setting, and its quick-start commands exist.
"""

from __future__ import annotations

import re
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
