"""The first quick-start command's run: ``pyro-vae train`` with no recipe (the 8×8 digits).

    python benchmarks/default_run.py

Trains the default recipe (``Config()``, 200 epochs) into a temporary folder through the
command line and records its test ELBO, log p(x) (K = 5000) with both error bars and its
active units in ``benchmarks/results/default_run.json`` (benchmarks/results.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)

from pyro_vae.cli import main  # noqa: E402


def _figure(value: float, label: str, stderr: float | None = None, decimals: int = 2,
            unit: str | None = "nats") -> dict:
    figure = {"value": round(value, decimals), "decimals": decimals, "label": label}
    if stderr is not None:
        figure["stderr"] = round(stderr, decimals)
    if unit:
        figure["unit"] = unit
    return figure


def run() -> int:
    started = result_files.begin()
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        code = main(["train", "--out", str(Path(folder) / "run")])
        if code:
            return code
        summary = json.loads((Path(folder) / "run" / "summary.json").read_text())
    figures = {
        "test_elbo": _figure(summary["test_elbo"], "test ELBO", summary["test_elbo_stderr"]),
        "test_log_likelihood": _figure(summary["test_log_likelihood"],
                                       "test log p(x), K = 5000 (± over test points)",
                                       summary["test_log_likelihood_stderr"]),
        "test_log_likelihood_mc_stderr": _figure(summary["test_log_likelihood_mc_stderr"],
                                                 "Monte Carlo error of that estimate",
                                                 decimals=3),
        "active_units": {"value": summary["active_units"], "label": "active units (of 8)"},
        "cpu_seconds": _figure(time.process_time() - cpu, "CPU seconds, training and scoring",
                               decimals=0, unit="s"),
    }
    path = result_files.write_result("default_run", figures, started=started,
                                     command="python benchmarks/default_run.py")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
