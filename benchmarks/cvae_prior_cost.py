"""What a label-conditional prior costs per CVAE training step, against p(z) = N(0, I).

Writes ``benchmarks/results/cvae_prior_cost[_RECIPE].json``. Builds the ``cvae`` of the given networks with each prior, and times training steps (the
library's ``ObjectiveModule`` ELBO, backward, Adam) on random binary MNIST-sized batches with
random labels, in interleaved rounds in one process, on the training thread's CPU clock (so
other jobs on the machine do not move the ratios). Run by hand, not in CI:

    OMP_NUM_THREADS=1 python benchmarks/cvae_prior_cost.py                 # default networks
    OMP_NUM_THREADS=1 python benchmarks/cvae_prior_cost.py --recipe models/mnist_cvae.toml
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.config import Config
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)

PRIORS = ("normal", "mixture", "vamp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", help="a cvae recipe (default: --model cvae's defaults)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    started = result_files.begin()
    torch.set_num_threads(1)
    base = Config.from_toml(args.recipe) if args.recipe else \
        Config().with_overrides({"model": {"kind": "cvae"}})
    batch = args.batch_size or base.train.batch_size
    num_pixels, classes = 784, base.model.num_classes
    steps = {}
    for prior in PRIORS:
        components = None if prior == "normal" else \
            base.model.options_of("prior").get("components")
        config = base.with_overrides({"model": {"prior": prior, "label_independence": "none",
                                                "prior_components": components}})
        pyro.clear_param_store()
        vae = build_vae(config.model, (1, 28, 28), num_data=60_000)
        objective = ObjectiveModule(vae, make_objective(config.train.objective))
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
        x = torch.rand(batch, num_pixels).round()
        y = torch.randint(classes, (batch,))

        def step(objective=objective, optimizer=optimizer, x=x, y=y) -> None:
            optimizer.zero_grad()
            objective(x, y).backward()
            optimizer.step()

        step()  # warm-up
        steps[prior] = step
    times: dict[str, list[float]] = {prior: [] for prior in PRIORS}
    for _ in range(args.rounds):
        for prior, step in steps.items():
            start = time.thread_time()
            for _ in range(args.steps):
                step()
            times[prior].append((time.thread_time() - start) / args.steps * 1000)
    reference = statistics.median(times["normal"])
    print(f"cvae {base.model.hidden_dims} z {base.model.latent_dim}, batch {batch}, "
          f"{base.model.options_of('prior').get('components') or 500} prior components")
    figures = {}
    for prior in PRIORS:
        median = statistics.median(times[prior])
        print(f"  prior {prior:8s} {median:7.2f} ms a step (CPU), {median / reference:.2f}x N(0, I)")
        figures[prior] = {"step_ms": {"value": round(median, 2), "decimals": 2, "unit": "ms"},
                          "ratio_to_normal": {"value": round(median / reference, 2),
                                              "decimals": 2}}
    name = "cvae_prior_cost" + ("_" + Path(args.recipe).stem if args.recipe else "")
    path = result_files.write_result(name, figures, started=started,
                                     details={"batch": batch, "rounds": args.rounds,
                                              "steps": args.steps, "step_ms": times})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
