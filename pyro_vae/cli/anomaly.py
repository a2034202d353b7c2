"""`pyro-vae anomaly`: anomaly scores of test data against other datasets."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyro_vae.cli.common import load_run_and_checkpoint, positive_flag, refuse_kind, run_data
from pyro_vae.errors import ConfigError, TrainingError

#: The transformation classifier's default passes over the training images (the value of
#: ``pyro_vae.transformation_score.DEFAULT_EPOCHS``, kept here so that ``--help`` needs no
#: torch; a test checks that the two agree).
TRANSFORMATION_EPOCHS = 10

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "anomaly", help="anomaly scores of test data against other datasets (AUROC, AUPRC, "
        "FPR at 95%% TPR)",
        description="Score the run's test images and each other dataset's test images by "
        "log p(x), the ELBO, likelihood regret, input complexity, DoSE, the distance of the "
        "code to its k-th nearest in-distribution code, (with --background) a "
        "background likelihood ratio, (with --ensemble) the disagreement of models "
        "trained from other seeds, how well a classifier tells flipped, moved and turned "
        "copies of the image apart (the transformation score) and how far the image's "
        "features in that classifier lie from the in-distribution ones (the feature score), "
        "and test batches for "
        "typicality; write one table "
        "(anomaly.json, printed) and one figure of histograms (anomaly.png). Higher scores "
        "mean more anomalous. The formulas and references are in pyro_vae/anomaly.py.")
    parser.add_argument("run_dir")
    parser.add_argument("--against", required=True, nargs="+", metavar="DATA",
                         help="one or more other datasets (same image shape), e.g. mnist "
                         "fashion-mnist, or shifted copies of the run's own test images: "
                         "shift:NAME, NAME one of rotated, upside-down, mirrored, translated, "
                         "crops, pixel-shuffled, inverted, faint, blurred, thicker, thinner, "
                         "salt-and-pepper, cutout, noise, constant, mixtures")
    parser.add_argument("--score", action="append", metavar="NAME",
                         help="a score to compute (repeat for several): log-likelihood, elbo, "
                         "regret, complexity, likelihood-ratio, ensemble, waic, "
                         "transformations, features, dose, knn, fisher, typicality "
                         "(default: all but likelihood-ratio, which --background adds, and "
                         "ensemble and waic, which --ensemble adds; fisher, the default "
                         "verdict, adds the scores it combines)")
    parser.add_argument("--no-transformations", action="store_true",
                         help="leave out the transformation score (Golan & El-Yaniv 2018) and "
                         "the feature score (the distance of the image's features in the same "
                         "classifier; Sehwag et al. 2021), whose classifier of 72 flips, moves "
                         "and quarter turns of the training images is otherwise trained (a few "
                         "minutes on a CPU; kept in OUT/transformations and reused) and "
                         "combined by the default verdict, as chosen on validation shifts")
    parser.add_argument("--background", action="store_true",
                         help="train a background model on perturbed training images for the "
                         "likelihood ratio (kept in OUT/background and reused); the default "
                         "verdict (fisher) then combines the ratio too, as chosen on "
                         "validation shifts; without it, it combines the other scores")
    parser.add_argument("--background-rate", type=float, default=0.2,
                         help="probability that a pixel is replaced by noise for the background "
                         "model (default 0.2)")
    parser.add_argument("--background-epochs", type=int, default=None,
                         help="training epochs of the background model (default: the run's "
                         "own, the budget validated for the default verdict; for a run whose "
                         "training stopped early, the epochs it finished)")
    parser.add_argument("--ensemble", type=int, default=None, metavar="M",
                         help="train M − 1 more models of the run's recipe and budget (the "
                         "epochs it finished) with other seeds (kept in OUT/ensemble and "
                         "reused) for the ensemble's disagreement Var_m log p_m(x) and −WAIC "
                         "(Choi et al. 2018); 5 is the papers' size")
    parser.add_argument("--transformation-epochs", type=int, default=None,
                         help="passes of that classifier over the training images (default "
                         f"{TRANSFORMATION_EPOCHS})")
    parser.add_argument("--num-samples", type=int, default=200, help="K (default 200)")
    parser.add_argument("--limit", type=int, default=1000,
                         help="images scored from each dataset (default 1000)")
    parser.add_argument("--regret-steps", type=int, default=50,
                         help="Adam steps of the per-image re-fit of q (default 50)")
    parser.add_argument("--regret-draws", type=int, default=32,
                         help="common draws per image for the re-fitted ELBO (default 32)")
    parser.add_argument("--compressor", default="png",
                         help="lossless compressor for the input complexity L(x): png "
                         "(default) or zlib (raw 8-bit pixels)")
    parser.add_argument("--alpha", type=float, default=0.05,
                         help="level of each score's verdict: an image is flagged when its "
                         "in-distribution tail probability is below ALPHA (default 0.05)")
    parser.add_argument("--typicality-batch", type=int, default=10,
                         help="images per batch of the typicality test (default 10)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="output folder (default RUN_DIR/anomaly)")


def _training_inputs(config, data):
    """The training images as the model saw them: a dynamically binarized run was trained on
    coin flips drawn from the grey levels, so the typicality test scores one fixed draw of
    them (its likelihood, a Bernoulli, has no density at grey levels)."""
    from pyro_vae.data import binarize_fixed

    if config.binarization == "dynamic":
        return binarize_fixed(data, ("train",)).train_x
    return data.train_x


def run(args: argparse.Namespace) -> int:
    """``pyro-vae anomaly``: on any failure or interrupt, an output folder this call created
    and left holding no file is removed (kept extra models and results stay)."""
    out = Path(args.out) if args.out else Path(args.run_dir) / "anomaly"
    new_out = not out.exists()
    try:
        return _run(args, out)
    except BaseException:
        if new_out and out.is_dir() and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(args: argparse.Namespace, out: Path) -> int:
    import torch
    from pyro_vae import anomaly
    from pyro_vae.ensemble_score import check_members
    from pyro_vae.evaluate import estimate_log_likelihood
    from pyro_vae.knn_score import check_knn_supported
    from pyro_vae.protocol import has
    from pyro_vae.runs import make_run_dir, write_json
    from pyro_vae.training import budget_as_finished
    from pyro_vae.transformation_score import check_image_shape

    for name in ("num-samples", "limit", "regret-steps", "regret-draws", "typicality-batch",
                 "transformation-epochs"):
        positive_flag(name, getattr(args, name.replace("-", "_")))
    scores = tuple(dict.fromkeys(args.score or anomaly.DEFAULT_SCORES))
    if not 0.0 < args.alpha < 1.0:
        raise ConfigError(f"--alpha {args.alpha} must lie strictly between 0 and 1 (e.g. 0.05).")
    for score in scores:
        if score not in anomaly.SCORES:
            raise ConfigError(f"--score {score!r} is not a score; choose from "
                              f"{', '.join(anomaly.SCORES)}.")
    if args.compressor not in anomaly.COMPRESSORS:
        raise ConfigError(f"--compressor {args.compressor!r} is not one of "
                          f"{', '.join(anomaly.COMPRESSORS)}.")
    if args.background and "likelihood-ratio" not in scores:
        scores = (*scores, "likelihood-ratio")
    if args.ensemble is not None:
        check_members(args.ensemble)
        if not {"ensemble", "waic"} & set(scores):
            scores = (*scores, "ensemble", "waic")
    elif {"ensemble", "waic"} & set(scores):
        raise ConfigError("the scores ensemble and waic compare models trained from other "
                          "seeds; give --ensemble M (the number of models, the run included; "
                          "5 is the papers' size) to train them.")
    if "fisher" in scores:  # the default verdict needs the scores it combines
        scores = tuple(dict.fromkeys(
            (*scores, *(s for s in anomaly.FISHER_PARTS if s not in anomaly.OPT_IN_SCORES))))
    if args.no_transformations:
        named = [s for s in anomaly.CLASSIFIER_SCORES if s in (args.score or ())]
        if named:
            raise ConfigError(f"--score {' and --score '.join(named)} read"
                              f"{'s' if len(named) == 1 else ''} the transformation classifier, "
                              "which --no-transformations leaves out: they contradict each "
                              "other; give one of them.")
        if args.transformation_epochs is not None:
            raise ConfigError("--transformation-epochs sets the training of the transformation "
                              "classifier, which --no-transformations leaves out; give one of "
                              "them.")
        scores = tuple(s for s in scores if s not in anomaly.CLASSIFIER_SCORES)
    scores = tuple(s for s in anomaly.SCORES if s in scores)  # the table's order
    settings = anomaly.BackgroundSettings(
        rate=args.background_rate,
        epochs=1 if args.background_epochs is None else args.background_epochs)
    settings.validate()
    if len(set(args.against)) != len(args.against):
        raise ConfigError(f"--against names a dataset twice ({' '.join(args.against)}); give "
                          "each once.")
    config, vae, data, checkpoint = load_run_and_checkpoint(args.run_dir, args.data_dir)
    # Extra models of the run's own budget match the model scored: for a run whose training
    # stopped early, the epochs (and warm-up and learning-rate decay) it finished.
    finished = int(checkpoint["epoch"])
    own_budget = (config if finished >= config.train.epochs else
                  config.with_overrides({"train": budget_as_finished(config.train, finished)}))
    if args.background_epochs is None:  # the validated recipe: the run's own budget
        settings.epochs = own_budget.train.epochs
    if not has(config, "unlabelled_scoring"):  # M2's log p(x) sums its label out
        refuse_kind(config, args.run_dir, "anomaly", ("labels", "completions"),
                    "anomaly scores an image by log p(x), but this model scores images only "
                    "given a label or given the rest of the image. Train a plain VAE on the "
                    "same data (pyro-vae train --model vae ...) and score with that run.")
    others = {name: run_data(config, checkpoint, args.data_dir, name)[1]
              for name in args.against}
    # Small data: what a score needs of the held-out images and of each set is checked before
    # anything is trained or written; left out with a note, refused when asked for by name.
    _refuse_empty_sets(len(data.valid_x), {
        "the run's test set": len(data.test_x),
        **{f"--against {name}'s test set": len(other.test_x) for name, other in others.items()}})
    scores = _without_short_fitted_scores(scores, args, len(data.valid_x))
    scores = _without_short_typicality(scores, args, {
        "the run's test set": len(data.test_x),
        **{name: len(other.test_x) for name, other in others.items()}})
    if "regret" in scores:
        try:
            anomaly.check_regret_supported(vae, data.test_x[:1])
        except ConfigError as error:
            if "regret" in (args.score or ()):  # asked for by name: say why not
                raise
            scores = tuple(s for s in scores if s != "regret")
            print(f"note: no likelihood regret for this model ({error})", file=sys.stderr)
    if "knn" in scores:
        try:
            if not has(config, "latent_means"):
                raise ConfigError(
                    "the nearest-neighbour score measures where an image's code μ(x) lands, "
                    f"and the model kind {config.model.kind!r} does not declare the capability "
                    "\"latent_means\" (latent_mean(x); see pyro_vae.protocol); leave out "
                    "--score knn.")
            check_knn_supported(vae)
        except ConfigError as error:
            if "knn" in (args.score or ()):  # asked for by name: say why not
                raise
            scores = tuple(s for s in scores if s != "knn")
            print(f"note: no nearest-neighbour score for this model ({error})",
                  file=sys.stderr)
    if set(anomaly.CLASSIFIER_SCORES) & set(scores):
        try:
            check_image_shape(data.image_shape)
        except ConfigError as error:
            named = [s for s in anomaly.CLASSIFIER_SCORES if s in (args.score or ())]
            if named:  # asked for by name: say why not
                raise ConfigError(f"{error} Leave out --score {' and --score '.join(named)} "
                                  "for these images.") from None
            scores = tuple(s for s in scores if s not in anomaly.CLASSIFIER_SCORES)
            print(f"note: no transformation or feature score for these images ({error})",
                  file=sys.stderr)
    matched = [what for what, trained in (
        ("background model", "likelihood-ratio" in scores and args.background_epochs is None),
        ("ensemble members", args.ensemble is not None)) if trained]
    if own_budget is not config and matched:
        print(f"note: the {' and the '.join(matched)} train {finished} epoch(s), as many as "
              f"the run finished of the {config.train.epochs} it was set to, with the KL "
              "warm-up and learning-rate decay it had reached: they match the model scored.",
              file=sys.stderr)
    new_out = not out.exists()
    make_run_dir(out)

    background_recipe = own_budget if args.background_epochs is None else config
    background_plan = (_background_plan(background_recipe, data, out / "background", settings)
                       if "likelihood-ratio" in scores else None)
    member_plans = ([] if args.ensemble is None else _member_plans(
        own_budget, out / "ensemble", args.ensemble, anomaly.BackgroundSettings().test_samples))
    classifier_plan = (_classifier_plan(config, data, out / "transformations",
                                        args.transformation_epochs or TRANSFORMATION_EPOCHS)
                       if set(anomaly.CLASSIFIER_SCORES) & set(scores) else None)
    plans = [plan for plan in (background_plan, *member_plans, classifier_plan)
             if plan is not None]
    try:
        # Every extra model's folder is checked before any is trained: a stale one is refused
        # before a long training, not after it.
        found = [plan.reusable() for plan in plans]
        models = [plan.load(reusable) for plan, reusable in zip(plans, found)]
    except BaseException:
        # Leave no empty folder behind; finished extra models stay for the next try.
        if new_out and not any(p.name == "checkpoint.pt" for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    classifier = models.pop() if classifier_plan is not None else None
    background = models[0] if background_plan is not None else None
    members = tuple(models[len(models) - len(member_plans):])
    background_report = _report(background_plan) if background_plan is not None else None
    members_report = [_report(plan) for plan in member_plans] if member_plans else None
    classifier_report = _report(classifier_plan) if classifier_plan is not None else None
    score_settings = anomaly.ScoreSettings(num_samples=args.num_samples,
                                           regret_steps=args.regret_steps,
                                           regret_draws=args.regret_draws,
                                           compressor=args.compressor)
    per_image = tuple(s for s in scores if s in anomaly.PER_IMAGE_SCORES)
    torch.manual_seed(0)
    sets = {"_normal": data.test_x[: args.limit],
            **{name: other.test_x[: args.limit] for name, other in others.items()}}
    against, reference = anomaly.score_with_reference(
        vae, data.valid_x[: args.limit], sets, data.image_shape, per_image, score_settings,
        background, members=members, classifier=classifier,
        progress=_scoring_progress(len(sets) + 1, per_image))
    normal = against.pop("_normal")
    _refuse_non_finite({"the run's test images": normal, **against})
    table = anomaly.metrics_table(normal, against)
    calibration = anomaly.calibration(reference, normal, args.alpha)
    disagreeing = anomaly.disagreements(reference, against, args.alpha)
    warnings = []
    for name, shares in disagreeing.items():
        listed = ", ".join(f"{score} {share:.0%}" for score, share in shares.items())
        verdict = (f"; the default verdict ({anomaly.DEFAULT_VERDICT}) flags "
                   f"{shares[anomaly.DEFAULT_VERDICT]:.0%}"
                   if anomaly.DEFAULT_VERDICT in shares else "")
        warnings.append(f"the scores disagree on {name}: share of its images flagged at "
                        f"α = {args.alpha} by {listed}{verdict}. Trust the scores marked "
                        "reliable above, and prefer the default verdict to any single score.")
    if "regret" in scores and config.model.guide != "diagonal":
        warnings.append(
            f"regret with guide = \"{config.model.guide}\" is measured from the encoder's "
            "diagonal Gaussian (the base its guide transforms), which the per-image refit "
            "shares, not from the model's q(z|x): it includes the guide's own gain over its "
            "base (most of the regret of an IAF digits run). Compare regret between runs with "
            "guide = \"diagonal\".")
    for name in against:
        if name == config.data.dataset:
            warnings.append(
                f"--against {name} is the run's own dataset: its test images were scored "
                "against themselves, so every AUROC is 0.5 by construction; name another "
                "dataset to measure detection.")
    for name, scored in against.items():
        by_log_p = anomaly.detection_metrics(-normal["_log_p"], -scored["_log_p"]).auroc
        if by_log_p < 0.5:
            warnings.append(
                f"AUROC by log p(x) of {config.data.dataset} against {name} is {by_log_p:.3f}, "
                f"below chance: the model finds {name} *more* likely than its own test images "
                "(Nalisnick et al. 2019). Do not use log p(x) or the ELBO for this pair; use "
                "a corrected score (regret, complexity, likelihood-ratio) or the typicality "
                "test on batches.")

    typicality, batch_stats = {}, {}
    if "typicality" in scores:
        train_log_p = estimate_log_likelihood(vae, _training_inputs(config, data)[: args.limit],
                                              args.num_samples).log_likelihood
        valid_log_p = estimate_log_likelihood(vae, data.valid_x[: args.limit],
                                              args.num_samples).log_likelihood
        for name, scored in against.items():
            result, normal_stats, other_stats = anomaly.typicality_test(
                train_log_p, valid_log_p, normal["_log_p"], scored["_log_p"],
                args.typicality_batch)
            typicality[name] = vars(result)
            batch_stats[name] = (normal_stats, other_stats, result.threshold)

    report = {
        "run_dir": args.run_dir, "dataset": config.data.dataset, "against": args.against,
        "scores": list(scores), "higher_is_more_anomalous": True,
        "num_samples": args.num_samples, "num_images": len(normal["_log_p"]),
        "num_images_against": {name: len(s["_log_p"]) for name, s in against.items()},
        "metrics": table, "typicality": typicality,
        "default_verdict": anomaly.DEFAULT_VERDICT if "fisher" in scores else None,
        "alpha": args.alpha, "calibration": calibration,
        "num_reference_images": len(data.valid_x[: args.limit]),
        "dose_bandwidth": reference.dose.bandwidth if reference.dose is not None else None,
        "knn": ({"k": reference.knn.k, "bank": len(reference.knn.bank)}
                if reference.knn is not None else None),
        "features": ({"fit_images": reference.features.fit_images,
                      "dimensions": len(reference.features.mean)}
                     if reference.features is not None else None),
        "fisher_parts": list(reference.fisher.parts) if reference.fisher is not None else None,
        "fisher_rule": ({"rule": reference.fisher.rule, "tail": reference.fisher.tail,
                         "sides": reference.fisher.sides}
                        if reference.fisher is not None else None),
        "flagged_share": {name: {score: float(anomaly.flagged(reference, score, scored,
                                                              args.alpha).double().mean())
                                 for score in reference.scores}
                          for name, scored in against.items()},
        "mean_log_likelihood": float(normal["_log_p"].mean()),
        "mean_log_likelihood_against": {name: float(s["_log_p"].mean())
                                        for name, s in against.items()},
        "regret": {"steps": args.regret_steps, "draws": args.regret_draws,
                   "learning_rate": score_settings.regret_learning_rate}
        if "regret" in scores else None,
        "compressor": args.compressor if "complexity" in scores else None,
        "background": background_report, "ensemble": members_report,
        "transformations": classifier_report, "warnings": warnings,
    }
    panels = [(f"{anomaly.SCORE_LABELS[s]}: AUROC "
               + ", ".join(f"{table[name][s]['auroc']:.3f}" for name in against),
               normal[s].float(), {name: against[name][s].float() for name in against}, "score")
              for s in per_image]
    if batch_stats:
        normal_stats = next(iter(batch_stats.values()))[0]
        panels.append((f"typicality, batches of {args.typicality_batch}: detected "
                       + ", ".join(f"{typicality[name]['detection_rate']:.2f}"
                                   for name in against),
                       normal_stats.float(),
                       {name: stats[1].float() for name, stats in batch_stats.items()},
                       "ε̂ = |mean −log p(x) − Ĥ| per batch"))
    # The picture first: anomaly.json, written last, is the record that the whole run finished.
    anomaly.save_histograms(out / "anomaly.png", panels, config.data.dataset)
    write_json(out / "anomaly.json", report)
    print(_anomaly_table(config.data.dataset, report))
    print(_calibration_table(report))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out / 'anomaly.json'} and {out / 'anomaly.png'}")
    return 0


def _stamp_differences(saved: dict, wanted: dict) -> str:
    """"KEY SAVED there, WANTED now" for each setting in which a kept model's stamp differs."""
    return "; ".join(f"{key} {saved.get(key)!r} there, {wanted.get(key)!r} now"
                     for key in sorted({*saved, *wanted}, key=str)
                     if saved.get(key) != wanted.get(key))


@dataclass
class ExtraModel:
    """A model the scores need beside the run's own (a background model, an ensemble member),
    kept in ``run_dir`` and reused by a later call: ``stamp`` (written to ``stamp_name`` last,
    when its training ends) names its budget and seed, ``recipe`` the configuration it is
    trained with, which a reused one must match (:func:`pyro_vae.runs.recipe_differences`)."""

    run_dir: Path
    stamp_name: str
    stamp: dict
    recipe: object
    what: str
    training: str
    train_now: Callable[[], object]

    def reusable(self) -> bool:
        """True when ``run_dir`` holds a finished model of these settings, False when there is
        none yet; an interrupted, damaged or differently trained one is refused in words."""
        from pyro_vae.errors import CheckpointError
        from pyro_vae.runs import read_run_config, recipe_differences

        run_dir, stamp_path = self.run_dir, self.run_dir / self.stamp_name
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is a file, where the {self.what} is kept; move it "
                              "away or choose another --out.")
        if not (run_dir / "checkpoint.pt").exists():
            if run_dir.exists() and any(run_dir.iterdir()):
                raise ConfigError(f"{run_dir} holds files but no finished {self.what}; remove "
                                  "it (an interrupted training) and run again.")
            return False
        try:
            saved = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # written last: missing after a kill, or damaged
            saved = None
        if not isinstance(saved, dict):  # unreadable, or JSON but not a table of settings
            raise ConfigError(
                f"{run_dir} holds a {self.what} whose training did not finish (its "
                f"{stamp_path.name}, written when it ends, is missing or damaged: the run was "
                "interrupted, e.g. killed); remove that folder and run again to train it "
                "anew.")
        if saved != self.stamp:
            raise ConfigError(f"{run_dir} holds a {self.what} trained with other settings "
                              f"({_stamp_differences(saved, self.stamp)}); remove that folder "
                              "or choose another --out to train one with the settings given "
                              "now.")
        try:
            differences = recipe_differences(read_run_config(run_dir), self.recipe)
        except CheckpointError as error:
            raise ConfigError(f"{run_dir} holds a {self.what} that cannot be read ({error}); "
                              "remove that folder and run again to train it anew.") from None
        if differences:
            raise ConfigError(f"{run_dir} holds a {self.what} of another recipe than this "
                              f"run's (it differs in {', '.join(differences)}); remove that "
                              "folder or choose another --out to train one of this run's "
                              "recipe.")
        return True

    def load(self, reusable: bool):
        """The model: reused when ``reusable``, else trained now (a half-trained one removed
        when the training fails, so that it does not block the next try)."""
        from pyro_vae.runs import load_trained, write_json

        if reusable:
            print(f"reusing the {self.what} in {self.run_dir}")
        else:
            print(f"training {self.training} into {self.run_dir}")
            try:
                self.train_now()
            except BaseException:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            write_json(self.run_dir / self.stamp_name, self.stamp)
        _, model, _ = load_trained(self.run_dir)
        return model


def _background_plan(config, data, run_dir: Path, settings) -> ExtraModel:
    """The background model of the likelihood ratio (:func:`pyro_vae.anomaly.train_background`:
    the run's recipe on perturbed training images)."""
    from pyro_vae import anomaly

    return ExtraModel(
        run_dir, "perturbation.json",
        {"dataset": config.data.dataset, "rate": settings.rate, "epochs": settings.epochs,
         "seed": config.train.seed},
        config, "background model",
        f"the background model ({settings.epochs} epoch(s) on training images with "
        f"{settings.rate:.0%} of pixels replaced by noise)",
        lambda: anomaly.train_background(config, data, run_dir, settings,
                                         seed=config.train.seed))


def _member_plans(config, folder: Path, count: int, evaluate_samples: int) -> list[ExtraModel]:
    """The ensemble's other ``count − 1`` members: the run's recipe and budget with the seeds
    seed + 1 … seed + count − 1, each in ``folder/seed-S`` (:mod:`pyro_vae.ensemble_score`).
    Their training's closing evaluation uses ``evaluate_samples`` draws: the scores estimate
    log p(x) themselves."""
    from pyro_vae.training import train

    plans = []
    for seed in range(config.train.seed + 1, config.train.seed + count):
        run_dir = folder / f"seed-{seed}"
        member = config.with_overrides({"train": {"seed": seed},
                                        "evaluate": {"num_samples": evaluate_samples}})
        plans.append(ExtraModel(
            run_dir, "member.json",
            {"dataset": config.data.dataset, "epochs": config.train.epochs, "seed": seed,
             "of_run_seed": config.train.seed},
            member, "ensemble member",
            f"ensemble member {seed - config.train.seed + 1} of {count} (the run's recipe, "
            f"{config.train.epochs} epoch(s), seed {seed})",
            lambda member=member, run_dir=run_dir: train(member, run_dir)))
    return plans


@dataclass
class KeptClassifier:
    """The transformation score's classifier (:mod:`pyro_vae.transformation_score`), kept in
    ``folder`` (``classifier.pt``, then the stamp ``transformations.json`` written last) and
    reused by a later call when the stamp matches."""

    run_dir: Path
    stamp: dict
    train_now: Callable[[], object]
    stamp_name: str = "transformations.json"
    what: str = "transformation classifier"

    def reusable(self) -> bool:
        """True when ``run_dir`` holds a finished classifier of these settings, False when it
        holds none yet; an interrupted or differently trained one is refused in words."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir} is a file, where the {self.what} is kept; move "
                              "it away or choose another --out.")
        stamp_path = self.run_dir / self.stamp_name
        if not stamp_path.exists():
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise ConfigError(f"{self.run_dir} holds files but no finished {self.what} (its "
                                  f"{self.stamp_name}, written when the training ends, is "
                                  "missing: it was interrupted); remove that folder and run "
                                  "again.")
            return False
        try:
            saved = json.loads(stamp_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{stamp_path} is damaged; remove {self.run_dir} and run again to "
                              f"train the {self.what} anew.")
        if saved != self.stamp:
            raise ConfigError(f"{self.run_dir} holds a {self.what} trained with other settings "
                              f"({_stamp_differences(saved, self.stamp)}); remove that folder "
                              "or choose another --out to train one with the settings given "
                              "now.")
        return True

    def load(self, reusable: bool):
        """The classifier: reused when ``reusable``, else trained now and written (nothing
        half-written is left when the training fails)."""
        from pyro_vae.runs import write_json
        from pyro_vae.transformation_score import load_classifier, save_classifier

        path = self.run_dir / "classifier.pt"
        if reusable:
            print(f"reusing the {self.what} in {self.run_dir}")
        else:
            passes = "pass" if self.stamp["epochs"] == 1 else "passes"
            print(f"training the {self.what} into {self.run_dir} ({self.stamp['epochs']} "
                  f"{passes} over {self.stamp['images']} training images, one of "
                  f"{self.stamp['transformations']} transformations each)")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_classifier(self.train_now(), path)
            except BaseException:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            write_json(self.run_dir / self.stamp_name, self.stamp)
        try:
            return load_classifier(path)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path} cannot be read ({error}); remove {self.run_dir} and run "
                              f"again to train the {self.what} anew.") from None


def _classifier_plan(config, data, run_dir: Path, epochs: int) -> KeptClassifier:
    """The transformation classifier of the run: its training images (a fresh binarization of
    each batch for a dynamically binarized run), its seed, ``epochs`` passes."""
    from pyro_vae.transformation_score import train_transformation_classifier, transformations

    dynamic = config.binarization == "dynamic"

    def progress(epoch: int, loss: float) -> None:
        print(f"  transformation classifier: pass {epoch}/{epochs}, cross-entropy {loss:.3f}",
              flush=True)

    return KeptClassifier(
        run_dir,
        {"dataset": config.data.dataset, "epochs": epochs, "seed": config.train.seed,
         "images": len(data.train_x), "image_shape": list(data.image_shape),
         "binarization": config.binarization,
         "transformations": len(transformations(data.image_shape[-1]))},
        lambda: train_transformation_classifier(
            data.train_x, data.image_shape, epochs, binarize_batches=dynamic,
            seed=config.train.seed, progress=progress))


def _report(plan: ExtraModel | KeptClassifier) -> dict:
    return {**plan.stamp, "run_dir": str(plan.run_dir)}


def _refuse_non_finite(scored: dict[str, dict[str, torch.Tensor]]) -> None:
    """Refuse, before anything is written, scores that came out NaN or infinite on some images
    (a diverging re-fit, a model that gives an image zero density): an AUROC of them would be
    meaningless."""
    import torch

    found = [f"{score} on {int((~torch.isfinite(values)).sum())} of {len(values)} images of "
             f"{name}" for name, scores in scored.items() for score, values in scores.items()
             if torch.is_tensor(values) and values.is_floating_point()
             and not torch.isfinite(values).all()]
    if found:
        raise TrainingError(
            f"some scores are not finite: {'; '.join(found)}. Nothing was written. Check the "
            "model (pyro-vae evaluate on the run), and score the others alone meanwhile: name "
            "them with --score, leaving out those listed here.")


def _refuse_empty_sets(validation_images: int, test_images: dict[str, int]) -> None:
    """Refuse, before anything is trained, a run with no held-out images to read the scores'
    in-distribution tails from, or a set (``test_images``: name → count) with none to score."""
    if validation_images == 0:
        raise ConfigError(
            "anomaly reads each score's in-distribution tail (its calibration, the threshold "
            "at α, the default verdict) from the run's held-out validation images, and this run "
            "holds none: it was trained with [data] validation_fraction = 0, or on too few "
            "images for one to be held out. Train it again with validation images (e.g. --set "
            "data.validation_fraction=0.1).")
    empty = [name for name, count in test_images.items() if count == 0]
    if empty:
        raise ConfigError(f"{' and '.join(empty)} hold{'s' if len(empty) == 1 else ''} no "
                          "images, and an AUROC needs images on both sides; give a dataset "
                          "whose test split holds images.")


def _without_short_fitted_scores(scores: tuple[str, ...], args: argparse.Namespace,
                                 validation_images: int) -> tuple[str, ...]:
    """``scores`` without the fitted ones (:data:`pyro_vae.anomaly.FITTED_SCORES`) that the
    validation images scored (``--limit`` of the run's ``validation_images``) are too few for,
    with a note naming the limit that binds; one asked for by name is refused instead."""
    from pyro_vae import anomaly

    held_out = min(args.limit, validation_images)
    short = {s: anomaly.fewest_reference_images(s) for s in scores
             if s in anomaly.FITTED_SCORES and held_out < anomaly.fewest_reference_images(s)}
    if not short:
        return scores
    needed = max(short.values())
    remedy = (f"The run's data holds only {validation_images} validation images; train on data "
              f"with {needed} or more held out (more images, or a larger [data] "
              "validation_fraction)." if validation_images < needed else
              f"Give --limit {needed} or more.")
    needs = ", ".join(f"{n} ({s})" for s, n in short.items())
    one = len(short) == 1
    why = (f"{'it is' if one else 'they are'} fitted on held-out in-distribution images and "
           f"need{'s' if one else ''} at least {needs}, and this run scores {held_out}. "
           f"{remedy}")
    named = [s for s in short if s in (args.score or ())]
    if named:  # asked for by name: refused before any extra model is trained
        raise ConfigError(f"--score {' and '.join(named)}: {why}")
    default = " (fisher is the default verdict)" if "fisher" in short else ""
    print(f"note: no {', '.join(short)}{default}: {why}", file=sys.stderr)
    return tuple(s for s in scores if s not in short)


def _without_short_typicality(scores: tuple[str, ...], args: argparse.Namespace,
                              whole: dict[str, int]) -> tuple[str, ...]:
    """``scores`` without the typicality test when a set (``whole``: its test images) gives
    fewer images than one batch, with a note saying which and what fits; refused instead when
    asked for by name."""
    if "typicality" not in scores:
        return scores
    scored = {name: min(count, args.limit) for name, count in whole.items()}
    smallest = min(scored, key=scored.get)
    if scored[smallest] >= args.typicality_batch:
        return scores
    remedy = (f"raise --limit to {args.typicality_batch} or more"
              if whole[smallest] >= args.typicality_batch else
              f"give --typicality-batch {whole[smallest]} or less" if whole[smallest]
              else "it has no test images")
    why = (f"the typicality test scores batches of {args.typicality_batch} images, and "
           f"{smallest} has only {scored[smallest]} to score; {remedy}")
    if "typicality" in (args.score or ()):  # asked for by name: say why not
        raise ConfigError(f"--score typicality: {why}.")
    print(f"note: no typicality test: {why}.", file=sys.stderr)
    return tuple(s for s in scores if s != "typicality")


def _scoring_progress(count: int, scores: tuple[str, ...]) -> Callable[[str, int], None]:
    """A progress line (on stderr) before each set is scored, with the time since the first:
    scoring takes minutes (regret refits each image's code; the transformation score runs the
    classifier on 72 copies of it)."""
    started = time.perf_counter()
    names = {"_normal": "the run's test images", "_reference": "the validation images"}
    done = 0

    def report(name: str, images: int) -> None:
        nonlocal done
        done += 1
        print(f"scoring {done}/{count}: {names.get(name, name)} ({images} images; "
              f"{', '.join(s for s in scores if s not in ('fisher', 'typicality'))}), "
              f"{time.perf_counter() - started:.0f} s so far", file=sys.stderr, flush=True)

    return report


def _anomaly_table(dataset: str, report: dict) -> str:
    """The printed table: one row per score, AUROC / AUPRC / FPR95 per other dataset."""
    names = report["against"]
    labels = [f"vs {name}: AUROC AUPRC FPR95" for name in names]
    widths = [max(36, len(label) + 2) for label in labels]  # a long name keeps its gap
    header = f"{'score (higher = more anomalous)':<34}" + "".join(
        f"{label:>{width}}" for label, width in zip(labels, widths))
    counts = report.get("num_images_against", {})
    sizes = {report["num_images"], *counts.values()}
    against = (f"{', '.join(names)}, {report['num_images']} images each" if len(sizes) == 1 else
               f"{', '.join(f'{name} ({counts[name]} images)' for name in names)}; "
               f"{report['num_images']} of its own")
    lines = [f"{dataset} (in) against {against}, K={report['num_samples']}", header]
    for score in report["scores"]:
        if score == "typicality":
            continue
        cells = "".join(f"{'':>{width - 21}}{m['auroc']:>7.4f}{m['auprc']:>7.4f}"
                        f"{m['fpr_at_95_tpr']:>7.3f}"
                        for m, width in zip((report["metrics"][name][score] for name in names),
                                            widths))
        lines.append(f"{score:<34}{cells}")
    for name, result in report["typicality"].items():
        lines.append(f"typicality vs {name}, batches of {result['batch_size']}: detected "
                     f"{result['detection_rate']:.2f} of {result['num_batches_against']} "
                     f"batches, false alarms {result['false_alarm_rate']:.2f} of "
                     f"{result['num_batches_normal']} (α = {result['alpha']}), batch AUROC "
                     f"{result['batch_auroc']:.4f}")
    return "\n".join(lines)


def _calibration_table(report: dict) -> str:
    """Which scores are reliable for this run: each score's false-positive rate on the run's
    in-distribution test images at the level fitted on its validation images."""
    alpha = report["alpha"]
    lines = [f"in-distribution calibration at α = {alpha} (thresholds from "
             f"{report['num_reference_images']} validation images; false positives on the "
             f"{report['num_images']} test images; reliable = within 3 standard errors of α)"]
    for score, result in report["calibration"].items():
        mark = ("too few images to judge (raise --limit, or score more test images)"
                if result["reliable"] is None else
                "reliable" if result["reliable"] else "NOT reliable")
        default = "  (default verdict)" if score == report["default_verdict"] else ""
        lines.append(f"  {score:<18} false-positive rate {result['false_positive_rate']:.3f} "
                     f"± {result['tolerance']:.3f}: {mark}{default}")
    return "\n".join(lines)
