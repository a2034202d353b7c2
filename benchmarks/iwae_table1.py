"""Reproduce rows of Burda et al. (2016), Table 1 (1 and 2 stochastic layers) for a budget.

Each row is a recipe in models/; this trains it for --epochs passes (the paper: 3,280 with a
decaying learning rate), evaluates the test log-likelihood with k = 5000 importance samples and
records it next to the paper's figure. Run by hand (a GPU helps: --device cuda), not in CI:

    python benchmarks/iwae_table1.py --rows vae iwae_k5 --epochs 10 --data-dir ../shared/data

Results go to benchmarks/results/iwae_table1.json (benchmarks/results.py; the rows of an earlier
measured file are kept beside the new ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pyro_vae.config import Config
from pyro_vae.progress import TqdmProgress
from pyro_vae.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)

ROOT = Path(__file__).resolve().parent.parent
#: Test NLL (nats) of Burda et al. (2016), Table 1; rows ending in 2 have 2 stochastic layers.
PAPER = {
    "vae": ("mnist_vae_burda.toml", 86.76), "vae_k5": ("mnist_vae_k5_burda.toml", 86.47),
    "vae_k50": ("mnist_vae_k50_burda.toml", 86.35),
    "iwae_k5": ("mnist_iwae_k5_burda.toml", 85.54),
    "iwae_k50": ("mnist_iwae_k50_burda.toml", 84.78),
    "vae2": ("mnist_vae2_burda.toml", 85.33), "vae2_k5": ("mnist_vae2_k5_burda.toml", 85.01),
    "vae2_k50": ("mnist_vae2_k50_burda.toml", 84.78),
    "iwae2_k5": ("mnist_iwae2_k5_burda.toml", 83.89),
    "iwae2_k50": ("mnist_iwae2_k50_burda.toml", 82.90),
}


def row_figures(entry: dict) -> dict:
    """The figures of one row for its result file (numbers, with their error bars)."""
    nats = {"decimals": 2, "unit": "nats"}
    return {"test_nll": {"value": round(entry["test_nll"], 2),
                         "stderr": round(entry["test_nll_stderr"], 2), **nats},
            "test_elbo": {"value": round(entry["test_elbo"], 2), **nats},
            "passes": {"value": entry["epochs"]},
            "paper_nll": {"value": entry["paper_nll"], "decimals": 2},
            "distance_to_paper": {"value": round(entry["gap_to_paper"], 2), "decimals": 2}}


def merged_rows(out: Path, name: str, figures: dict) -> dict:
    """This run's rows beside the other rows of a measured result file already there."""
    previous = result_files.read_results(out).get(name, {})
    if previous.get("source", "measured") != "measured":
        return figures  # a transcribed file is replaced, not mixed with measurements
    return {**previous.get("figures", {}), **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(PAPER), default=["vae", "iwae_k5"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = result_files.begin()
    entries = []
    for row in args.rows:
        recipe, paper_nll = PAPER[row]
        config = Config.from_toml(ROOT / "models" / recipe).with_overrides({
            "data": {"data_dir": args.data_dir} if args.data_dir else {},
            "train": {"epochs": args.epochs, "device": args.device},
            "evaluate": {"num_samples": args.eval_samples}})
        run_dir = out / f"{row}-{args.epochs}ep-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.perf_counter()
        summary = train(config, run_dir, progress=TqdmProgress())
        entry = {
            "row": row, "recipe": f"models/{recipe}", "epochs": args.epochs,
            "device": args.device, "test_nll": -summary["test_log_likelihood"],
            "test_nll_stderr": summary["test_log_likelihood_stderr"],
            "test_elbo": summary["test_elbo"], "paper_nll": paper_nll,
            "gap_to_paper": -summary["test_log_likelihood"] - paper_nll,
            "active_units": summary["active_units"],
            "train_seconds": summary["train_seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1), "run_dir": str(run_dir),
        }
        entries.append(entry)
        figures = {e["row"]: row_figures(e) for e in entries}
        result_files.write_result("iwae_table1", merged_rows(out, "iwae_table1", figures),
                                  started=started, details=entries, out_dir=out)
        print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
