"""`pyro-vae train`: train a VAE from a recipe and flags into a run directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from pyro_vae.cli.common import apply_threads
from pyro_vae.config import Config, find_recipe
from pyro_vae.errors import ConfigError
from pyro_vae.registry import GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES, PRIORS

# The training loop, loggers and progress bars import torch: they are imported in the functions
# that use them, so that `pyro-vae train --help` parses without torch (see cli/main.py).


#: What `pyro-vae train` runs with no recipe on the digits (models/digits_vae.toml).
DEFAULT_RECIPE = "digits_vae"


# command-line flag -> (recipe table, key)
TRAIN_FLAGS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset"), "data_dir": ("data", "data_dir"),
    "binarize": ("data", "binarize"), "download": ("data", "download"),
    "latent_dim": ("model", "latent_dim"), "network": ("model", "network"),
    "likelihood": ("model", "likelihood"), "prior": ("model", "prior"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "learning_rate"),
    "objective": ("train", "objective"), "particles": ("train", "particles"),
    "alpha": ("objective", "alpha"), "on_nan": ("train", "on_nan"),
    "beta": ("train", "beta"), "kl_warmup_epochs": ("train", "kl_warmup_epochs"),
    "free_bits": ("train", "free_bits"),
    "lr_decay_epochs": ("train", "lr_decay_epochs"), "lr_decay_to": ("train", "lr_decay_to"),
    "seed": ("train", "seed"), "device": ("train", "device"),
    "eval_samples": ("evaluate", "num_samples"), "scoring": ("evaluate", "scoring"),
    "model": ("model", "kind"), "num_labels": ("data", "num_labels"),
    "threads": ("train", "threads"), "latent_map": ("evaluate", "latent_map"),
    "guide": ("model", "guide"), "plugin": ("plugins", ""),
    "temperature": ("objective", "temperature"),
    # Shortcuts for the options of built-in components (each is --set ROLE.OPTION=VALUE):
    "prior_components": ("prior", "components"), "guide_rank": ("guide", "rank"),
    # the flow prior's and the IAF guide's layers: the old [model] key, which goes to
    # whichever of the two the run uses (pyro_vae/config/legacy.py)
    "flow_layers": ("model", "flow_layers"),
    "bayesian_decoder": ("kind", "bayesian_decoder"),
    "categorical_latents": ("kind", "categorical_latents"), "categories": ("kind", "categories"),
    "quadrants": ("kind", "quadrants"), "baseline_run": ("kind", "baseline_run"),
    "quadrant_generation": ("kind", "generation"),
    "aux_loss_weight": ("kind", "aux_loss_weight"), "m2_schedule": ("kind", "m2_schedule"),
    "labelled_every": ("kind", "labelled_every"),
}


#: What may change when a run is continued with --resume.
RESUMABLE_FLAGS = {"epochs", "device", "eval_samples", "scoring", "data_dir", "lr", "on_nan", "threads",
                   "latent_map", "plugin", "download"}


def _warmup_epochs(text: str) -> int | str:
    """``--kl-warmup-epochs``: a whole number of epochs or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a whole number of epochs nor 'auto'") from None


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a VAE and write a run directory",
        description="Train a VAE (model/guide pair, SVI) and write a run directory: "
        "config.toml, checkpoint.pt, metrics.jsonl, summary.json and pictures. Flags override "
        "the recipe; with no arguments it trains on the embedded 8x8 digits.")
    parser.add_argument("recipe", nargs="?", help="a packaged recipe's name (`pyro-vae "
                       "recipes` lists them) or the path of a TOML recipe")
    parser.add_argument("--dataset", help="digits | mnist | fashion-mnist | binarized-mnist | "
                       "file:PATH.npz")
    parser.add_argument("--data-dir", help="folder with the MNIST-family files "
                       "(default: $PYRO_VAE_DATA_DIR, else ./data)")
    parser.add_argument("--download", action="store_true", default=None,
                       help="download MNIST/Fashion-MNIST with torchvision if missing")
    parser.add_argument("--binarize", choices=["auto", "dynamic", "static", "none", "grey"],
                       help="auto (default): dynamic for the Bernoulli likelihood, none for "
                       "the others; dynamic: fresh Bernoulli draw per epoch; static: one draw; grey "
                       "(Bernoulli only): the grey levels are the targets, as Pyro's examples")
    parser.add_argument("--epochs", type=int, help="number of passes over the training split")
    parser.add_argument("--batch-size", type=int, help="minibatch size")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument("--latent-dim", type=int, help="size of z")
    parser.add_argument("--network", help=f"encoder/decoder family: {NETWORKS.help_text()}")
    parser.add_argument("--likelihood", help=f"p(x|z): {LIKELIHOODS.help_text()}")
    parser.add_argument("--prior", help=f"p(z): {PRIORS.help_text()} (normal: N(0, I); mixture "
                       "of Gaussians; vamp: VampPrior, pseudo-inputs through the encoder; flow: "
                       "affine couplings)")
    parser.add_argument("--guide", help=f"q(z|x): {GUIDES.help_text()} (diagonal Gaussian; "
                       "low-rank Gaussian; inverse autoregressive flow)")
    parser.add_argument("--guide-rank", type=int, help="rank of the lowrank guide (default 2; = --set "
                       "guide.rank=R)")
    parser.add_argument("--flow-layers", type=int,
                       help="layers of the flow prior / the iaf guide (default 4; = --set "
                       "prior.layers=L or guide.layers=L)")
    parser.add_argument("--prior-components", type=int,
                       help="mixture components / VampPrior pseudo-inputs (10 / 500; = --set "
                       "prior.components=N)")
    parser.add_argument("--bayesian-decoder", choices=["none", "last", "all"],
                       help="priors on the decoder's weights (last layer or all) with a "
                       "mean-field guide; objectives elbo and meanfield")
    parser.add_argument("--objective",
                       help=f"{OBJECTIVES.help_text()}. elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO (analytic KL); "
                       "iwae: importance-weighted bound; dreg: IWAE with doubly "
                       "reparameterized gradients; stl: sticking the landing; renyi: VR-alpha; "
                       "score: score-function ELBO with a baseline; vimco: IWAE with VIMCO "
                       "baselines; discrete models: concrete (Gumbel-Softmax relaxation), "
                       "straight_through, enumerate (exact sum over codes)")
    parser.add_argument("--particles", type=int, help="vectorized samples K per datapoint")
    parser.add_argument("--alpha", type=float, help="alpha of the Renyi bound (not 1)")
    parser.add_argument("--beta", type=float, help="KL weight (beta-VAE); 1 is the ELBO")
    parser.add_argument("--kl-warmup-epochs", type=_warmup_epochs,
                       help="epochs of linear KL annealing from 0 to beta, or 'auto' (the "
                       "default: a tenth of the epochs)")
    parser.add_argument("--lr-decay-epochs", type=int,
                       help="lower the learning rate along a half cosine over the last N "
                       "epochs (0: constant, the default)")
    parser.add_argument("--lr-decay-to", type=float,
                       help="fraction of --lr left in the last epoch of the decay (default 0.01)")
    parser.add_argument("--free-bits", type=float,
                       help="free bits: nats per latent dimension below which the KL is not "
                       "pushed down (Kingma et al. 2016); 0 disables")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--on-nan", choices=["stop", "rollback"],
                       help="on a NaN/inf loss: stop (default), or roll back to the last good "
                       "state with half the learning rate")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where to train")
    parser.add_argument("--latent-map", choices=["tsne", "pca"],
                       help="latent.png for codes of more than 2 dimensions: t-SNE of 1,000 "
                       "test encodings (default) or the first two principal components (fast)")
    parser.add_argument("--eval-samples", type=int,
                       help="importance samples K for the final test log p(x) (default 5000; "
                       "see --scoring)")
    parser.add_argument("--scoring", choices=["auto", "full"],
                       help="the final scoring of the test images: auto (default) costs about "
                       "the training's time or less (fewer samples K, then the first test "
                       "images only, where K on all would take longer); full: every test "
                       "image with K, the papers' protocol, with the time it will take said "
                       "first")
    parser.add_argument("--model",
                       help=f"{MODEL_KINDS.help_text()}. vae; cvae: label-conditional p(x|z, y); "
                       "m2: semi-supervised M2; quadrant_baseline / quadrant_cvae: complete "
                       "images from --quadrants; discrete: K categorical latents of C classes")
    parser.add_argument("--categorical-latents", type=int,
                       help="discrete: number K of categorical latent variables")
    parser.add_argument("--categories", type=int,
                       help="discrete: classes C of each (2: Bernoulli latents)")
    parser.add_argument("--temperature", type=float,
                       help="concrete/straight_through: initial relaxation temperature")
    parser.add_argument("--quadrants", type=int,
                       help="quadrant models: quadrants given (1, 2 or 3)")
    parser.add_argument("--baseline-run", metavar="RUN",
                       help="quadrant_cvae: a trained quadrant_baseline run whose prediction "
                       "fills the prior network's missing pixels (Pyro's tutorial)")
    parser.add_argument("--quadrant-generation", choices=["given_and_z", "z"],
                       help="quadrant_cvae: the generation network reads the given pixels and "
                       "z (default) or z only (Pyro's tutorial)")
    parser.add_argument("--num-labels", type=int,
                       help="m2: training labels kept, balanced over classes (0: all)")
    parser.add_argument("--aux-loss-weight", type=float,
                       help="m2: weight of -log q(y|x) per labelled datapoint (default 50)")
    parser.add_argument("--m2-schedule",
                        help="m2: 'interleaved' (Pyro's example: a labelled step every "
                        "--labelled-every unlabelled steps) or 'paired' (both in every step)")
    parser.add_argument("--labelled-every", type=int,
                        help="m2, interleaved: a labelled batch every k steps (0: each labelled "
                        "batch once an epoch, spread evenly)")
    parser.add_argument("--out", help="run directory (default: runs/DATASET-TIME)")
    parser.add_argument("--logger", action="append", choices=["tensorboard", "mlflow"],
                       help="also log to TensorBoard (RUN_DIR/tensorboard) or MLflow "
                       "($MLFLOW_TRACKING_URI, else ./mlruns); repeat for both; needs the "
                       "extra: pip install \"pyro-vae[tensorboard]\" or \"pyro-vae[mlflow]\"")
    parser.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last complete epoch")
    parser.add_argument("--set", action="append", metavar="TABLE.KEY=VALUE",
                        help="set any recipe value, a component's option included: --set "
                        "prior.df=5 (an option of the prior the run uses), --set "
                        "model.latent_dim=2; repeat for several")


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
    from pyro_vae.options import assignments

    for table, values in assignments(getattr(args, "set", None)).items():
        overrides.setdefault(table, {}).update(values)
    return overrides


def _changed_flags(saved, settings: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The flags that would change a saved run's configuration (``settings``, its
    ``to_dict``): a flag that repeats the saved value changes nothing, so it is accepted,
    whichever table its option now lives in."""
    changed = []
    for flag, (section, key) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is None or flag in RESUMABLE_FLAGS:
            continue
        try:
            same = saved.with_overrides({section: {key: value}}).to_dict() == settings
        except ConfigError:
            same = False
        if not same:
            changed.append(flag)
    return sorted(changed)


def _fresh_run_dir(dataset: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(dataset.removeprefix("file:")).stem).strip("-")
    base = Path("runs") / f"{name or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, suffix = base, 1
    while candidate.exists():
        suffix += 1
        candidate = Path(f"{base}-{suffix}")
    return candidate


def _train_config(args: argparse.Namespace):
    overrides = _train_overrides(args)
    if args.resume:
        if not args.out:
            raise ConfigError("--resume continues an existing run: name it with --out RUN_DIR.")
        if args.recipe:
            raise ConfigError("--resume takes its recipe from RUN_DIR/config.toml; leave out "
                              f"{args.recipe}.")
        from pyro_vae.runs import read_run_config

        saved = read_run_config(Path(args.out))
        settings = saved.to_dict()
        changed = _changed_flags(saved, settings, args)
        if getattr(args, "set", None):
            raise ConfigError(f"--set {args.set[0]} cannot change a run when resuming: a "
                              "resumed run keeps its configuration. Start a new run with "
                              "another --out instead.")
        if changed:
            raise ConfigError(f"--{changed[0].replace('_', '-')} cannot change when resuming: a "
                              "resumed run keeps its configuration (only --epochs, --device, "
                              "--eval-samples, --scoring, --data-dir, --download, --lr and --on-nan may "
                              "change). Start a new run with another --out instead.")
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


def run(args: argparse.Namespace) -> int:
    from pyro_vae import training
    from pyro_vae.cli.evaluate import format_summary
    from pyro_vae.distributed import launched_by_torchrun
    from pyro_vae.loggers import make_loggers
    from pyro_vae.progress import Callbacks, TqdmProgress

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
            summary = training.train(config, run_dir, resume=args.resume,
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
    print(format_summary(summary))
    pictures = ", ".join(sorted(path.name for path in run_dir.glob("*.png")))
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
