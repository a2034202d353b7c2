"""Every log-likelihood estimate on the same trained models: a table in the spirit of Wu et al.

Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based
generative models", score each model with every estimator and check the estimators themselves
with BDMC. This benchmark does the same on small models, per model and on the same test points:

- the ELBO, E_q[log w] (the mean of all K = 5000 log-weights below),
- the IWAE bound at K = 5 and K = 50, E[log (1/K) Σ_k w_k] (the 5000 log-weights split into
  1000 groups of 5 and 100 groups of 50, each group's log-mean-exp averaged),
- IS at K = 5000, log (1/5000) Σ_k w_k (the bound the Burda recipes report),
- AIS from the prior at ``--steps`` (default 1,000) steps, and at ``--long-steps`` (default
  10,000) on the first ``--long-points`` test points (if any),
- the BDMC gap at ``--steps`` on ``--simulated`` pairs (z, x) drawn from each model: how far
  AIS at these settings can be from log p(x) on data like the model's own.

The ELBO and IWAE values come from one set of 5000 samples; the CPU seconds beside them are
those of a separate call of ``estimate_log_likelihood`` at that K on the same points (what
estimating that bound alone costs). Every difference between estimates, and between the two
models, is paired per datapoint, with its standard error over the test points.

Models: the digits VAE and IWAE(5) (``Config()``, objective ``elbo`` / ``iwae`` with 5
particles, ``--epochs`` epochs, default 100); with ``--mnist`` instead the Burda Table-1
recipes ``models/mnist_vae_burda.toml`` and ``models/mnist_iwae_k5_burda.toml`` (default 3
epochs; the data folder from ``$PYRO_VAE_DATA_DIR``), written to ``ais_table_mnist.json``.
Both models of a pair are scored on the same first ``--test-points`` test images (the
training seed is the recipes' 0; every estimate starts from ``torch.manual_seed(0)``).

Run by hand, not in CI, on one thread (CPU seconds are process time, so a loaded machine
stretches the wall clock but not them much):

    OMP_NUM_THREADS=1 python benchmarks/ais_table.py --test-points 100 --chains 8 \
        --long-points 5 --simulated 25
    OMP_NUM_THREADS=1 PYRO_VAE_DATA_DIR=DATA python benchmarks/ais_table.py --mnist ...

Results are printed and written to benchmarks/results/ais_table.json (ais_table_mnist.json).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import begin, load_average, write_result  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.evaluate import (ais_log_likelihood, bdmc, estimate_log_likelihood,  # noqa: E402
                               log_importance_weights)
from pyro_vae.runs import load_trained  # noqa: E402
from pyro_vae.training import prepare_data, train  # noqa: E402

IS_SAMPLES = 5000
IWAE_SIZES = (5, 50)
#: Rows of the table: (key, what it is), in the order shown.
ESTIMATES = ("elbo", "iwae_5", "iwae_50", "is_5000", "ais", "ais_long")


def figure(value: float, stderr: float | None = None, label: str = "",
           decimals: int = 2, unit: str = "nats") -> dict:
    result = {"value": round(value, 3), "unit": unit, "decimals": decimals, "label": label}
    if stderr is not None and math.isfinite(stderr):
        result["stderr"] = round(stderr, 3)
    return result


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints and its standard error (NaN for one datapoint)."""
    n = len(values)
    stderr = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(values.mean()), stderr


def timed(work: Callable):
    """``work()``'s answer and the CPU seconds (process time) it took, seeded the same."""
    torch.manual_seed(0)
    clock = time.process_time()
    answer = work()
    return answer, time.process_time() - clock


@torch.no_grad()
def importance_log_weights(vae: torch.nn.Module, x: torch.Tensor, samples: int,
                           chunk: int = 20_000) -> torch.Tensor:
    """log w[k, n] = log p(x_n, z_kn) − log q(z_kn | x_n), z_kn ~ q, shape ``[samples, N]``."""
    per_call = max(1, chunk // len(x))
    parts = []
    with vae.scoring():
        for done in range(0, samples, per_call):
            parts.append(log_importance_weights(vae.model, vae.guide, x,
                                                min(per_call, samples - done)))
    return torch.cat(parts)


def iwae_bound(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """Per datapoint, the mean over the groups of ``k`` of log (1/k) Σ w: the IWAE bound."""
    groups = log_w[: (len(log_w) // k) * k].reshape(-1, k, log_w.shape[1])
    return (torch.logsumexp(groups, 1) - math.log(k)).mean(0)


def score_model(vae: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace,
                long_points: int) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Per-datapoint estimates, CPU seconds of each, and the BDMC figures of one model."""
    per_point: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for k, key in ((1, "elbo"), *((k, f"iwae_{k}") for k in IWAE_SIZES)):
        _, seconds[key] = timed(lambda: estimate_log_likelihood(vae, x, k))
    log_w, seconds["is_5000"] = timed(lambda: importance_log_weights(vae, x, IS_SAMPLES))
    per_point["elbo"] = log_w.mean(0)
    for k in IWAE_SIZES:
        per_point[f"iwae_{k}"] = iwae_bound(log_w, k)
    per_point["is_5000"] = torch.logsumexp(log_w, 0) - math.log(IS_SAMPLES)
    print(f"  IS and bounds: {seconds['is_5000']:.0f} CPU s", flush=True)

    annealed, seconds["ais"] = timed(lambda: ais_log_likelihood(vae, x, args.steps,
                                                                args.chains))
    per_point["ais"] = annealed.log_likelihood
    print(f"  AIS, {args.steps} steps: {seconds['ais']:.0f} CPU s", flush=True)
    extra = {"ais_acceptance": round(annealed.acceptance, 3),
             "ais_mc_stderr": round(annealed.log_likelihood_mc_stderr, 4)}
    if long_points:
        longer, seconds["ais_long"] = timed(lambda: ais_log_likelihood(
            vae, x[:long_points], args.long_steps, args.long_chains))
        per_point["ais_long"] = longer.log_likelihood
        extra["ais_long_mc_stderr"] = round(longer.log_likelihood_mc_stderr, 4)
        print(f"  AIS, {args.long_steps} steps: {seconds['ais_long']:.0f} CPU s", flush=True)
    sandwich, seconds["bdmc"] = timed(lambda: bdmc(vae, args.simulated, args.steps,
                                                   args.chains, example=x))
    print(f"  BDMC, {args.steps} steps: {seconds['bdmc']:.0f} CPU s", flush=True)
    gap_mean, gap_stderr = mean_and_stderr(sandwich.gap)
    extra["bdmc"] = {
        "lower": figure(sandwich.lower.mean_log_likelihood, None, "BDMC forward AIS"),
        "upper": figure(sandwich.upper.mean_log_likelihood, None, "BDMC reverse AIS"),
        "gap": figure(gap_mean, gap_stderr,
                      f"BDMC gap, {args.steps} steps, {args.simulated} simulated points")}
    return per_point, seconds, extra


def model_figures(per_point: dict[str, torch.Tensor], seconds: dict[str, float],
                  extra: dict) -> dict:
    """Each estimate (mean ± spread over the test points), its distance to AIS at ``steps``
    (paired per datapoint), and its CPU seconds."""
    figures: dict = {}
    for key, values in per_point.items():
        mean, stderr = mean_and_stderr(values)
        reference = per_point["ais"][:len(values)]
        below, below_stderr = mean_and_stderr(values - reference)
        figures[key] = {"estimate": figure(mean, stderr),
                        "minus_ais": figure(below, below_stderr),
                        "cpu_seconds": figure(seconds[key], None, decimals=1, unit="s")}
    figures["bdmc"] = dict(extra.pop("bdmc"),
                           cpu_seconds=figure(seconds["bdmc"], None, decimals=1, unit="s"))
    figures.update(extra)
    return figures


def trained(config: Config, folder: Path, name: str) -> tuple[torch.nn.Module, torch.Tensor,
                                                                float]:
    """Train ``config`` into ``folder/name``; the model, its test images, CPU seconds."""
    clock = time.process_time()
    train(config, folder / name, progress=False)
    seconds = time.process_time() - clock
    config, vae, _ = load_trained(folder / name)
    x, _ = prepare_data(config).split("test")
    return vae, x, seconds


def pair_table(figures: dict, pair: tuple[str, str], args: argparse.Namespace,
               long_points: int) -> list[list[str]]:
    """Rows of the docs' table for one pair of models (VAE, IWAE)."""
    a, b = pair
    names = {"elbo": "ELBO", "iwae_5": "IWAE bound, K = 5", "iwae_50": "IWAE bound, K = 50",
             "is_5000": f"IS, K = {IS_SAMPLES:,}",
             "ais": f"AIS, {args.steps:,} steps × {args.chains} chains",
             "ais_long": f"AIS, {args.long_steps:,} steps × {args.long_chains} chains "
                         f"(first {long_points} points)"}
    rows = []
    for key, name in names.items():
        if key not in figures[a]:
            continue
        rows.append([name, f"{{{a}.{key}.estimate}}", f"{{{a}.{key}.minus_ais}}",
                     f"{{{a}.{key}.cpu_seconds}}", f"{{{b}.{key}.estimate}}",
                     f"{{{b}.{key}.minus_ais}}", f"{{{b}.{key}.cpu_seconds}}",
                     f"{{{b}_minus_{a}.{key}}}"])
    rows.append([f"BDMC gap, {args.steps:,} steps, {args.simulated} simulated points",
                 f"{{{a}.bdmc.gap}}", "", f"{{{a}.bdmc.cpu_seconds}}", f"{{{b}.bdmc.gap}}", "",
                 f"{{{b}.bdmc.cpu_seconds}}", ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", action="store_true",
                        help="the MNIST Burda recipes (VAE and IWAE(5)) instead of the digits; "
                             "written to ais_table_mnist.json")
    parser.add_argument("--epochs", type=int,
                        help="training epochs (default 100 for the digits, 3 for MNIST)")
    parser.add_argument("--test-points", type=int, default=100,
                        help="score the first N test images")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--long-steps", type=int, default=10_000)
    parser.add_argument("--long-chains", type=int, default=4)
    parser.add_argument("--long-points", type=int, default=10,
                        help="AIS at --long-steps on the first N points (0: skip)")
    parser.add_argument("--simulated", type=int, default=50)
    args = parser.parse_args()
    started = begin()
    if args.mnist:
        epochs = args.epochs or 3
        models = {name: Config.from_toml(ROOT / "models" / f"{recipe}.toml").with_overrides(
                      {"train": {"epochs": epochs},
                       # not the recipes' K = 5000 on all 10,000 test images after training
                       "evaluate": {"scoring": "auto", "num_samples": 10, "latent_map": "pca"}})
                  for name, recipe in (("mnist_vae", "mnist_vae_burda"),
                                       ("mnist_iwae5", "mnist_iwae_k5_burda"))}
    else:
        epochs = args.epochs or 100
        models = {name: Config().with_overrides(
                      {"train": {"epochs": epochs, "objective": objective,
                                 "particles": particles}})
                  for name, objective, particles in (("digits_vae", "elbo", 1),
                                                     ("digits_iwae5", "iwae", 5))}
    pairs = [tuple(models)]
    points = {name: args.test_points for name in models}

    figures: dict = {}
    per_model: dict[str, dict[str, torch.Tensor]] = {}
    scored: dict[str, torch.Tensor] = {}
    train_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, config in models.items():
            print(f"{name}: training", flush=True)
            vae, x, train_seconds[name] = trained(config, Path(folder), name)
            x = scored[name] = x[:points[name]]
            long_points = min(args.long_points, len(x))
            print(f"{name}: trained in {train_seconds[name]:.0f} CPU s; scoring {len(x)} "
                  "test points", flush=True)
            per_model[name], seconds, extra = score_model(vae, x, args, long_points)
            figures[name] = model_figures(per_model[name], seconds, extra)
            figures[name]["train_cpu_seconds"] = figure(train_seconds[name], None,
                                                        decimals=0, unit="s")
            figures[name]["test_points"] = len(x)
            print(f"  load average now {load_average()}", flush=True)

    rows = []
    for a, b in pairs:
        assert torch.equal(scored[a], scored[b]), "the two models of a pair saw other images"
        difference = {}
        for key in per_model[a]:
            mean, stderr = mean_and_stderr(per_model[b][key] - per_model[a][key])
            difference[key] = figure(mean, stderr, f"{b} − {a}, paired per datapoint")
        figures[f"{b}_minus_{a}"] = difference
        rows.append([f"**{a} / {b}**", "", "", "", "", "", "", ""])
        rows += pair_table(figures, (a, b), args, min(args.long_points, points[a]))
    table = {"columns": ["estimate", "VAE (nats)", "VAE − AIS", "VAE CPU s", "IWAE(5) (nats)",
                         "IWAE(5) − AIS", "IWAE(5) CPU s", "IWAE(5) − VAE"],
             "rows": rows}
    for name, value in figures.items():
        print(f"{name}: {value}")
    per_datapoint = {name: {key: [round(float(v), 4) for v in values]
                            for key, values in estimates.items()}
                     for name, estimates in per_model.items()}
    path = write_result("ais_table_mnist" if args.mnist else "ais_table", figures,
                        started=started, table=table,
                        details={"settings": vars(args), "seed": 0, "epochs": epochs,
                                 "cpu_seconds": "time.process_time() of this process",
                                 "per_datapoint": per_datapoint})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
