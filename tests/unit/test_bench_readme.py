"""
bench/README.md's figures are generated from bench/results/ and a smoke run never replaces them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/report.py, imported as the benchmarks import it (bench/ on the path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("report")


@pytest.fixture
def results(report: ModuleType) -> ModuleType:
    """bench/_results.py, which records the figures."""
    return importlib.import_module("_results")


def test_the_readme_tables_are_what_the_results_files_give(report: ModuleType) -> None:
    """Every results block of the README is exactly its regenerated text: the two cannot drift apart."""
    readme = (BENCH / "README.md").read_text()
    assert report.render(readme, BENCH / "results") == readme, "run python bench/report.py"


def test_every_results_section_names_its_commit_and_date() -> None:
    for path in sorted((BENCH / "results").glob("*.json")):
        for name, section in json.loads(path.read_text())["sections"].items():
            assert {"title", "date", "commit", "dirty", "command", "columns", "rows"} <= section.keys(), name
            assert all(len(section["columns"]) == len(row) for row in section["rows"]), name


def test_a_block_without_results_is_refused(report: ModuleType) -> None:
    with pytest.raises(ValueError, match="differ"):
        report.render("<!-- results: nothing -->\n<!-- /results -->\n", BENCH / "results")


def test_a_smoke_run_records_outside_the_committed_results(
    results: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--smoke figures go to the smoke directory; bench/results and the README stay as they were."""
    monkeypatch.setattr(results, "SMOKE_DIR", tmp_path)
    before = {p.name: p.read_bytes() for p in (BENCH / "results").glob("*.json")}
    readme = (BENCH / "README.md").read_bytes()
    table = results.Table("t", ["a", "b"], [["1", "2"]])
    written = results.record("auth", {"runs": table}, smoke=True)
    assert tmp_path / "auth.json" == written
    recorded = json.loads(written.read_text())["sections"]["runs"]
    assert (["a", "b"], [["1", "2"]]) == (recorded["columns"], recorded["rows"])
    assert recorded["commit"]
    assert before == {p.name: p.read_bytes() for p in (BENCH / "results").glob("*.json")}
    assert readme == (BENCH / "README.md").read_bytes()
