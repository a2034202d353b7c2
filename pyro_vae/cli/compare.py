"""`pyro-vae compare`: the estimator lab (bounds, gradient variance and SNR per
objective and K)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from pyro_vae.cli.common import (check_out_folder, check_same_shape, positive_flag,
                                 seed_flag)
from pyro_vae.config import Config
from pyro_vae.config.checks import MAX_ENUMERATED_CODES
from pyro_vae.errors import ConfigError
from pyro_vae.registry import OBJECTIVES

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compare", help="the estimator lab: bounds, gradient variance and SNR per objective and K",
        description="Measure, on one fixed test minibatch and the same seeds, each objective at "
        "each K: the bound with its standard error, the variance and signal-to-noise ratio of "
        "the gradient for encoder and decoder parameters, and the time per step. Writes "
        "compare.csv, compare.json, bound_vs_k.png and snr_vs_k.png.")
    parser.add_argument("run_dir", nargs="?", help="a trained run (default: a fresh, untrained "
                         "model of the default recipe)")
    parser.add_argument("--objectives",
                         help="comma-separated (default elbo,iwae,dreg,stl,score; for a "
                         "discrete run score,vimco,concrete,straight_through,enumerate)")
    parser.add_argument("--temperatures", default="1.0",
                         help="concrete/straight_through: comma-separated temperatures")
    parser.add_argument("--particles", default="1,5,50", help="comma-separated K values")
    parser.add_argument("--repeats", type=int, default=100,
                         help="independent draws per estimate (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="datapoints in the batch")
    parser.add_argument("--alpha", type=float, default=0.5, help="alpha for renyi")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", help="dataset of a fresh model (default digits)")
    parser.add_argument("--data-dir", help="data folder")
    parser.add_argument("--out", help="output folder (default RUN_DIR/compare or "
                         "runs/compare-TIME)")


def _csv_list(flag: str, text: str, convert: type, allowed: Sequence[str] | None = None) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        values = [convert(item) for item in items]
    except ValueError:
        raise ConfigError(f"--{flag} {text!r} must be a comma-separated list of "
                          f"{convert.__name__} values.") from None
    bad = [v for v in values if (allowed is not None and v not in allowed)
           or (convert is int and v <= 0)]
    if not values or bad:
        hint = f" (choose from {', '.join(allowed)})" if allowed else " (positive integers)"
        raise ConfigError(f"--{flag} {text!r} has invalid entries {bad}{hint}.")
    return values


def _objectives_for_global_sites(vae, x, objectives: list[str]
                                 ) -> tuple[list[str], dict[str, str]]:
    """The objectives that apply to ``vae`` and, by name, why the others do not: a model with
    latent sites outside the ``data`` plate (a hyperprior, Bayesian weights) is trained only
    by objectives that handle global latent variables; the per-datapoint bounds have no
    per-datapoint share of a global site's KL."""
    from pyro_vae.evaluate import global_sites
    from pyro_vae.registry import OBJECTIVES

    names = global_sites(vae, x)
    if not names:
        return objectives, {}
    sites = ", ".join(repr(n) for n in names)
    applies = [o for o in objectives if "global_latents" in OBJECTIVES.capabilities(o)]
    skipped = {o: f"a per-datapoint bound, and the model has the global latent site(s) {sites}"
               for o in objectives if o not in applies}
    if not applies:
        usable = [o for o in OBJECTIVES.choices()
                  if "global_latents" in OBJECTIVES.capabilities(o)]
        raise ConfigError(f"--objectives {','.join(objectives)}: none of them applies to this "
                          f"model, whose latent site(s) {sites} lie outside the 'data' plate "
                          "(global latent variables) and have no per-datapoint share of their "
                          f"KL. Compare {', '.join(usable)} on it.")
    if skipped:
        print(f"not measured: {', '.join(skipped)} ({next(iter(skipped.values()))}); "
              f"measuring {', '.join(applies)}", file=sys.stderr)
    return applies, skipped


def run(args: argparse.Namespace) -> int:
    import torch
    from pyro_vae.faults import check_memory, decoded_bytes
    from pyro_vae.lab import compare_estimators, reports_to_csv, reports_to_markdown, save_lab_plots
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import DISCRETE_OBJECTIVES
    from pyro_vae.protocol import has
    from pyro_vae.runs import atomic_write_text, load_trained, make_run_dir, write_json
    from pyro_vae.training import prepare_data

    particles = _csv_list("particles", args.particles, int)
    temperatures = _csv_list("temperatures", args.temperatures, float)
    seed_flag(args.seed)
    if any(not t > 0 for t in temperatures):
        raise ConfigError(f"--temperatures {args.temperatures!r}: temperatures must be "
                          "positive.")
    if args.repeats < 2:
        raise ConfigError(f"--repeats {args.repeats}: variances and standard errors need at "
                          "least 2 draws.")
    positive_flag("batch-size", args.batch_size)
    if args.run_dir:
        config, vae, checkpoint = load_trained(args.run_dir)
        if not getattr(vae, "vectorize_particles", True) or not has(config, "estimator_lab"):
            raise ConfigError(
                f"{args.run_dir} is not a plain VAE (kind = \"{config.model.kind}\" with "
                f"[kind] options {config.model.options_of('kind')}); the "
                "lab compares estimators on the same model/guide pair with point-estimated "
                "weights, which a Bayesian decoder's global weights or a conditional model do "
                "not give every estimator. Run compare on a plain VAE run.")
        out = Path(args.out) if args.out else Path(args.run_dir) / "compare"
    else:
        config = Config()
        out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    discrete = has(config, "categorical_latents")
    objectives = _csv_list("objectives", args.objectives or (
        ",".join(DISCRETE_OBJECTIVES) if discrete else "elbo,iwae,dreg,stl,score"), str,
        DISCRETE_OBJECTIVES if discrete else OBJECTIVES.choices())
    relaxed = [name for name in objectives
               if "discrete_only" in OBJECTIVES.capabilities(name)]
    if relaxed and not discrete:
        raise ConfigError(f"--objectives {relaxed[0]} is for discrete latent variables; give "
                          "the run directory of a --model discrete run.")
    if "vimco" in objectives and max(particles) < 2:
        raise ConfigError("--objectives vimco leaves one of K samples out for each baseline, "
                          "so it needs --particles of 2 or more (e.g. --particles 2,5,50).")
    code = config.model.options_of("kind")
    categories, latents = code.get("categories", 1), code.get("categorical_latents", 1)
    codes = categories ** latents
    if discrete and "enumerate" in objectives and codes > MAX_ENUMERATED_CODES:
        if args.objectives:
            raise ConfigError(
                f"--objectives enumerate sums over all C^K = {categories}^{latents} codes of "
                "this run, more than the "
                f"{MAX_ENUMERATED_CODES} it allows; leave it out (the other discrete "
                "objectives sample the code).")
        objectives = [name for name in objectives if name != "enumerate"]
        print(f"note: enumerate left out: this run has {categories}^{latents} codes, more "
              "than the "
              f"{MAX_ENUMERATED_CODES} it sums over.", file=sys.stderr)
    if "renyi" in objectives and args.alpha == 1.0:
        raise ConfigError("--alpha 1 makes the Renyi bound the ELBO itself; choose another.")
    if not math.isfinite(args.alpha):
        raise ConfigError(f"--alpha {args.alpha} must be a finite number (the Renyi bound's "
                          "alpha, not 1; 0 is IWAE).")
    overrides = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}
    if overrides:
        config = config.with_overrides({"data": overrides})
    check_out_folder(out)  # before the work, not after it
    data = prepare_data(config)
    if args.run_dir:
        check_same_shape(config, data, checkpoint)
    if not args.run_dir:
        torch.manual_seed(args.seed)
        vae = build_vae(config.model, data.image_shape)
    x = data.test_x[: args.batch_size]
    # One gradient draw holds the decoded images of the whole batch at the largest K, with
    # the activations kept for the backward pass (at least twice the forward's).
    check_memory(f"compare --particles {max(particles)}",
                 2 * decoded_bytes(len(x) * max(particles), data.image_shape,
                                   config.model.latent_dim), "cpu",
                 "lower the largest --particles (or --batch-size).")
    objectives, skipped = _objectives_for_global_sites(vae, x, objectives)
    done = iter(range(1, 10 ** 6))
    reports = compare_estimators(
        vae, x, objectives, particles, args.repeats, args.seed, args.alpha,
        progress=lambda name, k: print(f"[{next(done)}] {name}, K={k}", file=sys.stderr),
        temperatures=temperatures)
    make_run_dir(out)
    atomic_write_text(out / "compare.csv", reports_to_csv(reports))
    write_json(out / "compare.json", {
        "run_dir": args.run_dir, "dataset": config.data.dataset, "batch_size": len(x),
        "repeats": args.repeats, "seed": args.seed, "temperatures": temperatures,
        "not_measured": skipped, "reports": [vars(r) for r in reports]})
    save_lab_plots(reports, out)
    print(reports_to_markdown(reports))
    print(f"wrote {out / 'compare.csv'}, compare.json, bound_vs_k.png and snr_vs_k.png")
    return 0
