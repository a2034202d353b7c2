"""Training-step time against the number of torch threads, for small and large models.

Each (model, threads) pair runs in its own fresh process (torch's thread pool is set once, at
start), timing ``--steps`` training steps of the library's loop (``ObjectiveModule`` +
``optimizer_step``) on random binary batches after a warm-up; pairs are run in interleaved
rounds so that machine noise hits them alike, and the median over rounds is reported.

Models:

* ``digits``   — the quick start's default recipe: 64-128-128-8 ReLU MLPs, batch 64;
* ``burda``    — ``models/mnist_vae_burda.toml``: 784-200-200-50 tanh MLPs, batch 20;
* ``mnist128`` — the 784-400-50 MLP VAE of benchmarks/step_time.py at batch 128;
* ``mnist1024``— the same at batch 1024.

Run by hand, not in CI (note the machine's load; other jobs change the answer):

    python benchmarks/threads.py --threads 1 2 --rounds 3 --steps 100

Results are printed and written to benchmarks/results/threads.json (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)
MODELS = {  # name: (pixels, hidden, latent, activation, batch)
    "digits": (64, [128, 128], 8, "relu", 64),
    "burda": (784, [200, 200], 50, "tanh", 20),
    "mnist128": (784, [400], 50, "relu", 128),
    "mnist1024": (784, [400], 50, "relu", 1024),
}


def _time_steps(model: str, threads: int, steps: int) -> float:
    """Seconds per training step, measured in this process with ``threads`` torch threads."""
    import torch

    from pyro_vae.config import ModelConfig
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import ObjectiveModule, make_objective
    from pyro_vae.steps import adam
    from pyro_vae.training import optimizer_step

    torch.set_num_threads(threads)
    pixels, hidden, latent, activation, batch = MODELS[model]
    side = int(pixels ** 0.5)
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(latent_dim=latent, hidden_dims=hidden, activation=activation),
                    (1, side, side), num_data=60_000)
    module = ObjectiveModule(vae, make_objective("elbo", 1, 0.5, True))
    optimizer = adam(module.parameters(), 1e-3)  # the training loop's optimizer
    parameters = list(module.parameters())
    x = torch.bernoulli(torch.full((batch, pixels), 0.2))
    for i in range(10):
        optimizer_step(module(x), optimizer, parameters, x, i)
    started = time.perf_counter()
    for i in range(steps):
        optimizer_step(module(x), optimizer, parameters, x, i)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(_time_steps(args.child[0], int(args.child[1]), args.steps))
        return
    times: dict[str, dict[int, list[float]]] = {m: {t: [] for t in args.threads}
                                                for m in args.models}
    load_before = os.getloadavg()
    started = result_files.begin()
    for _ in range(args.rounds):
        for model in args.models:
            for threads in args.threads:
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps),
                                      "--child", model, str(threads)],
                                     capture_output=True, text=True, check=True)
                times[model][threads].append(float(out.stdout.split()[-1]))
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_before": load_before,
                           "load_average_after": os.getloadavg()},
               "steps": args.steps, "rounds": args.rounds, "models": {}}
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after "
          f"{os.getloadavg()[0]:.2f}")
    print("| model | " + " | ".join(f"{t} thread(s), ms/step" for t in args.threads) + " |")
    print("|---" * (len(args.threads) + 1) + "|")
    for model in args.models:
        medians = {t: statistics.median(times[model][t]) for t in args.threads}
        results["models"][model] = {"median_seconds_per_step": medians,
                                    "all": times[model]}
        print(f"| {model} | " + " | ".join(f"{1000 * medians[t]:.2f}" for t in args.threads)
              + " |")
    figures = {model: {f"threads_{t}": {"value": round(1000 * median, 2), "decimals": 2,
                                        "unit": "ms/step"}
                       for t, median in entry["median_seconds_per_step"].items()}
               for model, entry in results["models"].items()}
    path = result_files.write_result("threads", figures, started=started, details=results,
                                     command=result_files.command_line())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
