"""
Rewrite the results blocks of bench/README.md from the results files in bench/results/.

Each benchmark's figures live in ``bench/results/<name>.json``: one entry per section, each with the
commit (and whether the tree was dirty), the date and the command of the run that produced it, and its
table. In the README everything between ``<!-- results: <name> -->`` and ``<!-- /results -->`` is
generated from that file, so the README shows exactly the last recorded figures; git keeps the history.

    python bench/report.py           # rewrite the blocks
    python bench/report.py --check   # change nothing; exit 1 when the README differs from its results

A full benchmark run records its sections and calls this itself; a ``--smoke`` run records nothing here.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
README = BENCH_DIR / "README.md"
RESULTS_DIR = BENCH_DIR / "results"
BLOCK = re.compile(
    r"(?P<open><!-- results: (?P<name>\w+) -->\n)(?P<body>.*?)(?P<close><!-- /results -->)", re.DOTALL
)


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---"] + ["---:"] * (len(columns) - 1)
    return "\n".join([line(columns), "| " + " | ".join(align) + " |", *(line(row) for row in rows)])


def render_section(section: dict[str, Any]) -> str:
    when = datetime.fromisoformat(section["date"]).strftime("%Y-%m-%d %H:%M UTC")
    tree = f"`{section['commit']}`" + (" plus uncommitted changes" if section["dirty"] else "")
    machine = f" on {section['machine']}" if section.get("machine") else ""
    source = f"Commit {tree}, {when}{machine}: `{section['command']}`."
    if section.get("note"):
        source += " " + section["note"]
    return f"#### {section['title']}\n\n{source}\n\n{markdown_table(section['columns'], section['rows'])}\n"


def render_results(results: dict[str, Any]) -> str:
    return "\n".join(render_section(section) for section in results["sections"].values())


def render(readme: str, results_dir: Path) -> str:
    """
    The README with every results block regenerated; a block without a results file, or a results file
    without a block, is an error (either would let the two drift apart).
    """
    names = {m["name"] for m in BLOCK.finditer(readme)}
    files = {path.stem for path in results_dir.glob("*.json")}
    if names != files:
        raise ValueError(f"results blocks {sorted(names)} and results files {sorted(files)} differ")

    def fill(match: re.Match[str]) -> str:
        results = json.loads((results_dir / f"{match['name']}.json").read_text())
        return f"{match['open']}\n{render_results(results)}\n{match['close']}"

    return BLOCK.sub(fill, readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs; write nothing")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = render(current, RESULTS_DIR)
    if args.check:
        if wanted != current:
            print("bench/README.md differs from bench/results/: run python bench/report.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        README.write_text(wanted)
        print(f"rewrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
