"""`pyro-vae evaluate`: the scores of a trained run on a split (the same function as
the test summary of `train`), or with ``--estimator ais`` its annealed-importance-sampling
log-likelihood, or with ``--estimator bdmc`` the BDMC sandwich bounds on data simulated from the
model (:mod:`pyro_vae.ais`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_vae.cli.common import (check_same_shape, positive_flag, refuse_kind,
                                 unfinished_note)
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.progress import TqdmProgress

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).
if TYPE_CHECKING:  # annotations only
    import torch

    from pyro_vae.ais import AISEstimate


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
    parser.add_argument("--estimator", choices=["is", "ais", "bdmc"], default="is",
                        help="is: importance sampling from q(z|x) with --num-samples (default); "
                        "ais: annealed importance sampling with HMC (slower, tighter); bdmc: "
                        "forward and reverse AIS on data simulated from the model, whose gap "
                        "bounds the error of AIS at these settings")
    parser.add_argument("--limit", type=int,
                        help="score only the first N datapoints of the split (bdmc: simulate N "
                        "datapoints; default 100)")
    parser.add_argument("--ais-steps", type=int, default=1000,
                        help="annealing steps T of ais and bdmc (default 1000)")
    parser.add_argument("--ais-chains", type=int, default=16,
                        help="AIS chains per datapoint averaged in the estimate (default 16)")
    parser.add_argument("--ais-leapfrog", type=int, default=10,
                        help="leapfrog steps per HMC transition (default 10)")
    parser.add_argument("--ais-start", choices=["prior", "posterior"], default="prior",
                        help="the initial distribution of the path: the prior p(z) (default) "
                        "or the encoder's q(z|x) (about one encoder pass more per leapfrog step)")
    parser.add_argument("--per-datapoint", metavar="FILE",
                        help="ais/bdmc: where to write the per-datapoint values (CSV; default "
                        "RUN_DIR/evaluate-ESTIMATOR-SPLIT.csv)")


def run(args: argparse.Namespace) -> int:
    import torch
    from pyro_vae.grey_targets import GREY_SCORE_NAME, binary_targets, grey_targets
    from pyro_vae.models.conditional import check_labels
    from pyro_vae.protocol import display_name, has
    from pyro_vae.runs import finite_or_none, load_trained
    from pyro_vae.scoring import plan_final_scoring
    from pyro_vae.summary import model_labels, split_scores
    from pyro_vae.training import prepare_data, resolve_device

    positive_flag("num-samples", args.num_samples)
    for flag in ("limit", "ais-steps", "ais-chains", "ais-leapfrog"):
        positive_flag(flag, getattr(args, flag.replace("-", "_")))
    if args.per_datapoint is not None:
        _check_per_datapoint_path(args)
    device = resolve_device(args.device)
    config, vae, checkpoint = load_trained(args.run_dir, device)
    if note := unfinished_note(args.run_dir, config, checkpoint):
        print(note, file=sys.stderr)
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
    if has(config, "labels") and y is None and not has(config, "unlabelled_scoring"):
        raise DataError(
            f"the {args.split} split of {config.data.dataset!r} has no labels, but "
            f"{args.run_dir} holds a {display_name(config)}, which scores each image given its "
            "label. Evaluate it on labelled images (a .npz with an integer array y beside x), "
            "or score unlabelled images with a --model vae or m2 run (M2 sums its label out).")
    if has(config, "labels") and not (y is None and has(config, "unlabelled_scoring")):
        check_labels(y, config.model.num_classes, f"the {args.split} split of "
                     f"{config.data.dataset!r}")
    if len(x) == 0:
        raise ConfigError(f"the {args.split} split of {config.data.dataset!r} is empty (was "
                          "validation_fraction 0?); use --split test.")
    if args.limit is not None and args.estimator != "bdmc":
        x, y, data, targets = _first(args.limit, args.split, x, y, data, targets)
    if args.estimator != "is":
        refuse_kind(config, args.run_dir, f"--estimator {args.estimator}",
                    ("categorical_latents", "discrete_latents", "no_latents"),
                    "AIS anneals a continuous latent code with Hamiltonian Monte Carlo, and "
                    "this model's log p(x) sums over a discrete variable (or has no latent "
                    "code). Use --estimator is, or the exact sum the evaluation reports.")
        return _run_annealed(args, config, vae, x if targets is None else targets, y)
    torch.manual_seed(0)
    progress = TqdmProgress()
    # A scoring that takes more than seconds says first about how long (pyro_vae.scoring).
    plan = plan_final_scoring(vae, x if targets is None else targets, model_labels(vae, y),
                              args.num_samples, "full", config.evaluate.max_chunk, 0.0)
    message = plan.message(None, str(args.run_dir))
    if message is not None:
        progress.note(message)
    with torch.no_grad():  # the same scores as the test summary of a training run
        scores = split_scores(config, vae, data, args.split, args.num_samples, progress,
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


def _finite(value: Any) -> bool:
    """A number that is neither absent nor NaN (an error bar that could not be estimated)."""
    return isinstance(value, (int, float)) and value == value


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"dataset: {summary['dataset']} ({summary.get('split', 'test')} split, "
        f"{summary['num_test_datapoints']} datapoints)",
        f"ELBO: {summary['test_elbo']:.3f} ± {_or_dash(summary['test_elbo_stderr'])} nats",
        f"log p(x), K={summary['num_importance_samples']} importance samples: "
        f"{summary['test_log_likelihood']:.3f} ± "
        f"{_or_dash(summary['test_log_likelihood_stderr'])} nats"
        + (f" (± over {summary.get('split', 'test')} points; Monte Carlo error ± "
           f"{summary['test_log_likelihood_mc_stderr']:.3f})"
           if _finite(summary.get("test_log_likelihood_mc_stderr")) else ""),
        f"active units: {summary['active_units']} of {summary['latent_dim']}"
        if summary.get("active_units") is not None else
        "active units: none (this model has no latent code)",
    ]
    if summary.get("scoring_reduced"):  # a training run's "auto" scoring (pyro_vae.scoring)
        lines.insert(3, f"  (scored {summary['num_test_datapoints']:,} of "
                     f"{summary['scoring_requested_datapoints']:,} test images with K = "
                     f"{summary['num_importance_samples']} instead of "
                     f"{summary['scoring_requested_samples']}, to cost about the training's "
                     f"time; all of them with K = {summary['scoring_requested_samples']}: "
                     "pyro-vae evaluate RUN_DIR --num-samples "
                     f"{summary['scoring_requested_samples']})")
    if summary.get("score_name"):  # e.g. log p(x|y) of a conditional model
        lines[2] = lines[2].replace("log p(x)", summary["score_name"], 1)
    if "test_exact_log_likelihood" in summary:  # a discrete code small enough to sum over
        lines.insert(3, f"log p(x), exact (sum over all codes): "
                     f"{summary['test_exact_log_likelihood']:.3f} ± "
                     f"{_or_dash(summary['test_exact_log_likelihood_stderr'])} nats")
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
        accuracy = summary["fidelity_classifier_test_accuracy"]
        if accuracy is not None and accuracy <= 1.0 / len(shares):
            lines.append("  the classifier is no better than chance on the test images, so this "
                         "fidelity measures nothing: train on more labelled images")
    return "\n".join(lines)


def _percent(share: float | None) -> str:
    return "unknown" if share is None else f"{100 * share:.1f} %"


# --- --limit, and the annealed estimators (--estimator ais | bdmc) ----------------------------

#: The fields of :class:`~pyro_vae.data.ImageData` that hold each split's images and labels.
_SPLIT_FIELDS = {"test": ("test_x", "test_y"), "validation": ("valid_x", "valid_y")}
#: Simulated datapoints of ``--estimator bdmc`` without ``--limit``.
DEFAULT_BDMC_DATAPOINTS = 100


def _first(limit: int, split: str, x, y, data, targets):
    """The first ``limit`` datapoints of the split: its images, labels, the dataset holding
    only them in that split (what the importance-sampling scores read) and the targets."""
    cut = lambda t: None if t is None else t[:limit]  # noqa: E731
    x_field, y_field = _SPLIT_FIELDS[split]
    data = dataclasses.replace(
        data, **{x_field: cut(getattr(data, x_field)), y_field: cut(getattr(data, y_field))},
        intensities={k: (cut(v) if k == split else v) for k, v in data.intensities.items()})
    return cut(x), cut(y), data, cut(targets)


class AnnealingProgress(TqdmProgress):
    """A bar over datapoint-steps with its ETA (or, in ``lines`` mode, a line every tenth of
    the way with the time left); Ctrl-C, SIGTERM and SIGHUP as every command has them."""

    def start_annealing(self, total: int, description: str) -> None:
        self._started = time.perf_counter()
        self._total, self._done, self._next_share = max(total, 1), 0, 0.1
        self._description = description
        if self.quiet:
            return
        if self._lines:
            self._print(f"{description}: {total} datapoint-steps")
            return
        self.evaluation = self._tqdm(total=total, unit="datapoint-step", unit_scale=True,
                                     desc=description, dynamic_ncols=True, mininterval=0.5,
                                     file=self.stream)

    def advance(self, datapoint_steps: int) -> None:
        self._done += datapoint_steps
        if self.evaluation is not None:
            self.evaluation.update(datapoint_steps)
        elif self._lines and not self.quiet and self._done >= self._next_share * self._total:
            elapsed = time.perf_counter() - self._started
            left = elapsed * (self._total - self._done) / self._done
            self._print(f"{self._description}: {100 * self._done / self._total:.0f} % in "
                        f"{elapsed:.0f} s, about {left:.0f} s left")
            while self._next_share * self._total <= self._done:
                self._next_share += 0.1
        self._stop_if_requested()


def _check_per_datapoint_path(args: argparse.Namespace) -> None:
    """Refuse ``--per-datapoint`` where nothing would be written to it, or where the file
    cannot be written, before any scoring (AIS takes minutes)."""
    if args.estimator == "is":
        raise ConfigError(
            "--per-datapoint writes the per-datapoint values of --estimator ais or bdmc, and "
            "this evaluation uses importance sampling (--estimator is), which writes none. Add "
            "--estimator ais (or bdmc), or leave --per-datapoint out.")
    path = Path(args.per_datapoint)
    if path.is_dir():
        raise ConfigError(f"--per-datapoint {path} is a folder; name a file in it, e.g. "
                          f"{path / 'values.csv'}.")
    if not path.parent.is_dir():
        raise ConfigError(f"--per-datapoint {path}: its folder {path.parent} does not exist (or "
                          "is a file); create it first or name a file in an existing folder.")


def _per_datapoint_path(args: argparse.Namespace) -> Path:
    if args.per_datapoint:
        return Path(args.per_datapoint)
    name = "evaluate-bdmc.csv" if args.estimator == "bdmc" else \
        f"evaluate-ais-{args.split}.csv"
    return Path(args.run_dir) / name


def _write_rows(path: Path, header: list[str], columns: list[torch.Tensor]) -> None:
    from pyro_vae.runs import atomic_write_text

    lines = [",".join(["index", *header])]
    lines += [",".join([str(i), *(f"{float(c[i]):.6f}" for c in columns)])
              for i in range(len(columns[0]))]
    try:
        atomic_write_text(path, "\n".join(lines) + "\n")
    except OSError as error:
        raise ConfigError(f"cannot write the per-datapoint values to {path} "
                          f"({error.strerror or error}); give a writable --per-datapoint FILE."
                          ) from None


def _run_annealed(args: argparse.Namespace, config, vae: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor | None) -> int:
    """``--estimator ais`` on the split's datapoints, or ``bdmc`` on simulated ones."""
    import torch
    from pyro_vae.ais import ais_log_likelihood, bdmc
    from pyro_vae.runs import finite_or_none
    from pyro_vae.summary import model_labels

    labels = model_labels(vae, y)
    options = dict(leapfrog_steps=args.ais_leapfrog, initial=args.ais_start)
    path = _per_datapoint_path(args)
    settings = {"ais_steps": args.ais_steps, "ais_chains": args.ais_chains,
                "ais_leapfrog_steps": args.ais_leapfrog, "ais_start": args.ais_start}
    torch.manual_seed(0)
    started = time.perf_counter()
    with AnnealingProgress() as progress:
        if args.estimator == "ais":
            progress.start_annealing(args.ais_steps * len(x), f"AIS, {args.ais_steps} steps")
            estimate = ais_log_likelihood(vae, x, args.ais_steps, args.ais_chains, y=labels,
                                          progress=progress.advance, **options)
        else:
            count = args.limit or DEFAULT_BDMC_DATAPOINTS
            if labels is not None:  # a conditional model: simulate given the split's labels
                labels = labels[torch.arange(count, device=labels.device) % len(labels)]
            progress.start_annealing(2 * args.ais_steps * count,
                                     f"BDMC, {args.ais_steps} steps")
            result = bdmc(vae, count, args.ais_steps, args.ais_chains, example=x, y=labels,
                          progress=progress.advance, **options)
        progress.end_evaluation()
    seconds = round(time.perf_counter() - started, 2)
    common = {"run_dir": str(args.run_dir), "estimator": args.estimator,
              "dataset": config.data.dataset,
              "score_name": getattr(vae, "score_name", "log p(x)"), **settings}
    if args.estimator == "ais":
        _write_rows(path, ["log_likelihood", "mc_stderr"],
                    [estimate.log_likelihood, estimate.mc_variance.sqrt()])
        summary = {**common, "split": args.split, "num_test_datapoints": len(x),
                   **_ais_entries(estimate), "seconds": seconds,
                   "per_datapoint_file": str(path)}
    else:
        gap = result.gap
        _write_rows(path, ["lower", "upper", "gap"],
                    [result.lower.log_likelihood, result.upper.log_likelihood, gap])
        summary = {**common, "num_simulated_datapoints": len(gap),
                   "bdmc_lower": result.lower.mean_log_likelihood,
                   "bdmc_upper": result.upper.mean_log_likelihood,
                   "bdmc_gap": float(gap.mean()),
                   "bdmc_gap_stderr": float(gap.std() / math.sqrt(len(gap)))
                   if len(gap) > 1 else None,
                   "bdmc_lower_mc_stderr": result.lower.log_likelihood_mc_stderr,
                   "bdmc_upper_mc_stderr": result.upper.log_likelihood_mc_stderr,
                   "ais_acceptance": result.lower.acceptance, "seconds": seconds,
                   "per_datapoint_file": str(path)}
    print(json.dumps(finite_or_none(summary), indent=2, allow_nan=False) if args.json
          else format_annealed(summary))
    return 0


def _ais_entries(estimate: AISEstimate) -> dict[str, Any]:
    return {"test_log_likelihood_ais": estimate.mean_log_likelihood,
            "test_log_likelihood_ais_stderr": estimate.log_likelihood_stderr,
            "test_log_likelihood_ais_mc_stderr": estimate.log_likelihood_mc_stderr,
            "ais_acceptance": estimate.acceptance}


def format_annealed(summary: dict[str, Any]) -> str:
    """The text output of ``--estimator ais`` and ``bdmc``."""
    setting = (f"{summary['ais_steps']} steps, {summary['ais_chains']} chains, "
               f"{summary['ais_leapfrog_steps']} leapfrog steps, from the {summary['ais_start']}")
    score = summary["score_name"]
    if summary["estimator"] == "ais":
        lines = [f"dataset: {summary['dataset']} ({summary['split']} split, "
                 f"{summary['num_test_datapoints']} datapoints)",
                 f"{score}, AIS ({setting}): {summary['test_log_likelihood_ais']:.3f} ± "
                 f"{_or_dash(summary['test_log_likelihood_ais_stderr'])} nats (± over "
                 f"{summary['split']} points; Monte Carlo error ± "
                 f"{_or_dash(summary['test_log_likelihood_ais_mc_stderr'])})"]
    else:
        lines = [f"BDMC on {summary['num_simulated_datapoints']} datapoints simulated from the "
                 f"model ({setting}):",
                 f"  forward AIS (lower bound): {summary['bdmc_lower']:.3f} nats",
                 f"  reverse AIS (upper bound): {summary['bdmc_upper']:.3f} nats",
                 f"  gap: {summary['bdmc_gap']:.3f} ± {_or_dash(summary['bdmc_gap_stderr'])} "
                 "nats per datapoint"]
    lines += [f"HMC acceptance rate: {summary['ais_acceptance']:.2f}; {summary['seconds']} s",
              f"per-datapoint values: {summary['per_datapoint_file']}"]
    return "\n".join(lines)


def _or_dash(value: float | None) -> str:
    """``value`` to three decimals, or "-" for an error bar that could not be estimated (one
    datapoint: NaN, or null once written to JSON)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
