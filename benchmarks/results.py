"""Result files of the benchmarks: ``benchmarks/results/NAME.json``, one per benchmark.

Every benchmark script ends with :func:`write_result`, which records, beside the figures, what
is needed to trust or redo them: the command as typed, the commit, the date, the machine, the
torch threads and the machine's load average before and after. ``render_tables.py`` turns the
files into the docs' tables, and ``tests/test_result_files.py`` checks that figures quoted in
the README and the docs agree with them.

A file holds::

    {"name": "time_to_quality", "command": "python benchmarks/time_to_quality.py ...",
     "commit": "<sha>", "date": "<ISO 8601>", "machine": {...}, "threads": 1,
     "load": {"before": [1, 5, 15 min], "after": [...]}, "source": "measured",
     "figures": {...}, "table": {...} (optional), "details": {...} (optional)}

``figures`` maps names to numbers, nested dicts of them, or figure objects
``{"value": v, "stderr": s, "unit": "nats", "decimals": 2, "label": "..."}``; a nested key
is written with dots (``vae.test_nll``). ``table`` (optional) lays them out as the docs show
them: ``{"columns": [...], "rows": [[cell, ...], ...]}``, where a cell's ``{key}`` is replaced
by that figure. ``details`` holds anything else (curves, raw timings); it is not rendered.
Figures measured before the result files existed were transcribed from the README; their
``source`` says so.
"""

from __future__ import annotations

import datetime as _datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, where the system has them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def current_commit() -> str | None:
    """The commit the working tree is at (with ``+dirty`` when it has uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty.strip() else "")


def machine() -> dict[str, Any]:
    """The machine in words: CPUs, platform, Python, torch and its device."""
    described: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "processor": platform.processor() or platform.machine(),
                                 "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        described["torch"] = torch.__version__
        if torch.cuda.is_available():
            described["gpu"] = torch.cuda.get_device_name(0)
    return described


def torch_threads() -> int | None:
    """The torch intra-op threads of this process (None when torch was never imported)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, with the script path relative to the repository."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(ROOT):
        argv[0] = str(script.relative_to(ROOT))
    return "python " + shlex.join(argv)


def begin() -> dict[str, Any]:
    """Call when a benchmark starts; pass the answer to :func:`write_result` as ``started``."""
    return {"date": _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds"),
            "load": load_average()}


def write_result(name: str, figures: dict[str, Any], *, started: dict[str, Any] | None = None,
                 table: dict[str, Any] | None = None, details: Any = None,
                 command: str | None = None, out_dir: Path | str | None = None) -> Path:
    """Write ``NAME.json`` (atomically) into ``out_dir`` (default ``benchmarks/results``)."""
    started = started or begin()
    result: dict[str, Any] = {
        "name": name, "command": command or command_line(), "commit": current_commit(),
        "date": started["date"], "machine": machine(), "threads": torch_threads(),
        "load": {"before": started["load"], "after": load_average()}, "source": "measured",
        "figures": figures}
    if table is not None:
        result["table"] = table
    if details is not None:
        result["details"] = details
    folder = Path(out_dir) if out_dir is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def read_results(folder: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Every result file of ``folder``, by name."""
    folder = Path(folder) if folder is not None else RESULTS
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(folder.glob("*.json"))}


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Figures by dotted key; a leaf is a number, a string or a figure object."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "value" not in value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _number(value: float | int, decimals: int | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    text = f"{value:,.{decimals}f}" if decimals is not None else (
        f"{value:,}" if isinstance(value, int) else f"{value:g}")
    return text.replace("-", "−")


def format_figure(figure: Any, unit: bool = False) -> str:
    """A figure as the docs quote it: ``−22.70 ± 0.19`` (with its unit when ``unit``).
    Negative numbers take the minus sign (−) the docs use."""
    if not isinstance(figure, dict):
        return _number(figure, None)
    decimals = figure.get("decimals")
    text = _number(figure["value"], decimals)
    if figure.get("stderr") is not None:
        text += " ± " + _number(figure["stderr"], decimals)
    if unit and figure.get("unit"):
        text += " " + figure["unit"]
    return text


#: Marks a table of quoted figures (README.md, docs pages) that tests/test_result_files.py checks.
HEADLINE_START, HEADLINE_END = "<!-- headline-figures -->", "<!-- /headline-figures -->"


def quoted_figure_mismatches(text: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """Disagreements between the headline tables of ``text`` and the result files.

    A row of a table between ``HEADLINE_START`` and ``HEADLINE_END`` quotes figures in its
    second cell and names their source in its last: ``` `NAME.json`: `key`, `key` ```. Each
    named figure, formatted as :func:`format_figure` does, must appear in the second cell."""
    problems = []
    for block in text.split(HEADLINE_START)[1:]:
        if HEADLINE_END not in block:
            problems.append("a headline table has no end marker " + HEADLINE_END)
            continue
        rows = [line for line in block.split(HEADLINE_END)[0].splitlines()
                if line.startswith("|") and not set(line) <= set("|-: ")]
        for row in rows[1:]:  # the first row is the header
            cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
            source = cells[-1]
            names = [token for token in _backticked(source) if token.endswith(".json")]
            if len(names) != 1:
                problems.append(f"row {row!r} names no result file (`NAME.json`: `key`)")
                continue
            name = names[0][:-len(".json")]
            keys = [token for token in _backticked(source) if not token.endswith(".json")]
            if name not in results:
                problems.append(f"row {row!r}: there is no benchmarks/results/{name}.json")
                continue
            figures = flatten(results[name].get("figures", {}))
            if not keys:
                problems.append(f"row {row!r} names no figure of {name}.json")
            for key in keys:
                if key not in figures:
                    problems.append(f"row {row!r}: {name}.json has no figure {key!r}")
                elif not re.search(r"(?<![\d.,])" + re.escape(format_figure(figures[key]))
                                   + r"(?![\d])", cells[1].replace("**", "")):
                    problems.append(f"row {row!r} quotes {cells[1]!r}, but {name}.json has "
                                    f"{key} = {format_figure(figures[key])}")
    return problems


def _backticked(text: str) -> list[str]:
    return text.split("`")[1::2]
