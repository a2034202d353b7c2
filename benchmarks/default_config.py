"""The library's defaults on the digits: does ``train(Config())`` keep its latent code?

    python benchmarks/default_config.py                       # 100 epochs, seeds 0 1 2
    python benchmarks/default_config.py --epochs 100 200 --seeds 0 1 2

Trains ``Config()`` (the 8×8 digits, a Bernoulli MLP VAE, Trace_ELBO, ``kl_warmup_epochs =
"auto"``: the first tenth of the epochs) and the same configuration without the warm-up, on one
thread, and records per run the test log p(x) (K = 5000), the active units and the CPU time.
Results: ``benchmarks/results/default_config.json`` (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)

from pyro_vae import Config, train  # noqa: E402

WARMUPS = {"auto": "auto", "none": 0}


def run(epochs: int, seed: int, warmup: str) -> dict:
    config = Config().with_overrides({"train": {"epochs": epochs, "seed": seed,
                                                "kl_warmup_epochs": WARMUPS[warmup]}})
    started = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        summary = train(config, Path(folder) / "run", progress=False)
    return {"epochs": epochs, "seed": seed, "warmup": warmup,
            "test_log_likelihood": round(summary["test_log_likelihood"], 2),
            "test_log_likelihood_stderr": round(summary["test_log_likelihood_stderr"], 2),
            "active_units": summary["active_units"],
            "cpu_seconds": round(time.process_time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = result_files.begin()
    rows = []
    for epochs in args.epochs:
        for warmup in WARMUPS:
            for seed in args.seeds:
                rows.append(run(epochs, seed, warmup))
                print(rows[-1], flush=True)
    figures = {}
    for epochs in args.epochs:
        for warmup in WARMUPS:
            mine = [r for r in rows if r["epochs"] == epochs and r["warmup"] == warmup]
            figures.setdefault(f"epochs_{epochs}", {})[f"warmup_{warmup}"] = {
                "mean_test_log_likelihood": {
                    "value": round(sum(r["test_log_likelihood"] for r in mine) / len(mine), 2),
                    "decimals": 2, "unit": "nats",
                    "label": f"mean test log p(x) over seeds {args.seeds}"},
                "min_active_units": {"value": min(r["active_units"] for r in mine),
                                     "label": "fewest active units (of 8) over the seeds"}}
    columns = ["epochs", "KL warm-up", "mean test log p(x)", "fewest active units of 8"]
    table_rows = [[str(e), w, f"{{epochs_{e}.warmup_{w}.mean_test_log_likelihood}}",
                   f"{{epochs_{e}.warmup_{w}.min_active_units}}"]
                  for e in args.epochs for w in WARMUPS]
    path = result_files.write_result("default_config", figures, started=started,
                                     table={"columns": columns, "rows": table_rows},
                                     details={"runs": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
