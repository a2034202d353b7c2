"""Render the docs' benchmark tables from the result files in benchmarks/results/.

For every ``benchmarks/results/NAME.json`` this writes
``docs/source/benchmarks/_generated/NAME.md`` (where the figures come from, then the result's
table, or a list of its figures), and ``_generated/catalogue.md`` with all of them, which the
docs' "All result files" page includes. A benchmark page includes its own table with

    ```{include} _generated/NAME.md
    ```

Run after a benchmark wrote or changed a result file (``--check`` only reports stale files and
exits 1 if there are any; the test suite runs it that way):

    python benchmarks/render_tables.py
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, ROOT, flatten, format_figure, read_results  # noqa: E402

GENERATED = ROOT / "docs" / "source" / "benchmarks" / "_generated"


def _cell(template: str, figures: dict[str, Any]) -> str:
    """A table cell: each ``{key}`` replaced by that figure; ``|`` escaped for Markdown."""
    text = str(template)
    for key, figure in figures.items():
        text = text.replace("{" + key + "}", format_figure(figure))
    missing = re.search(r"\{([A-Za-z0-9_.]+)\}", text)
    if missing:
        raise KeyError(f"a table cell names the figure {missing.group(1)!r}, which the result lacks")
    return text.replace("|", "\\|")


def _provenance(result: dict[str, Any]) -> str:
    machine = result.get("machine") or {}
    if isinstance(machine, dict):
        machine = ", ".join(f"{key}: {value}" for key, value in machine.items())
    load = result.get("load") or {}
    if isinstance(load, dict):
        load = "; ".join(f"{key}: {value}" for key, value in load.items() if value is not None)
    lines = [f"From `benchmarks/results/{result['name']}.json`.",
             "",
             f"- command: `{result.get('command')}`",
             f"- commit {result.get('commit')}, {result.get('date')}",
             f"- machine: {machine or 'not recorded'}; threads: {result.get('threads')}; "
             f"load average: {load or 'not recorded'}"]
    if result.get("source", "measured") != "measured":
        lines.append(f"- source: {result['source']}")
    return "\n".join(lines)


def _table(result: dict[str, Any]) -> str:
    figures = flatten(result.get("figures", {}))
    layout = result.get("table")
    if layout:
        columns = [str(column).replace("|", "\\|") for column in layout["columns"]]
        rows = [[_cell(cell, figures) for cell in row] for row in layout["rows"]]
    else:
        columns = ["figure", "value"]
        rows = [[(figure.get("label") if isinstance(figure, dict) else None) or f"`{key}`",
                 format_figure(figure, unit=True).replace("|", "\\|")]
                for key, figure in figures.items()]
    align = ["---"] + ["---:"] * (len(columns) - 1)
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    """The Markdown include file of one result."""
    return _provenance(result) + "\n\n" + _table(result) + "\n"


def rendered(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every generated file's name and text."""
    files = {f"{name}.md": render(result) for name, result in results.items()}
    catalogue = ["Every result file under `benchmarks/results/`, rendered by "
                 "`benchmarks/render_tables.py`.", ""]
    for name, result in results.items():
        catalogue += [f"## {name}", "", render(result)]
    files["catalogue.md"] = "\n".join(catalogue).rstrip() + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated file is stale")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(GENERATED))
    args = parser.parse_args(argv)
    out = Path(args.out)
    wanted = rendered(read_results(args.results))
    present = {path.name for path in out.glob("*.md")} if out.exists() else set()
    stale = sorted(name for name, text in wanted.items()
                   if name not in present or (out / name).read_text(encoding="utf-8") != text)
    extra = sorted(present - set(wanted))
    if args.check:
        for name in stale + extra:
            print(f"stale: {out / name} (run python benchmarks/render_tables.py)")
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).write_text(wanted[name], encoding="utf-8")
    for name in extra:
        (out / name).unlink()
    print(f"{len(wanted)} files in {out} ({len(stale)} written, {len(extra)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
