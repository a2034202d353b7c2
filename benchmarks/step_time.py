"""Per-step training cost against a hand-written PyTorch VAE, measured in one process.

Every contender trains the same 784-400-50 MLP VAE (Bernoulli likelihood from logits) on the
same random binary batches; the contenders are timed in interleaved rounds so that machine noise
hits all of them alike, and each is reported as the median milliseconds per step and its ratio
to the hand-written reference measured in the same run:

* ``torch``      — hand-written: encoder, reparameterized sample, BCE-with-logits, analytic
                   KL, ``torch.optim.Adam``;
* ``pyro_svi``   — Pyro's stock ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``;
* ``lib_NAME``   — this library's training step (``ObjectiveModule`` + ``torch.optim.Adam``)
                   for each objective;
* ``torch_iwae_k50`` — hand-written vectorized IWAE(50), the reference for the K = 50 rows.

Run by hand, not in CI:

    python benchmarks/step_time.py --batch-sizes 128 1024 --rounds 5 --steps 20

Results are printed and written to benchmarks/results/step_time.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.config import ModelConfig
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective

ROOT = Path(__file__).resolve().parent.parent
PIXELS, HIDDEN, LATENT, NUM_DATA = 784, [400], 50, 60_000


def _model_config() -> ModelConfig:
    return ModelConfig(latent_dim=LATENT, hidden_dims=HIDDEN, activation="relu")


def torch_step_fn(device):
    """The reference: the same networks as the library's VAE, the ELBO written by hand."""
    vae = build_vae(_model_config(), (1, 28, 28)).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step(x):
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - torch.log(scale)).sum()
        loss = -(log_lik - kl) * (NUM_DATA / len(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def torch_iwae_step_fn(particles: int, device):
    """Hand-written vectorized IWAE(K): the reference for the library's ``iwae``."""
    vae = build_vae(_model_config(), (1, 28, 28)).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step(x):
        loc, scale = vae.encoder(x)
        eps = torch.randn((particles,) + loc.shape, device=x.device)
        z = loc + scale * eps
        log_lik = -F.binary_cross_entropy_with_logits(
            vae.decoder(z), x.expand(particles, *x.shape), reduction="none").sum(-1)
        log_prior = -0.5 * z.pow(2).sum(-1)
        log_q = -0.5 * eps.pow(2).sum(-1) - torch.log(scale).sum(-1)
        bound = torch.logsumexp(log_lik + log_prior - log_q, 0).sum()
        loss = -bound * (NUM_DATA / len(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def pyro_svi_step_fn(device):
    vae = build_vae(_model_config(), (1, 28, 28), num_data=NUM_DATA).to(device)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return lambda x: svi.step(x)


def library_step_fn(objective: str, particles: int, device):
    vae = build_vae(_model_config(), (1, 28, 28), num_data=NUM_DATA).to(device)
    module = ObjectiveModule(vae, make_objective(objective, particles))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)

    def step(x):
        loss = module(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


CONTENDERS = {
    "torch": torch_step_fn,
    "pyro_svi": pyro_svi_step_fn,
    "lib_elbo": lambda d: library_step_fn("elbo", 1, d),
    "lib_meanfield": lambda d: library_step_fn("meanfield", 1, d),
    "lib_iwae_k5": lambda d: library_step_fn("iwae", 5, d),
    "lib_iwae_k50": lambda d: library_step_fn("iwae", 50, d),
    "torch_iwae_k50": lambda d: torch_iwae_step_fn(50, d),
    "lib_dreg_k50": lambda d: library_step_fn("dreg", 50, d),
}


def time_steps(step, batches, device) -> list[float]:
    times = []
    for x in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=list(CONTENDERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_time.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    pyro.enable_validation(False)
    results = {"device": str(device), "torch": torch.__version__, "pyro": pyro.__version__,
               "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "batch_sizes": {}}
    for batch_size in args.batch_sizes:
        torch.manual_seed(0)
        batches = [torch.bernoulli(torch.full((batch_size, PIXELS), 0.2, device=device))
                   for _ in range(args.steps)]
        steps = {name: CONTENDERS[name](device) for name in args.contenders}
        for step in steps.values():  # warm-up
            time_steps(step, batches[:3], device)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():  # interleaved: noise hits every contender
                times[name] += time_steps(step, batches, device)
        medians = {name: statistics.median(t) for name, t in times.items()}

        def ratio(name: str) -> float | None:
            # IWAE contenders compare with the hand-written IWAE, the rest with the plain VAE.
            ref = medians.get("torch_iwae_k50" if "k50" in name else "torch")
            return round(medians[name] / ref, 3) if ref else None
        rows = {name: {"median_ms": round(m, 3), "ratio_to_reference": ratio(name)}
                for name, m in medians.items()}
        results["batch_sizes"][str(batch_size)] = rows
        print(f"batch {batch_size}:")
        for name, row in rows.items():
            print(f"  {name:15s} {row['median_ms']:8.2f} ms   x{row['ratio_to_reference']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
