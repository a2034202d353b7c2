"""`pyro-vae gaps`: inference gaps (approximation vs amortization) and NUTS posterior
diagnostics with ArviZ."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from pyro_vae.cli.common import load_run, positive_flag, refuse_kind, seed_flag
from pyro_vae.errors import ConfigError

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "gaps", help="inference gaps (approximation vs amortization) and NUTS posterior "
        "diagnostics with ArviZ",
        description="For the first N test images: log p(x) by importance sampling, the ELBO of "
        "a Gaussian optimized per image (q*) and of the amortized q(z|x); approximation gap = "
        "log p(x) - ELBO(q*), amortization gap = ELBO(q*) - ELBO(q). Also draws the exact "
        "posterior p(z|x) with NUTS for the first --nuts-points images. Writes gaps.json, "
        "posterior_nuts.nc, posterior_q.nc, log_likelihood.nc (ArviZ netCDF) and "
        "posterior_comparison.png.")
    parser.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    parser.add_argument("--n", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--num-samples", type=int, default=5000,
                      help="K importance samples for log p(x) and each ELBO (default 5000)")
    parser.add_argument("--steps", type=int, default=500,
                      help="Adam steps optimizing q* per image (default 500)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate for q*")
    parser.add_argument("--nuts-points", type=int, default=4,
                      help="test images whose posterior NUTS draws (default 4)")
    parser.add_argument("--chains", type=int, default=4, help="NUTS chains (default 4)")
    parser.add_argument("--draws", type=int, default=500, help="NUTS draws per chain "
                      "(default 500, after as many warm-up steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="data folder (for MNIST-family runs)")
    parser.add_argument("--out", help="output folder (default RUN_DIR)")


class _Bars:
    """One tqdm bar per stage of the library's progress reports."""
    def __init__(self) -> None:
        self.bars: dict = {}

    def __call__(self, stage: str, finished: int, total: int) -> None:
        from tqdm.auto import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, dynamic_ncols=True,
                                          mininterval=0.5)
        bar.update(finished - bar.n)
        if finished >= total:
            bar.close()


def run(args: argparse.Namespace) -> int:
    for flag in ("n", "num_samples", "steps", "nuts_points", "chains", "draws"):
        positive_flag(flag.replace("_", "-"), getattr(args, flag))
    seed_flag(args.seed)
    if args.chains < 2:
        raise ConfigError(f"--chains {args.chains}: R-hat compares chains, so NUTS needs at "
                          "least 2.")
    if args.draws < 4:  # split R-hat halves each chain's draws, and needs two of each half
        raise ConfigError(f"--draws {args.draws}: the split R-hat that checks NUTS needs at "
                          "least 4 draws per chain; give --draws 4 or more (500 by default).")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ConfigError(f"--lr {args.lr} must be a finite positive number.")
    config, vae, data = load_run(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "gaps", ("labels", "completions"),
                "the gaps compare q(z|x) with the exact posterior p(z|x) of an unconditional "
                "VAE, which this model does not have. Measure them on a --model vae run.")
    from pyro_vae.protocol import has

    if not has(config, "latent_means"):
        raise ConfigError(f"{args.run_dir} holds a model whose kind ({config.model.kind}) does "
                          "not declare the capability \"latent_means\" (posterior and "
                          "latent_mean; see pyro_vae.protocol); the gaps start q* at its "
                          "q(z|x). Measure them on a model that declares it.")
    if getattr(vae, "weight_posterior", None) is not None:
        return _gaps_of_bayesian_decoder(args, config, vae, data)
    return _gaps(args, config, vae, data)


def _local_part(args: argparse.Namespace, vae, x):
    """The model as the gaps measure it: a model with global latent sites (a hyperprior) has
    them fixed at one draw from q and the gaps are those of the local code given that draw
    (said on stderr and recorded in gaps.json); any other model unchanged."""
    import torch

    from pyro_vae.evaluate import fix_global_sites

    torch.manual_seed(args.seed)
    local, fixed = fix_global_sites(vae, x)
    if fixed:
        shown = ", ".join(f"{name} = {value:.4g}" for name, value in fixed.items())
        print(f"the gaps and NUTS draws below are those of the local code z given the global "
              f"latent site(s) fixed at one draw from q ({shown}); log p(x) in them is "
              "log p(x | that draw), not the model's log p(x) (pyro-vae evaluate gives that)",
              file=sys.stderr)
    return local, fixed


def _gaps_of_bayesian_decoder(args: argparse.Namespace, config, vae, data) -> int:
    """The gaps of a Bayesian decoder are those of its posterior-mean decoder; q(W) is written
    beside them as ``posterior_weights.nc``."""
    import torch
    from pyro_vae.models.bayesian import weight_posterior_draws

    # pyro_vae.diagnostics imports arviz, which takes about as long to import as torch; only
    # this command needs it, so it is imported here rather than on every start of pyro-vae.
    from pyro_vae.diagnostics import inference_data_from_draws, save_inference_data

    torch.manual_seed(args.seed)
    draws = weight_posterior_draws(vae, args.chains, args.draws)
    out = Path(args.out) if args.out else Path(args.run_dir)
    with vae.using_weights():
        status = _gaps(args, config, vae, data)
    dims = {name: [f"{name}_entry"] for name in draws}
    save_inference_data(inference_data_from_draws(draws, dims=dims),
                        out / "posterior_weights.nc")
    print("the gaps above are those of the posterior-mean decoder; draws of q(W) are in "
          f"{out / 'posterior_weights.nc'}", file=sys.stderr)
    return status


def _gaps(args: argparse.Namespace, config, vae, data) -> int:
    import torch
    from pyro_vae.runs import make_run_dir, write_json

    from pyro_vae.diagnostics import (amortized_posterior_draws, exact_posterior_draws,
                                      inference_gaps, log_likelihood_inference_data,
                                      save_inference_data, save_posterior_comparison)  # arviz

    x = data.test_x[: args.n]
    if args.nuts_points > len(x):
        raise ConfigError(f"--nuts-points {args.nuts_points} is more than the {len(x)} test "
                          "images scored (--n).")
    out = Path(args.out) if args.out else Path(args.run_dir)
    vae, fixed = _local_part(args, vae, x)
    make_run_dir(out)
    bars = _Bars()
    torch.manual_seed(args.seed)
    gaps = inference_gaps(vae, x, args.num_samples, args.steps, args.lr, progress=bars)
    chosen = x[: args.nuts_points]
    nuts = exact_posterior_draws(vae, chosen, args.chains, args.draws, args.draws, args.seed,
                                 progress=bars)
    torch.manual_seed(args.seed)
    amortized = amortized_posterior_draws(vae, chosen, args.chains * args.draws)
    save_inference_data(nuts, out / "posterior_nuts.nc")
    save_inference_data(amortized, out / "posterior_q.nc")
    save_inference_data(log_likelihood_inference_data(gaps.log_likelihood),
                        out / "log_likelihood.nc")
    save_posterior_comparison(out / "posterior_comparison.png", amortized, nuts)

    import arviz as az

    summary = az.summary(nuts, kind="diagnostics")
    report = {
        "run_dir": str(args.run_dir), "dataset": config.data.dataset, "num_test_images": len(x),
        "num_samples": args.num_samples, "steps": args.steps, "learning_rate": args.lr,
        "seed": args.seed, **gaps.summary(),
        **({"given_global_sites": fixed} if fixed else {}),
        "nuts": {"datapoints": args.nuts_points, "chains": args.chains, "draws": args.draws,
                 "warmup_steps": args.draws, "max_r_hat": float(summary["r_hat"].max()),
                 "min_ess_bulk": float(summary["ess_bulk"].min()),
                 "divergences": int(nuts.sample_stats["diverging"].sum())},
    }
    write_json(out / "gaps.json", report)
    print(format_gaps(report))
    print(f"wrote {out / 'gaps.json'}, posterior_nuts.nc, posterior_q.nc, log_likelihood.nc "
          "and posterior_comparison.png", file=sys.stderr)
    return 0


def format_gaps(report: dict) -> str:
    """The decomposition as a small text table."""
    rows = [("log p(x)", "log_likelihood"), ("ELBO, optimized q*", "elbo_optimized"),
            ("ELBO, amortized q", "elbo_amortized"), ("approximation gap", "approximation_gap"),
            ("amortization gap", "amortization_gap"), ("inference gap", "inference_gap")]
    lines = [f"{report['dataset']}: {report['num_test_images']} test images, "
             f"K = {report['num_samples']}, {report['steps']} steps for q*",
             f"{'term':<20} {'nats':>10} {'± s.e.':>8}"]
    for label, key in rows:
        lines.append(f"{label:<20} {report[key]:>10.3f} {report[key + '_stderr']:>8.3f}")
    nuts = report["nuts"]
    lines.append(f"NUTS on {nuts['datapoints']} images: {nuts['chains']} chains x "
                 f"{nuts['draws']} draws, max R-hat {nuts['max_r_hat']:.3f}, min bulk ESS "
                 f"{nuts['min_ess_bulk']:.0f}, {nuts['divergences']} divergences")
    return "\n".join(lines)
