"""AIS against importance sampling on a trained digits VAE, and the BDMC gap on simulated data.

Trains the digits recipe (``models/digits_vae.toml``) for ``--epochs`` epochs (default 30), then
on the test images scores log p(x) by importance sampling from q(z|x) with ``--is-samples``
samples (default 1000) and by AIS from the prior with ``--steps`` annealing steps (default 500,
16 chains, 10 leapfrog steps); then runs BDMC at the same AIS settings on ``--simulated`` pairs
(z, x) drawn from the trained model. The issue's checks: AIS within 1 nat of IS and not below
it by more than 0.1 (both are stochastic lower bounds; AIS should be the tighter), and a BDMC
gap below 0.5 nats per datapoint. Seconds of each are recorded.

Run by hand, not in CI (about 3-5 CPU minutes, one thread):

    OMP_NUM_THREADS=1 python benchmarks/ais_digits.py

Results are printed and written to benchmarks/results/ais_digits.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.evaluate import ais_log_likelihood, bdmc, estimate_log_likelihood  # noqa: E402
from pyro_vae.runs import load_trained  # noqa: E402
from pyro_vae.training import prepare_data, train  # noqa: E402


def figure(value: float, stderr: float | None = None, label: str = "") -> dict:
    result = {"value": round(value, 3), "unit": "nats", "decimals": 2, "label": label}
    if stderr is not None and math.isfinite(stderr):
        result["stderr"] = round(stderr, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--is-samples", type=int, default=1000)
    parser.add_argument("--simulated", type=int, default=100)
    parser.add_argument("--test-points", type=int, help="score only the first N test images")
    args = parser.parse_args()
    started = begin()
    config = Config.from_toml(ROOT / "models" / "digits_vae.toml").with_overrides(
        {"train": {"epochs": args.epochs}, "evaluate": {"num_samples": 10}})
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        clock = time.perf_counter()
        train(config, Path(folder) / "run", progress=False)
        seconds["train"] = time.perf_counter() - clock
        config, vae, _ = load_trained(Path(folder) / "run")
    data = prepare_data(config)
    x, _ = data.split("test")
    if args.test_points:
        x = x[:args.test_points]

    torch.manual_seed(0)
    clock = time.perf_counter()
    importance = estimate_log_likelihood(vae, x, args.is_samples)
    seconds["is"] = time.perf_counter() - clock

    torch.manual_seed(0)
    clock = time.perf_counter()
    annealed = ais_log_likelihood(vae, x, args.steps, args.chains)
    seconds["ais"] = time.perf_counter() - clock

    torch.manual_seed(0)
    clock = time.perf_counter()
    sandwich = bdmc(vae, args.simulated, args.steps, args.chains, example=x)
    seconds["bdmc"] = time.perf_counter() - clock

    difference = annealed.log_likelihood - importance.log_likelihood
    gap = sandwich.gap
    figures = {
        "test_points": len(x),
        "is": figure(importance.mean_log_likelihood, importance.log_likelihood_mc_stderr,
                     f"IS, K = {args.is_samples} (Monte Carlo error)"),
        "ais": figure(annealed.mean_log_likelihood, annealed.log_likelihood_mc_stderr,
                      f"AIS, {args.steps} steps, {args.chains} chains (Monte Carlo error)"),
        "ais_minus_is": figure(float(difference.mean()),
                               float(difference.std() / math.sqrt(len(x))),
                               "AIS − IS per datapoint (± over test points)"),
        "bdmc_lower": figure(sandwich.lower.mean_log_likelihood, None,
                             "BDMC forward AIS on simulated data"),
        "bdmc_upper": figure(sandwich.upper.mean_log_likelihood, None,
                             "BDMC reverse AIS on simulated data"),
        "bdmc_gap": figure(float(gap.mean()), float(gap.std() / math.sqrt(len(gap))),
                           f"BDMC gap, {args.steps} steps, {len(gap)} simulated points"),
        "ais_acceptance": round(annealed.acceptance, 3),
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
        "checks": {"ais_within_1_nat_of_is": abs(float(difference.mean())) <= 1.0,
                   "ais_not_below_is_by_more_than_0_1": float(difference.mean()) >= -0.1,
                   "bdmc_gap_below_0_5": float(gap.mean()) < 0.5},
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    path = write_result("ais_digits", figures, started=started,
                        details={"settings": vars(args)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
