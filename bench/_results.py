"""
Results files: each benchmark section's table with the commit, dirtiness and date of the run it came from.

A full run merges the sections it measured into ``bench/results/<benchmark>.json`` (a section that was not
run, or failed, keeps its recorded figures) and regenerates bench/README.md's tables (``report.py``). A
``--smoke`` run's figures mean nothing: they go to a temporary directory, never over the committed ones.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import report

REPO = report.BENCH_DIR.parent
SMOKE_DIR = Path(tempfile.gettempdir()) / "devicecloud-bench-smoke"


@dataclass(frozen=True)
class Table:
    """
    A section's figures as the README shows them: a title, the column names and rows of text cells.
    """

    title: str
    columns: list[str]
    rows: list[list[str]]


def git_state() -> tuple[str, bool]:
    """
    The short commit and whether tracked files differ from it (the results files and README excepted:
    recording one section must not mark the next as dirty).
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!bench/results", ":!bench/README.md"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return commit, bool(changes)


def record(benchmark: str, tables: dict[str, Table], *, smoke: bool) -> Path | None:
    """
    Merge ``tables`` (section → table) into the benchmark's results file; the path written, or None.
    """
    if not tables:
        return None
    directory = SMOKE_DIR if smoke else report.RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{benchmark}.json"
    results: dict[str, Any] = {"benchmark": benchmark, "sections": {}}
    if path.exists() and not smoke:
        results = json.loads(path.read_text())
    commit, dirty = git_state()
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "command": shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    for section, table in tables.items():
        results["sections"][section] = {"title": table.title, **meta, "columns": table.columns,
                                        "rows": table.rows}  # fmt: skip
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(f"results: {path}")
    if not smoke:
        report.main([])
    return path
