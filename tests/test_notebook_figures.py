"""What a notebook's text quotes from a full-size run is what it printed at full size.

``python notebooks/run_full_size.py`` records each notebook's printed output in
``notebooks/results/NAME.json``; a markdown line starting "At full size" may quote only decimal
figures found in that output. Each notebook also says at its top what it teaches, its time at
full size and what to observe.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9]*.ipynb"))
DECIMAL = re.compile(r"[−-]?\d+\.\d+")
HEADER_LABELS = ("**What you will learn:**", "**Time at full size:**", "**What to observe:**")


def _normalize(text: str) -> str:
    return text.replace("−", "-")


def quoted_figures(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(figure, line) for every decimal figure on a markdown line starting 'At full size'."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip("> *_").lower().startswith("at full size"):
                found += [(_normalize(m), line) for m in DECIMAL.findall(line)]
    return found


def missing_figures(notebook: nbformat.NotebookNode, outputs: list[str]) -> list[str]:
    printed = _normalize("\n".join(outputs))
    return [f"{figure} (in: {line.strip()})" for figure, line in quoted_figures(notebook)
            if figure not in printed and figure.lstrip("-") not in printed]


def test_the_checker_catches_a_stale_figure():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "At full size the run prints log p(x) −23.05 and 5 of 8 units.")])
    assert missing_figures(notebook, ["test log p(x) -23.05 ± 0.19"]) == []
    assert missing_figures(notebook, ["test log p(x) -22.95 ± 0.19"]) != []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_says_what_it_teaches(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "markdown"
    for label in HEADER_LABELS:
        assert label in first.source, f"{path.name}: its first cell lacks {label}"
    minutes = re.search(r"\*\*Time at full size:\*\*\s*about\s*(\d+)\s*minute", first.source)
    assert minutes and int(minutes.group(1)) <= 5, f"{path.name}: time at full size ≤ 5 min"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_quoted_figures_are_what_the_notebook_printed_at_full_size(path):
    result_file = NOTEBOOKS_DIR / "results" / f"{path.stem}.json"
    assert result_file.is_file(), (f"{result_file.name} is missing: run python "
                                   f"notebooks/run_full_size.py {path.stem}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    notebook = nbformat.read(path, as_version=4)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    assert len(result["outputs"]) == code_cells, (
        f"{path.name} has changed since its full-size run: run python "
        f"notebooks/run_full_size.py {path.stem}")
    missing = missing_figures(notebook, result["outputs"])
    assert not missing, f"{path.name} quotes figures it did not print at full size: {missing}"
