"""Run the notebooks at full size and record what they print: ``notebooks/results/NAME.json``.

    python notebooks/run_full_size.py                  # every notebook (about 20 CPU-minutes)
    python notebooks/run_full_size.py 02_training_a_vae

Each notebook runs in a fresh Jupyter kernel with one torch thread and ``PYRO_VAE_SMOKE`` unset
(its full size). The result file holds every code cell's printed text, the time it took, the
commit and the machine's load, so that the figures a notebook's text quotes ("At full size ...")
can be checked against what it printed (``tests/test_notebook_figures.py``). The notebooks
themselves stay committed without outputs; the executed copy, pictures included, is written to
``notebooks/executed/NAME.ipynb``, which the docs render as the tutorials.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXECUTED = HERE / "executed"
#: Output types the executed copy keeps (a progress widget's state is not saved, so its
#: widget view is dropped and its text shown).
WIDGET = "application/vnd.jupyter.widget-view+json"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cell_texts(notebook: nbformat.NotebookNode) -> list[str]:
    """The printed text of every code cell (stream output and text/plain results), in order."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for output in cell.outputs:
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            elif "data" in output and "text/plain" in output["data"] \
                    and "image/png" not in output["data"]:
                parts.append(output["data"]["text/plain"])
        texts.append("".join(parts))
    return texts


def for_the_docs(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook without widget views (their state is not saved) and without
    per-cell execution timings, so that the docs render it as it ran."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET, None)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if o.get("output_type") != "display_data" or o.get("data")]
    notebook.metadata.pop("widgets", None)
    return notebook


def run(path: Path) -> tuple[dict, nbformat.NotebookNode]:
    env_before = {k: os.environ.get(k) for k in ("PYRO_VAE_SMOKE", "OMP_NUM_THREADS", "MPLBACKEND")}
    os.environ.pop("PYRO_VAE_SMOKE", None)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MPLBACKEND"] = "Agg"
    try:
        notebook = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            NotebookClient(notebook, timeout=1800, kernel_name="python3",
                           resources={"metadata": {"path": workdir}}).execute()
        seconds = time.perf_counter() - started
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {
        "notebook": path.name,
        "command": f"python notebooks/run_full_size.py {path.stem}",
        "commit": _commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": 1,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(seconds, 1),
        "outputs": cell_texts(notebook),
    }, notebook


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("[0-9]*.ipynb"))
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        path = HERE / f"{Path(name).stem}.ipynb"
        if not path.is_file():
            print(f"no notebook {path.name} in {HERE.name}/", file=sys.stderr)
            return 2
        print(f"running {path.name} at full size ...", flush=True)
        result, executed = run(path)
        EXECUTED.mkdir(exist_ok=True)
        nbformat.write(for_the_docs(executed), EXECUTED / path.name)
        target = RESULTS / f"{path.stem}.json"
        target.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                          encoding="utf-8")
        print(f"  {result['seconds']:.0f} s -> {target.relative_to(HERE.parent)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
