"""`pyro-vae evaluate`: the scores of a trained run on a split (the same function as
the test summary of `train`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from pyro_vae.cli.common import check_same_shape, positive_flag
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.grey_targets import GREY_SCORE_NAME, binary_targets, grey_targets
from pyro_vae.models.conditional import check_labels
from pyro_vae.progress import TqdmProgress
from pyro_vae.protocol import display_name, has
from pyro_vae.runs import finite_or_none, load_trained
from pyro_vae.summary import split_scores
from pyro_vae.training import prepare_data, resolve_device


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "evaluate", help="score a trained run: ELBO and importance-sampled log p(x)",
        description="Per-datapoint ELBO and importance-sampled log p(x) (log-mean-exp of K "
        "weights), with standard errors over the split, active units and KL per dimension.")
    parser.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    parser.add_argument("--num-samples", type=int, default=5000, help="K (default 5000)")
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--dataset", help="score another dataset of the same image shape "
                          "(e.g. for anomaly scores)")
    parser.add_argument("--data-dir", help="data folder for --dataset")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--targets", choices=["binary", "grey"],
                        help="default: the test images as the run was scored after training. "
                        "grey: score a Bernoulli model trained on binary draws on the grey "
                        "levels, as Pyro's CVAE tutorial does (its 'CLL' is the negative ELBO "
                        "of this; not a likelihood). binary: score a run trained on grey "
                        "levels, or a statically binarized run, on the fixed binary draw of the test "
                        "images that runs with dynamic binarization are scored on (a true, "
                        "comparable log-likelihood)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    positive_flag("num-samples", args.num_samples)
    device = resolve_device(args.device)
    config, vae, checkpoint = load_trained(args.run_dir, device)
    if args.dataset or args.data_dir:
        config = config.with_overrides({"data": {
            k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir)) if v}})
    data = prepare_data(config, device)
    check_same_shape(config, data, checkpoint)
    x, y = data.split(args.split)
    targets, score_name = None, None
    if args.targets == "grey":
        targets, score_name = grey_targets(config, data, args.split), GREY_SCORE_NAME
    elif args.targets == "binary" and config.binarization != "dynamic":
        # A grey-trained or statically binarized run on the dynamic runs' binary draw
        # (refused for runs whose images are not binary draws).
        targets = binary_targets(config, data, args.split)
        score_name = getattr(vae, "score_name", "log p(x)")
    # M2 sums an absent label out of log p(x); only its test accuracy needs labels.
    if has(config, "labels") and y is None and not has(config, "semi_supervised"):
        raise DataError(
            f"the {args.split} split of {config.data.dataset!r} has no labels, but "
            f"{args.run_dir} holds a {display_name(config)}, which scores each image given its "
            "label. Evaluate it on labelled images (a .npz with an integer array y beside x), "
            "or score unlabelled images with a --model vae or m2 run (M2 sums its label out).")
    if has(config, "labels") and not (y is None and has(config, "semi_supervised")):
        check_labels(y, config.model.num_classes, f"the {args.split} split of "
                     f"{config.data.dataset!r}")
    if len(x) == 0:
        raise ConfigError(f"the {args.split} split of {config.data.dataset!r} is empty (was "
                          "validation_fraction 0?); use --split test.")
    torch.manual_seed(0)
    with torch.no_grad():  # the same scores as the test summary of a training run
        scores = split_scores(config, vae, data, args.split, args.num_samples, TqdmProgress(),
                              targets=targets, score_name=score_name)
    summary = {"run_dir": str(args.run_dir), "split": args.split,
               "targets": args.targets or ("grey" if config.binarization == "grey" else
                                           "as loaded" if config.binarization == "none" else
                                           "binary"),
               **scores}
    # Strict JSON: a standard error of one datapoint is null, not NaN.
    print(json.dumps(finite_or_none(summary), indent=2, allow_nan=False) if args.json
          else format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"dataset: {summary['dataset']} ({summary.get('split', 'test')} split, "
        f"{summary['num_test_datapoints']} datapoints)",
        f"ELBO: {summary['test_elbo']:.3f} ± {summary['test_elbo_stderr']:.3f} nats",
        f"log p(x), K={summary['num_importance_samples']} importance samples: "
        f"{summary['test_log_likelihood']:.3f} ± {summary['test_log_likelihood_stderr']:.3f} nats"
        + (f" (± over {summary.get('split', 'test')} points; Monte Carlo error ± "
           f"{summary['test_log_likelihood_mc_stderr']:.3f})"
           if summary.get("test_log_likelihood_mc_stderr") is not None else ""),
        f"active units: {summary['active_units']} of {summary['latent_dim']}"
        if summary.get("active_units") is not None else
        "active units: none (this model has no latent code)",
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
        shares = summary["label_fidelity_per_label"]
        per_label = " ".join(f"{c}:{100 * f:.0f}" for c, f in enumerate(shares) if f is not None)
        missing = [str(c) for c, f in enumerate(shares) if f is None]
        if missing:  # labels without training images: the classifier cannot recognise them
            per_label += f" (not measured, no training images: {', '.join(missing)})"
        lines += [f"label fidelity of {summary['label_fidelity_samples']} samples E[x|z, y] "
                  f"(draws x ~ p(x|y)): {100 * summary['label_fidelity']:.1f} ± "
                  f"{100 * summary['label_fidelity_stderr']:.1f} % "
                  f"({100 * summary['label_fidelity_draws']:.1f} %) recognised as y by a "
                  f"classifier of {_percent(summary['fidelity_classifier_test_accuracy'])} "
                  "test accuracy", f"  per label (%): {per_label}"]
    return "\n".join(lines)


def _percent(share: float | None) -> str:
    return "unknown" if share is None else f"{100 * share:.1f} %"
