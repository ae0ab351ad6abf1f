"""
The import contracts catch every import docs/architecture.md says must not exist.

Each case adds one forbidden import to a copy of the source tree and runs lint-imports with the project's
configuration on it: the named contract must break. The cases are the holes the December 2026 architecture
review measured (its §W5), which the contracts of that time let through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

STORE = "store is below services and the adapters"
BUS = "bus is below services and the adapters"
PROTOCOL = "only the gateway speaks the device protocol"
SERVICES = "services see only interfaces, never adapters or concrete backends"
BACKENDS = "only runtime builds concrete backends"
CLI = "cli reaches backends and services only through runtime"
PORTS = "the gateway reaches services only through services.ports"


@pytest.fixture(scope="module")
def pristine_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("pristine") / "devicecloud"
    shutil.copytree(ROOT / "src" / "devicecloud", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def lint_imports(src: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        check=False,
        timeout=60,
    )
    return run.stdout + run.stderr


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("store/sql/devices.py", "devicecloud.api.app", STORE),
        ("store/sql/devices.py", "devicecloud.services.devices", STORE),
        ("bus/memory.py", "devicecloud.services.events", BUS),
        ("bus/memory.py", "devicecloud.store.interfaces", BUS),
        ("api/routes/devices.py", "devicecloud.protocol", PROTOCOL),
        ("webhooks/dispatcher.py", "devicecloud.protocol", PROTOCOL),
        ("services/devices.py", "devicecloud.settings", SERVICES),
        ("services/devices.py", "devicecloud.store.keyfiles", BACKENDS),
        ("cli/users.py", "devicecloud.store.sql", CLI),
        ("gateway/link.py", "devicecloud.services.devices", PORTS),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    pristine_tree: Path, tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    tree = tmp_path / "devicecloud"
    shutil.copytree(pristine_tree, tree)
    with (tree / module).open("a") as source:
        source.write(f"\nimport {forbidden}  # noqa\n")
    report = lint_imports(tmp_path)
    assert f"{contract} BROKEN" in report, report
    assert ", 1 broken." in report, report


def test_the_source_tree_keeps_every_contract(pristine_tree: Path) -> None:
    """The control case: the unchanged tree breaks nothing, so a broken contract above is the added import."""
    report = lint_imports(pristine_tree.parent)
    assert "0 broken." in report, report
