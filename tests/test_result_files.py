"""Figures in the docs come from result files (benchmarks/results/NAME.json).

Every result file records where its figures come from; the docs' generated benchmark tables are
what ``benchmarks/render_tables.py`` makes of the result files today; and every figure quoted
in a headline table (README.md, docs pages) equals the figure of the result file it names.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REQUIRED = ("name", "command", "commit", "date", "machine", "threads", "load", "figures")


def _load(name: str):
    """Import benchmarks/NAME.py (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


results = _load("results")
render_tables = _load("render_tables")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs" / "source").rglob("*.md"))]


def test_there_are_at_least_three_result_files():
    assert len(list(RESULTS.glob("*.json"))) >= 3


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_a_result_file_says_where_its_figures_come_from(path):
    result = json.loads(path.read_text(encoding="utf-8"))
    assert [key for key in REQUIRED if key not in result] == []
    assert result["name"] == path.stem
    assert result["command"] and result["commit"] and result["date"]
    assert results.flatten(result["figures"]), "a result file with no figures"
    assert result.get("source", "measured") == "measured" or \
        result["source"].startswith("transcribed from the README of commit ")


def test_the_generated_benchmark_tables_are_up_to_date():
    """``python benchmarks/render_tables.py`` was run after the last change of a result file."""
    assert render_tables.main(["--check"]) == 0


def test_the_readme_has_a_headline_table_checked_against_result_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split(results.HEADLINE_START, 1)[1].split(results.HEADLINE_END, 1)[0]
    assert block.count("`") >= 4 and ".json`" in block  # rows that name result files


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_figures_quoted_in_headline_tables_equal_their_result_files(path):
    text = path.read_text(encoding="utf-8")
    assert results.quoted_figure_mismatches(text, results.read_results()) == []


def test_a_quoted_figure_that_differs_from_its_result_file_is_caught():
    figures = {"x": {"value": -22.70, "stderr": 0.19, "decimals": 2}, "n": {"value": 6}}
    known = {"run": {"figures": figures}}
    table = ("{start}\n| figure | value | result |\n| --- | ---: | --- |\n"
             "| log p(x) | **{value}** nats | `run.json`: `x` |\n{end}\n")

    def check(value):
        return results.quoted_figure_mismatches(
            table.format(start=results.HEADLINE_START, end=results.HEADLINE_END, value=value),
            known)

    assert check("−22.70 ± 0.19") == []
    assert len(check("−22.71 ± 0.19")) == 1      # a stale figure
    assert len(check("−22.70 ± 0.20")) == 1      # a stale error bar
    unknown = table.replace("`x`", "`y`").format(
        start=results.HEADLINE_START, end=results.HEADLINE_END, value="−22.70 ± 0.19")
    assert len(results.quoted_figure_mismatches(unknown, known)) == 1  # a figure it lacks


def test_a_figure_is_formatted_as_the_docs_quote_it():
    assert results.format_figure({"value": -22.7, "stderr": 0.19, "decimals": 2}) == \
        "−22.70 ± 0.19"
    assert results.format_figure({"value": 93.44, "stderr": 0.25, "decimals": 2, "unit": "%"},
                                 unit=True) == "93.44 ± 0.25 %"
    assert results.format_figure({"value": 1064}) == "1,064"
