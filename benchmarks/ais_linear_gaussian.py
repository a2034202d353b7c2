"""AIS against the exact log p(x) of the linear-Gaussian toy, as the number of steps grows.

On :class:`pyro_vae.toy.LinearGaussian` (40 points, exact log p(x) in closed form) with its
encoder moved off the posterior (mean error 0.5, scale ×2), this measures the mean error of
AIS from the prior at ``--steps`` annealing steps (8 chains, 5 leapfrog steps), of importance
sampling from that q(z|x) with as many samples as the longest AIS run makes decoder passes
per datapoint, and the BDMC gap at 100 and 1000 steps on 40 points simulated from the model.
``--plot FILE`` also draws the error against the steps.

Run by hand, not in CI (about a minute, one thread):

    OMP_NUM_THREADS=1 python benchmarks/ais_linear_gaussian.py

Results are printed and written to benchmarks/results/ais_linear_gaussian.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pyro.distributions as dist
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae.evaluate import ais_log_likelihood, bdmc, estimate_log_likelihood  # noqa: E402
from pyro_vae.toy import SIGMA, LinearGaussian  # noqa: E402

CHAINS, LEAPFROG = 8, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300, 1000])
    parser.add_argument("--bdmc-steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--plot", help="also draw the curve into this PNG file")
    args = parser.parse_args()
    started = begin()
    toy = LinearGaussian(num_points=40)
    toy.set_encoder(loc_error=0.5, scale_factor=2.0)
    curve = {}
    for steps in args.steps:
        torch.manual_seed(0)
        estimate = ais_log_likelihood(toy.vae, toy.x, steps, CHAINS, leapfrog_steps=LEAPFROG)
        error = estimate.log_likelihood - toy.log_px
        curve[str(steps)] = {"value": round(float(error.mean()), 4),
                             "stderr": round(estimate.log_likelihood_mc_stderr, 4),
                             "unit": "nats", "decimals": 3,
                             "label": f"AIS − exact, {steps} steps"}
        print(f"AIS {steps} steps: {float(error.mean()):+.4f} ± "
              f"{estimate.log_likelihood_mc_stderr:.4f} nats")
    samples = max(args.steps) * LEAPFROG * CHAINS
    torch.manual_seed(0)
    importance = estimate_log_likelihood(toy.vae, toy.x, samples)
    is_error = float((importance.log_likelihood - toy.log_px).mean())
    print(f"IS, K = {samples}: {is_error:+.4f} nats")
    gaps = {}
    covariance = toy.weight @ toy.weight.T + SIGMA ** 2 * torch.eye(len(toy.bias))
    for steps in args.bdmc_steps:
        torch.manual_seed(1)
        result = bdmc(toy.vae, 40, steps, CHAINS, example=toy.x, leapfrog_steps=LEAPFROG)
        exact = float(dist.MultivariateNormal(toy.bias, covariance).log_prob(result.x).mean())
        gap = result.gap
        gaps[str(steps)] = {
            "gap": {"value": round(float(gap.mean()), 4),
                    "stderr": round(float(gap.std() / math.sqrt(len(gap))), 4),
                    "unit": "nats", "decimals": 3, "label": f"BDMC gap, {steps} steps"},
            "lower_minus_exact": round(result.lower.mean_log_likelihood - exact, 4),
            "upper_minus_exact": round(result.upper.mean_log_likelihood - exact, 4)}
        print(f"BDMC {steps} steps: gap {float(gap.mean()):.4f}, lower − exact "
              f"{result.lower.mean_log_likelihood - exact:+.4f}, upper − exact "
              f"{result.upper.mean_log_likelihood - exact:+.4f}")
    figures = {"ais_minus_exact": curve,
               "is_minus_exact": {"value": round(is_error, 4), "unit": "nats", "decimals": 3,
                                  "label": f"IS from the off q(z|x), K = {samples}"},
               "bdmc": gaps}
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        steps = [int(s) for s in curve]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.errorbar(steps, [curve[str(s)]["value"] for s in steps],
                    yerr=[2 * curve[str(s)]["stderr"] for s in steps], marker="o",
                    label="AIS from the prior")
        ax.axhline(0, color="black", lw=0.8, label="exact log p(x)")
        ax.axhline(is_error, color="tab:red", ls="--", label=f"IS, K = {samples}")
        ax.set_xscale("log")
        ax.set_xlabel("annealing steps")
        ax.set_ylabel("estimate − exact (nats)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"drew {args.plot}")
    path = write_result("ais_linear_gaussian", figures, started=started,
                        details={"settings": vars(args), "chains": CHAINS,
                                 "leapfrog_steps": LEAPFROG})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
