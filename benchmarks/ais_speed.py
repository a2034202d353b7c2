"""AIS speed: ``pyro_vae.ais.ais_log_likelihood`` against hand-written HMC-AIS in plain torch.

Both run the same algorithm on the same model and batch, in one process, timed in interleaved
rounds (median over rounds): forward AIS from the prior along the sigmoid schedule, HMC with
``--leapfrog`` leapfrog steps, C estimating chains plus A adaptation chains per datapoint, one
step size per datapoint steered by the adaptation chains. The reference calls the decoder
directly and writes log p(z) + log p(x|z) (standard normal prior, Bernoulli likelihood from
logits) and its gradient by hand; the library gets both through the model's Pyro program
(:mod:`pyro_vae.ais`). The model is an untrained MNIST-shaped MLP VAE (784-``--hidden``-50,
the library's ``vae`` kind); the batch is ``--datapoints`` random binary images (speed does
not depend on the pixel values). The figure is the ratio of times (library / torch) and the
annealing steps per second of each; the issue's target is a ratio of at most 1.3.

Run by hand, not in CI (small size, one thread):

    OMP_NUM_THREADS=1 python benchmarks/ais_speed.py --datapoints 20 --steps 50 --rounds 3

Results are printed and written to benchmarks/results/ais_speed.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae.ais import annealing_schedule, ais_log_likelihood  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.models import build_vae  # noqa: E402

PIXELS, LATENT = 784, 50
TARGET_ACCEPTANCE, ADAPT_RATE, INITIAL_STEP = 0.65, 0.2, 0.1


def torch_ais(decoder: torch.nn.Module, x: torch.Tensor, steps: int, chains: int,
              adapt_chains: int, leapfrog: int) -> torch.Tensor:
    """Hand-written vectorized HMC-AIS from N(0, I) to p(z|x); log p̂(x) per datapoint."""
    batch, copies = len(x), chains + adapt_chains
    rows = x.repeat(copies, 1)

    def densities(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_prior = -0.5 * z.pow(2).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
            log_lik = -F.binary_cross_entropy_with_logits(decoder(z), rows,
                                                          reduction="none").sum(-1)
            grad_lik, = torch.autograd.grad(log_lik.sum(), z)
        return z.detach(), log_prior.detach(), log_lik.detach(), -z.detach(), grad_lik

    betas = annealing_schedule(steps).tolist()
    z, log_prior, log_lik, grad_prior, grad_lik = densities(torch.randn(copies * batch, LATENT))
    log_step = torch.full((batch,), math.log(INITIAL_STEP))
    log_w = torch.zeros(copies * batch)
    for i in range(1, steps + 1):
        log_w += (betas[i] - betas[i - 1]) * log_lik
        if i == steps:
            break
        beta = betas[i]
        epsilon = log_step.exp().repeat(copies)[:, None]
        momentum = torch.randn_like(z)
        start = -(log_prior + beta * log_lik) + 0.5 * momentum.pow(2).sum(-1)
        new = (z, log_prior, log_lik, grad_prior, grad_lik)
        momentum = momentum + 0.5 * epsilon * (grad_prior + beta * grad_lik)
        for step in range(leapfrog):
            new = densities(new[0] + epsilon * momentum)
            scale = 0.5 if step == leapfrog - 1 else 1.0
            momentum = momentum + scale * epsilon * (new[3] + beta * new[4])
        end = -(new[1] + beta * new[2]) + 0.5 * momentum.pow(2).sum(-1)
        log_accept = torch.nan_to_num((start - end).clamp(max=0.0), nan=-math.inf)
        accept = torch.rand_like(log_accept).log() < log_accept
        z = torch.where(accept[:, None], new[0], z)
        log_prior = torch.where(accept, new[1], log_prior)
        log_lik = torch.where(accept, new[2], log_lik)
        grad_prior = torch.where(accept[:, None], new[3], grad_prior)
        grad_lik = torch.where(accept[:, None], new[4], grad_lik)
        if adapt_chains:
            mean_accept = log_accept.exp().reshape(copies, batch)[chains:].mean(0)
            log_step += ADAPT_RATE * (mean_accept - TARGET_ACCEPTANCE)
    log_w = log_w.reshape(copies, batch)[:chains]
    return torch.logsumexp(log_w, 0) - math.log(chains)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datapoints", type=int, default=20)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--adapt-chains", type=int, default=4)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = begin()
    torch.manual_seed(0)
    config = Config().with_overrides({"model": {"hidden_dims": args.hidden,
                                                "latent_dim": LATENT}})
    vae = build_vae(config.model, (1, 28, 28)).eval()
    x = (torch.rand(args.datapoints, PIXELS) < 0.13).float()
    for p in vae.parameters():
        p.requires_grad_(False)  # as the library does while its chains run

    def library() -> torch.Tensor:
        return ais_log_likelihood(vae, x, args.steps, args.chains, leapfrog_steps=args.leapfrog,
                                  adapt_chains=args.adapt_chains, adapt_rate=ADAPT_RATE,
                                  initial_step_size=INITIAL_STEP,
                                  target_acceptance=TARGET_ACCEPTANCE).log_likelihood

    def reference() -> torch.Tensor:
        with torch.no_grad():
            return torch_ais(vae.decoder, x, args.steps, args.chains, args.adapt_chains,
                             args.leapfrog)

    contenders = {"library": library, "torch": reference}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    estimates: dict[str, float] = {}
    for name, run in contenders.items():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            estimates[name] = float(run().mean())
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["library"] / median["torch"]
    figures = {
        "ratio_library_to_torch": {"value": round(ratio, 3), "decimals": 2,
                                   "label": "AIS time, library / plain torch (target <= 1.3)"},
        "library_steps_per_second": round(args.steps / median["library"], 2),
        "torch_steps_per_second": round(args.steps / median["torch"], 2),
        "library_seconds": round(median["library"], 3),
        "torch_seconds": round(median["torch"], 3),
    }
    details = {"settings": vars(args), "times": times,
               "mean_log_likelihood_last_round": estimates}
    for name, value in figures.items():
        print(f"{name}: {value['value'] if isinstance(value, dict) else value}")
    print(f"mean log p̂(x) (last round): {estimates}")
    path = write_result("ais_speed", figures, started=started, details=details)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
