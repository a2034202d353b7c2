"""The ``pyro-vae`` command: train, evaluate and sample from VAEs.

Errors a user can cause end in one paragraph on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from pyro_vae.cli_applications import (APPLICATION_COMMANDS, add_application_parsers,
                                       check_same_shape, positive_flag as _positive_flag)
from pyro_vae.cli_diagnostics import DIAGNOSTICS_COMMANDS, add_diagnostics_parsers
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.protocol import has
from pyro_vae.registry import (GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES, PRIORS,
                               load_plugins)

EPILOG = """examples:
  pyro-vae train                                   # embedded 8x8 digits, no download
  pyro-vae train models/mnist_vae_burda.toml --data-dir ../shared/data --epochs 10
  pyro-vae recipes                                 # the packaged recipes; train one by name:
  pyro-vae train mnist_vae_burda --data-dir ../shared/data --epochs 10
  pyro-vae evaluate runs/digits-... --num-samples 5000
  pyro-vae sample runs/digits-... --n 64 --out samples.png
  pyro-vae compare runs/digits-... --particles 1,5,50
  pyro-vae anomaly RUN_DIR --against fashion-mnist --data-dir ../shared/data
  pyro-vae impute RUN_DIR --mask box ; pyro-vae probe RUN_A RUN_B ; pyro-vae traverse RUN_DIR
  pyro-vae gaps RUN_DIR --n 100         # approximation/amortization gaps, NUTS vs q(z|x)
"""

#: What `pyro-vae train` runs with no recipe on the digits (models/digits_vae.toml).
DEFAULT_RECIPE = "digits_vae"

# command-line flag -> (recipe table, key)
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"),
    "binarize": ("data", "binarize"), "download": ("data", "download"),
    "latent_dim": ("model", "latent_dim"), "network": ("model", "network"),
    "likelihood": ("model", "likelihood"), "prior": ("model", "prior"),
    "prior_components": ("model", "prior_components"),
    "bayesian_decoder": ("model", "bayesian_decoder"), "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "learning_rate"),
    "objective": ("train", "objective"), "particles": ("train", "particles"),
    "alpha": ("train", "alpha"), "on_nan": ("train", "on_nan"),
    "beta": ("train", "beta"), "kl_warmup_epochs": ("train", "kl_warmup_epochs"),
    "free_bits": ("train", "free_bits"),
    "seed": ("train", "seed"), "device": ("train", "device"),
    "eval_samples": ("evaluate", "num_samples"),
    "model": ("model", "kind"), "num_labels": ("data", "num_labels"),
    "aux_loss_weight": ("train", "aux_loss_weight"), "quadrants": ("model", "quadrants"),
    "m2_schedule": ("train", "m2_schedule"), "labelled_every": ("train", "labelled_every"),
    "threads": ("train", "threads"), "latent_map": ("evaluate", "latent_map"),
    "guide": ("model", "guide"), "guide_rank": ("model", "guide_rank"),
    "flow_layers": ("model", "flow_layers"), "plugin": ("plugins", ""),
    "categorical_latents": ("model", "categorical_latents"),
    "categories": ("model", "categories"), "temperature": ("train", "temperature"),
}
#: What may change when a run is continued with --resume.
RESUMABLE_FLAGS = {"epochs", "device", "eval_samples", "data_dir", "lr", "on_nan", "threads",
                   "latent_map", "plugin"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders written the Pyro way.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train", help="train a VAE and write a run directory",
        description="Train a VAE (model/guide pair, SVI) and write a run directory: "
        "config.toml, checkpoint.pt, metrics.jsonl, summary.json and pictures. Flags override "
        "the recipe; with no arguments it trains on the embedded 8x8 digits.")
    train.add_argument("recipe", nargs="?", help="a packaged recipe's name (`pyro-vae "
                       "recipes` lists them) or the path of a TOML recipe")
    train.add_argument("--dataset", help="digits | mnist | fashion-mnist | binarized-mnist | "
                       "file:PATH.npz")
    train.add_argument("--data-dir", help="folder with the MNIST-family files "
                       "(default: $PYRO_VAE_DATA_DIR, else ./data)")
    train.add_argument("--download", action="store_true", default=None,
                       help="download MNIST/Fashion-MNIST with torchvision if missing")
    train.add_argument("--binarize", choices=["auto", "dynamic", "static", "none"],
                       help="auto (default): dynamic for the Bernoulli likelihood, none for "
                       "the others; dynamic: fresh Bernoulli draw per epoch; static: one draw")
    train.add_argument("--epochs", type=int, help="number of passes over the training split")
    train.add_argument("--batch-size", type=int, help="minibatch size")
    train.add_argument("--lr", type=float, help="Adam learning rate")
    train.add_argument("--latent-dim", type=int, help="size of z")
    train.add_argument("--network", help=f"encoder/decoder family: {NETWORKS.help_text()}")
    train.add_argument("--likelihood", help=f"p(x|z): {LIKELIHOODS.help_text()}")
    train.add_argument("--prior", help=f"p(z): {PRIORS.help_text()} (normal: N(0, I); mixture "
                       "of Gaussians; vamp: VampPrior, pseudo-inputs through the encoder; flow: "
                       "affine couplings)")
    train.add_argument("--guide", help=f"q(z|x): {GUIDES.help_text()} (diagonal Gaussian; "
                       "low-rank Gaussian; inverse autoregressive flow)")
    train.add_argument("--guide-rank", type=int, help="rank of the lowrank guide (default 2)")
    train.add_argument("--flow-layers", type=int,
                       help="layers of the flow prior / the iaf guide (default 4)")
    train.add_argument("--prior-components", type=int,
                       help="mixture components / VampPrior pseudo-inputs (10 / 500)")
    train.add_argument("--bayesian-decoder", choices=["none", "last", "all"],
                       help="priors on the decoder's weights (last layer or all) with a "
                       "mean-field guide; objectives elbo and meanfield")
    train.add_argument("--objective",
                       help=f"{OBJECTIVES.help_text()}. elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL); "
                       "iwae: importance-weighted bound; dreg: IWAE with doubly "
                       "reparameterized gradients; stl: sticking the landing; renyi: VR-alpha; "
                       "score: score-function ELBO with a baseline; vimco: IWAE with VIMCO "
                       "baselines; discrete models: concrete (Gumbel-Softmax relaxation), "
                       "straight_through, enumerate (exact sum over codes)")
    train.add_argument("--particles", type=int, help="vectorized samples K per datapoint")
    train.add_argument("--alpha", type=float, help="alpha of the Renyi bound (not 1)")
    train.add_argument("--beta", type=float, help="KL weight (beta-VAE); 1 is the ELBO")
    train.add_argument("--kl-warmup-epochs", type=int,
                       help="epochs of linear KL annealing from 0 to beta")
    train.add_argument("--free-bits", type=float,
                       help="free bits: nats per latent dimension below which the KL is not "
                       "pushed down (Kingma et al. 2016); 0 disables")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--on-nan", choices=["stop", "rollback"],
                       help="on a NaN/inf loss: stop (default), or roll back to the last good "
                       "state with half the learning rate")
    train.add_argument("--device", choices=["cpu", "cuda"], help="where to train")
    train.add_argument("--latent-map", choices=["tsne", "pca"],
                       help="latent.png for codes of more than 2 dimensions: t-SNE of 1,000 "
                       "test encodings (default) or the first two principal components (fast)")
    train.add_argument("--eval-samples", type=int,
                       help="importance samples K for the final test log p(x) (default 5000)")
    train.add_argument("--model",
                       help=f"{MODEL_KINDS.help_text()}. vae; cvae: label-conditional p(x|z, y); "
                       "m2: semi-supervised M2; quadrant_baseline / quadrant_cvae: complete "
                       "images from --quadrants; discrete: K categorical latents of C classes")
    train.add_argument("--categorical-latents", type=int,
                       help="discrete: number K of categorical latent variables")
    train.add_argument("--categories", type=int,
                       help="discrete: classes C of each (2: Bernoulli latents)")
    train.add_argument("--temperature", type=float,
                       help="concrete/straight_through: initial relaxation temperature")
    train.add_argument("--quadrants", type=int,
                       help="quadrant models: quadrants given (1, 2 or 3)")
    train.add_argument("--num-labels", type=int,
                       help="m2: training labels kept, balanced over classes (0: all)")
    train.add_argument("--aux-loss-weight", type=float,
                       help="m2: weight of -log q(y|x) per labelled datapoint (default 50)")
    train.add_argument("--m2-schedule",
                       help="m2: 'interleaved' (Pyro's example: a labelled step every "
                       "--labelled-every unlabelled steps) or 'paired' (both in every step)")
    train.add_argument("--labelled-every", type=int,
                       help="m2, interleaved: a labelled batch every k steps (0: each labelled "
                       "batch once an epoch, spread evenly)")
    train.add_argument("--out", help="run directory (default: runs/DATASET-TIME)")
    train.add_argument("--logger", action="append", choices=["tensorboard", "mlflow"],
                       help="also log to TensorBoard (RUN_DIR/tensorboard) or MLflow "
                       "($MLFLOW_TRACKING_URI, else ./mlruns); repeat for both; needs the "
                       "extra: pip install \"pyro-vae[tensorboard]\" or \"pyro-vae[mlflow]\"")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last complete epoch")

    evaluate = commands.add_parser(
        "evaluate", help="score a trained run: ELBO and importance-sampled log p(x)",
        description="Per-datapoint ELBO and importance-sampled log p(x) (log-mean-exp of K "
        "weights), with standard errors over the split, active units and KL per dimension.")
    evaluate.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    evaluate.add_argument("--num-samples", type=int, default=5000, help="K (default 5000)")
    evaluate.add_argument("--split", choices=["test", "validation"], default="test")
    evaluate.add_argument("--dataset", help="score another dataset of the same image shape "
                          "(e.g. for anomaly scores)")
    evaluate.add_argument("--data-dir", help="data folder for --dataset")
    evaluate.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")

    sample = commands.add_parser("sample", help="draw images from a trained model",
                                 description="Draw x ~ p(x): a grid picture (.png) or the raw "
                                 "samples in data space as array x (.npz, with their means).")
    sample.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    sample.add_argument("--n", type=int, default=64,
                        help="how many images (default 64); a cvae/m2 picture without --label "
                        "shows every label in turn, --n rounded down to a multiple of the "
                        "number of labels")
    sample.add_argument("--out", help="FILE.png or FILE.npz (default RUN_DIR/samples-N.png)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--label", type=int, help="cvae/m2: draw x ~ p(x|y) for this label "
                        "(default: a grid of every label x several z)")
    compare = commands.add_parser(
        "compare", help="the estimator lab: bounds, gradient variance and SNR per objective and K",
        description="Measure, on one fixed test minibatch and the same seeds, each objective at "
        "each K: the bound with its standard error, the variance and signal-to-noise ratio of "
        "the gradient for encoder and decoder parameters, and the time per step. Writes "
        "compare.csv, compare.json, bound_vs_k.png and snr_vs_k.png.")
    compare.add_argument("run_dir", nargs="?", help="a trained run (default: a fresh, untrained "
                         "model of the default recipe)")
    compare.add_argument("--objectives",
                         help="comma-separated (default elbo,iwae,dreg,stl,score; for a "
                         "discrete run score,vimco,concrete,straight_through,enumerate)")
    compare.add_argument("--temperatures", default="1.0",
                         help="concrete/straight_through: comma-separated temperatures")
    compare.add_argument("--particles", default="1,5,50", help="comma-separated K values")
    compare.add_argument("--repeats", type=int, default=100,
                         help="independent draws per estimate (default 100)")
    compare.add_argument("--batch-size", type=int, default=64, help="datapoints in the batch")
    compare.add_argument("--alpha", type=float, default=0.5, help="alpha for renyi")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--dataset", help="dataset of a fresh model (default digits)")
    compare.add_argument("--data-dir", help="data folder")
    compare.add_argument("--out", help="output folder (default RUN_DIR/compare or "
                         "runs/compare-TIME)")
    commands.add_parser("recipes", help="list the recipes packaged with pyro-vae",
                        description="The recipes shipped with the library (the repository's "
                        "models/): `pyro-vae train NAME` trains one, and `--path` shows "
                        "where they are to copy and edit.").add_argument(
        "--path", action="store_true", help="print the folder that holds them")
    add_application_parsers(commands)
    add_diagnostics_parsers(commands)
    for command in commands.choices.values():
        command.add_argument("--threads", type=int, metavar="N",
                             help="torch threads (default: $OMP_NUM_THREADS, else 1: fastest "
                             "for these models on a shared machine; see the README)")
        command.add_argument("--plugin", action="append", metavar="MODULE",
                             help="import MODULE first, so the priors, guides, likelihoods, "
                             "objectives, models and datasets it registers can be named "
                             "(repeatable; also the recipe key plugins = [...] and the "
                             "pyro_vae.plugins entry-point group)")
    return parser


def _early_plugins(argv: Sequence[str]) -> list[str]:
    """The --plugin modules of ``argv``, read before the parser is built (its help and the
    names it accepts include what they register)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    known, _ = early.parse_known_args(list(argv))
    return known.plugin


def apply_threads(requested: int | None) -> int:
    """Set torch's thread count: ``requested`` if positive, else $OMP_NUM_THREADS, else 1."""
    import torch

    if requested is not None and requested < 0:
        raise ConfigError(f"--threads {requested}: give a positive number of threads, or 0 "
                          "for the default ($OMP_NUM_THREADS, else 1).")
    threads = requested or 0
    if not threads:
        value = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(value) if value.isdigit() and int(value) > 0 else 1
    torch.set_num_threads(threads)
    return threads


def _train_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if section == "plugins":  # recorded in the run's config.toml
            overrides["plugins"] = value
        else:
            overrides.setdefault(section, {})[key] = value
    return overrides


def _fresh_run_dir(dataset: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset.removeprefix("file:")).stem).strip("-")
    base = Path("runs") / f"{name or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = Path(f"{base}-{suffix}")
    return candidate


def _train_config(args: argparse.Namespace):
    from pyro_vae.config import Config, find_recipe
    from pyro_vae.runs import read_run_config

    overrides = _train_overrides(args)
    if args.resume:
        if not args.out:
            raise ConfigError("--resume continues an existing run: name it with --out RUN_DIR.")
        if args.recipe:
            raise ConfigError("--resume takes its recipe from RUN_DIR/config.toml; leave out "
                              f"{args.recipe}.")
        saved = read_run_config(Path(args.out))
        settings = saved.to_dict()
        # A flag that repeats the saved value changes nothing, so it is accepted.
        changed = sorted(f for f in TRAIN_FLAGS if getattr(args, f) is not None
                         and f not in RESUMABLE_FLAGS
                         and getattr(args, f) != settings[TRAIN_FLAGS[f][0]][TRAIN_FLAGS[f][1]])
        if changed:
            raise ConfigError(f"--{changed[0].replace('_', '-')} cannot change when resuming: a "
                              "resumed run keeps its configuration (only --epochs, --device, "
                              "--eval-samples, --data-dir, --lr and --on-nan may change). Start a new run "
                              "with another --out instead.")
        return saved.with_overrides(overrides)
    if args.recipe:
        config = Config.from_toml(find_recipe(args.recipe))
    elif args.dataset in (None, "digits"):
        # No recipe on the digits: the packaged default recipe (the library's defaults plus
        # the KL warm-up the 8x8 digits need against collapse).
        config = Config.from_toml(find_recipe(DEFAULT_RECIPE))
    else:
        config = Config()
    return config.with_overrides(overrides)


def command_train(args: argparse.Namespace) -> int:
    from pyro_vae.distributed import launched_by_torchrun
    from pyro_vae.loggers import make_loggers
    from pyro_vae.progress import Callbacks, TqdmProgress
    from pyro_vae.training import train

    config = _train_config(args)
    apply_threads(config.train.threads)
    main_process = not launched_by_torchrun() or os.environ["RANK"] == "0"
    if launched_by_torchrun() and not args.out:
        raise ConfigError("under torchrun, give --out: every process must write to (and read "
                          "from) the same run directory.")
    run_dir = Path(args.out) if args.out else _fresh_run_dir(config.data.dataset)
    loggers = make_loggers(args.logger or [], config, run_dir, args.resume) \
        if main_process else []
    if main_process:
        print(f"training into {run_dir}", file=sys.stderr)
    try:
        with TqdmProgress(quiet=not main_process) as progress, _closing(loggers):
            summary = train(config, run_dir, resume=args.resume,
                            progress=Callbacks([progress, *loggers]) if loggers else progress)
            for logger in loggers:
                logger.finish(summary)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, SIGTERM or SIGHUP (see progress.py)
        signum = getattr(interrupt, "signum", signal.SIGINT)
        if main_process:  # rank 0 explains
            how = "interrupted" if signum == signal.SIGINT else \
                f"stopped by {signal.Signals(signum).name}"
            if (run_dir / "checkpoint.pt").exists():
                message = (f"pyro-vae: {how}. Every completed epoch is saved in {run_dir}; "
                           f"continue with: pyro-vae train --out {run_dir} --resume")
            else:
                message = (f"pyro-vae: {how} before the first epoch finished; nothing was "
                           f"saved. Train again with the same --out {run_dir}.")
            _say(message)
        return 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    if not main_process:  # rank 0 reports
        return 0
    print(_format_summary(summary))
    pictures = ("completions.png, elbo.png" if has(config, "completions") else
                "samples.png, reconstructions.png, categories.png, elbo.png"
                if has(config, "categorical_latents") else
                "samples.png (label x z grid), reconstructions.png, elbo.png, label_confusion.png"
                if has(config, "labels") else
                "samples.png, reconstructions.png, interpolation.png, latent.png, elbo.png, kl.png")
    print(f"run directory: {run_dir} (summary.json, metrics.jsonl, checkpoint.pt and pictures: "
          f"{pictures})")
    return 0


def _say(message: str) -> None:
    """Print to stderr, unless it is gone (a closed terminal after SIGHUP)."""
    try:
        print(message, file=sys.stderr)
    except OSError:
        pass


@contextlib.contextmanager
def _closing(loggers: list) -> Iterator[None]:
    """Loggers of a run that stops early are closed, their runs marked killed or failed."""
    try:
        yield
    except BaseException as error:
        for logger in loggers:
            logger.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise


def _format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"dataset: {summary['dataset']} ({summary.get('split', 'test')} split, "
        f"{summary['num_test_datapoints']} datapoints)",
        f"ELBO: {summary['test_elbo']:.3f} ± {summary['test_elbo_stderr']:.3f} nats",
        f"log p(x), K={summary['num_importance_samples']} importance samples: "
        f"{summary['test_log_likelihood']:.3f} ± {summary['test_log_likelihood_stderr']:.3f} nats"
        + (f" (± over test points; Monte Carlo error ± "
           f"{summary['test_log_likelihood_mc_stderr']:.3f})"
           if summary.get("test_log_likelihood_mc_stderr") is not None else ""),
        f"active units: {summary['active_units']} of {summary['latent_dim']}",
    ]
    if summary.get("score_name"):  # e.g. log p(x|y) of a conditional model
        lines[2] = lines[2].replace("log p(x)", summary["score_name"], 1)
    if "test_exact_log_likelihood" in summary:  # a discrete code small enough to sum over
        lines.insert(3, f"log p(x), exact (sum over all codes): "
                     f"{summary['test_exact_log_likelihood']:.3f} ± "
                     f"{summary['test_exact_log_likelihood_stderr']:.3f} nats")
    if "test_accuracy" in summary:
        lines.append(f"classifier accuracy argmax q(y|x): {100 * summary['test_accuracy']:.2f}"
                     f" ± {100 * summary['test_accuracy_stderr']:.2f} %")
    if summary.get("label_fidelity") is not None:
        per_label = " ".join(f"{c}:{100 * f:.0f}" for c, f in
                             enumerate(summary["label_fidelity_per_label"]))
        lines += [f"label fidelity of {summary['label_fidelity_samples']} samples E[x|z, y] "
                  f"(draws x ~ p(x|y)): {100 * summary['label_fidelity']:.1f} ± "
                  f"{100 * summary['label_fidelity_stderr']:.1f} % "
                  f"({100 * summary['label_fidelity_draws']:.1f} %) recognised as y by a "
                  f"classifier of {100 * summary['fidelity_classifier_test_accuracy']:.1f} % "
                  "test accuracy", f"  per label (%): {per_label}"]
    return "\n".join(lines)


def command_evaluate(args: argparse.Namespace) -> int:
    import torch

    from pyro_vae.evaluate import estimate_log_likelihood, latent_activity
    from pyro_vae.progress import TqdmProgress
    from pyro_vae.runs import finite_or_none, load_trained
    from pyro_vae.training import prepare_data, resolve_device

    _positive_flag("num-samples", args.num_samples)
    device = resolve_device(args.device)
    config, vae, checkpoint = load_trained(args.run_dir, device)
    if args.dataset or args.data_dir:
        config = config.with_overrides({"data": {
            k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}})
    data = prepare_data(config, device)
    check_same_shape(config, data, checkpoint)
    x, y = data.split(args.split)
    if has(config, "labels"):
        from pyro_vae.conditional import check_labels
        check_labels(y, config.model.num_classes, f"the {args.split} split of "
                     f"{config.data.dataset!r}")
    if len(x) == 0:
        raise ConfigError(f"the {args.split} split of {config.data.dataset!r} is empty (was "
                          "validation_fraction 0?); use --split test.")
    progress = TqdmProgress()
    progress.start_evaluation(len(x), args.num_samples)
    torch.manual_seed(0)
    with torch.no_grad():
        estimate = estimate_log_likelihood(vae, x, args.num_samples, config.evaluate.max_chunk,
                                           progress=progress.evaluated,
                                           y=y if getattr(vae, "conditional", False) else None)
    progress.end_evaluation()
    summary = {
        "run_dir": str(args.run_dir), "dataset": config.data.dataset, "split": args.split,
        "num_test_datapoints": len(x), "latent_dim": config.model.latent_dim,
        "test_elbo": estimate.mean_elbo, "test_elbo_stderr": estimate.elbo_stderr,
        "test_log_likelihood": estimate.mean_log_likelihood,
        "test_log_likelihood_stderr": estimate.log_likelihood_stderr,
        "test_log_likelihood_mc_stderr": estimate.log_likelihood_mc_stderr,
        "num_importance_samples": estimate.num_samples,
        "score_name": getattr(vae, "score_name", "log p(x)"),
        **({"active_units": 0} if not has(config, "latent_means") else
           latent_activity(vae, x, y if has(config, "labels") else None)),
        **(vae.test_summary(x, y, **({"classifier_x": data.grey(args.split)}
                                     if has(config, "semi_supervised") else {}))
           if hasattr(vae, "test_summary") else {}),
    }
    # Strict JSON: a standard error of one datapoint is null, not NaN.
    print(json.dumps(finite_or_none(summary), indent=2, allow_nan=False) if args.json
          else _format_summary(summary))
    return 0


def command_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pyro_vae.data import data_shape, is_vector_shape
    from pyro_vae.faults import check_memory, decoded_bytes
    from pyro_vae.plots import save_image_grid, save_vector_scatter
    from pyro_vae.runs import atomic_write_bytes, load_trained

    _positive_flag("n", args.n)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"samples-{args.n}.png"
    if out.suffix not in (".png", ".npz"):
        raise ConfigError(f"--out {out} must end in .png (a picture) or .npz (raw samples).")
    config, vae, checkpoint = load_trained(args.run_dir)
    shape = tuple(checkpoint["image_shape"])
    # z, the decoder's output, its mean and a draw: four arrays of n images.
    check_memory(f"sample --n {args.n}", 4 * decoded_bytes(args.n, shape,
                                                            config.model.latent_dim),
                 "cpu", "draw fewer samples at a time (a smaller --n, several files).")
    torch.manual_seed(args.seed)
    title = f"E[x|z], z ~ p(z) ({config.data.dataset})"
    labels = _sample_labels(args, config, vae)
    with torch.no_grad():
        z, output = vae.generate(args.n) if labels is None else vae.generate(args.n,
                                                                             labels=labels)
        means = vae.likelihood.mean(output)
        draws = vae.likelihood(output).sample()
    columns = min(args.n, 8 if args.n <= 64 else 16)
    if labels is not None:
        title = f"E[x|z, y={args.label}], z ~ p(z) ({config.data.dataset})"
    elif has(config, "labels") and out.suffix == ".png":
        # Every label in turn: with --n of at least the number of labels C, a grid of one row
        # per label and n // C draws of z shared by the rows (n rounded down to a multiple of
        # C); with fewer, one image each of labels 0, 1, …, n − 1.
        if args.n >= config.model.num_classes:
            columns = args.n // config.model.num_classes
            with torch.no_grad():
                means = vae.label_grid(columns)
            title = f"E[x|z, y]: one row per label, {columns} z ~ p(z) per row"
        else:
            columns = args.n
            title = f"E[x|z, y] for labels 0 … {args.n - 1}, z ~ p(z)"
    if out.suffix == ".png" and is_vector_shape(shape):  # vectors: a scatter, not a picture
        save_vector_scatter(out, draws, None, f"draws x ~ p(x) ({config.data.dataset})")
    elif out.suffix == ".png":
        save_image_grid(out, means, shape, columns, title)
    else:
        import io
        buffer = io.BytesIO()  # the data's own layout: (N, D) for vectors, (N, C, H, W) else
        np.savez(buffer, x=draws.reshape(args.n, *data_shape(shape)).numpy(),
                 mean=means.reshape(args.n, *data_shape(shape)).numpy(), z=z.numpy())
        atomic_write_bytes(out, buffer.getvalue())
    rounded = len(means) != args.n
    print(f"wrote {len(means)} samples to {out}" + (
        f" ({columns} per label: --n {args.n} rounded down to a multiple of the "
        f"{config.model.num_classes} labels)" if rounded else ""))
    if labels is not None:
        print(_label_fidelity_report(args.run_dir, config, labels, means, draws))
    return 0


def _label_fidelity_report(run_dir: str, config, labels, means, draws) -> str:
    """How many of the ``--label`` samples the run's classifier recognises as that label."""
    from pyro_vae import fidelity
    from pyro_vae.training import prepare_data

    path = Path(run_dir) / fidelity.CLASSIFIER_FILE
    if path.exists():
        classifier = fidelity.load_label_classifier(path)
    else:  # a run trained before the classifier was kept: fit it again
        try:
            data = prepare_data(config, check=False)
        except PyroVAEError as error:
            return f"label fidelity not measured (no {path.name} in the run, and {error})"
        classifier = fidelity.fit_label_classifier(
            data.train_x, data.train_y, config.model.num_classes, data.test_x, data.test_y,
            seed=config.train.seed)
    return "\n".join(fidelity.describe(fidelity.fidelity_of(images, labels, classifier, what))
                     for images, what in ((means, "means"), (draws, "draws")))


def _sample_labels(args: argparse.Namespace, config, vae):
    """The labels ``--label`` asks for (``None`` without it); checked against the model."""
    import torch

    if has(config, "completions"):
        raise ConfigError(f"{args.run_dir} holds a {config.model.kind} model, which completes "
                          "given quadrants rather than drawing images from nothing; its "
                          "completions are in RUN_DIR/completions.png.")
    if args.label is None:
        return None
    if not has(config, "labels"):
        raise ConfigError(f"--label {args.label}: {args.run_dir} holds an unconditional VAE, "
                          "which draws x ~ p(x) with no label. Train one with --model cvae to "
                          "draw from p(x|y), or leave out --label.")
    from pyro_vae.conditional import check_label_flag

    check_label_flag(args.label, config.model.num_classes)
    return torch.full((args.n,), args.label, dtype=torch.long)


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


def command_compare(args: argparse.Namespace) -> int:
    import torch

    from pyro_vae.config import Config
    from pyro_vae.faults import check_memory, decoded_bytes
    from pyro_vae.lab import (compare_estimators, reports_to_csv, reports_to_markdown,
                              save_lab_plots)
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import DISCRETE_OBJECTIVES
    from pyro_vae.runs import atomic_write_text, load_trained, make_run_dir, write_json
    from pyro_vae.training import prepare_data

    particles = _csv_list("particles", args.particles, int)
    temperatures = _csv_list("temperatures", args.temperatures, float)
    if any(not t > 0 for t in temperatures):
        raise ConfigError(f"--temperatures {args.temperatures!r}: temperatures must be "
                          "positive.")
    if args.repeats < 2:
        raise ConfigError(f"--repeats {args.repeats}: variances and standard errors need at "
                          "least 2 draws.")
    _positive_flag("batch-size", args.batch_size)
    if args.run_dir:
        config, vae, checkpoint = load_trained(args.run_dir)
        if config.model.bayesian_decoder != "none" or not has(config, "estimator_lab"):
            raise ConfigError(
                f"{args.run_dir} is not a plain VAE (bayesian_decoder = "
                f"\"{config.model.bayesian_decoder}\", kind = \"{config.model.kind}\"); the "
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
    if "renyi" in objectives and args.alpha == 1.0:
        raise ConfigError("--alpha 1 makes the Renyi bound the ELBO itself; choose another.")
    if not math.isfinite(args.alpha):
        raise ConfigError(f"--alpha {args.alpha} must be a finite number (the Renyi bound's "
                          "alpha, not 1; 0 is IWAE).")
    overrides = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}
    if overrides:
        config = config.with_overrides({"data": overrides})
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
        "reports": [vars(r) for r in reports]})
    save_lab_plots(reports, out)
    print(reports_to_markdown(reports))
    print(f"wrote {out / 'compare.csv'}, compare.json, bound_vs_k.png and snr_vs_k.png")
    return 0


def command_recipes(args: argparse.Namespace) -> int:
    from pyro_vae.config import RECIPES, recipe_names

    if args.path:
        print(RECIPES.resolve())
        return 0
    for name in recipe_names():
        comment = (RECIPES / f"{name}.toml").read_text(encoding="utf-8").split("\n", 1)[0]
        about = comment.lstrip("# ").strip() if comment.startswith("#") else ""
        print(f"{name:<28} {about}".rstrip())
    return 0


COMMANDS = {"train": command_train, "recipes": command_recipes, "evaluate": command_evaluate, "sample": command_sample,
            "compare": command_compare, **APPLICATION_COMMANDS,
            **DIAGNOSTICS_COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins(_early_plugins(argv), "given with --plugin")
        args = build_parser().parse_args(argv)
        if args.command != "recipes":  # train applies its recipe's value once it has read it
            apply_threads(args.threads)
        return COMMANDS[args.command](args)
    except PyroVAEError as error:
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        # Under torchrun every process meets the same error; the first one of each node says it.
        if rank == "0" or os.environ.get("LOCAL_RANK") == "0":
            who = "pyro-vae" if rank == "0" else f"pyro-vae (process {rank})"
            print(f"{who}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\npyro-vae: interrupted; nothing was left half-written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`pyro-vae evaluate --json | head -1`): stop quietly, and keep
        # Python's final flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (RuntimeError, MemoryError) as error:
        from pyro_vae.faults import is_out_of_memory, out_of_memory_error

        if not is_out_of_memory(error):
            raise
        print(f"pyro-vae: error: {out_of_memory_error(error, args.command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
