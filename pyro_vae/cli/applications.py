"""``pyro-vae anomaly | impute | probe | traverse``: the applications as commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.errors import ConfigError
from pyro_vae.protocol import display_name, has


def add_application_parsers(commands) -> None:
    anomaly = commands.add_parser(
        "anomaly", help="anomaly scores of test data against other datasets (AUROC, AUPRC, "
        "FPR at 95%% TPR)",
        description="Score the run's test images and each other dataset's test images by "
        "log p(x), the ELBO, likelihood regret, input complexity and (with --background) a "
        "background likelihood ratio, and test batches for typicality; write one table "
        "(anomaly.json, printed) and one figure of histograms (anomaly.png). Higher scores "
        "mean more anomalous. The formulas and references are in pyro_vae/anomaly.py.")
    anomaly.add_argument("run_dir")
    anomaly.add_argument("--against", required=True, nargs="+", metavar="DATA",
                         help="one or more other datasets (same image shape), e.g. mnist "
                         "fashion-mnist")
    anomaly.add_argument("--score", action="append", metavar="NAME",
                         help="a score to compute (repeat for several): log-likelihood, elbo, "
                         "regret, complexity, likelihood-ratio, typicality (default: all but "
                         "likelihood-ratio, which --background adds)")
    anomaly.add_argument("--background", action="store_true",
                         help="train a background model on perturbed training images for the "
                         "likelihood ratio (kept in OUT/background and reused)")
    anomaly.add_argument("--background-rate", type=float, default=0.2,
                         help="probability that a pixel is replaced by noise for the background "
                         "model (default 0.2)")
    anomaly.add_argument("--background-epochs", type=int, default=1,
                         help="training epochs of the background model (default 1)")
    anomaly.add_argument("--num-samples", type=int, default=200, help="K (default 200)")
    anomaly.add_argument("--limit", type=int, default=1000,
                         help="images scored from each dataset (default 1000)")
    anomaly.add_argument("--regret-steps", type=int, default=50,
                         help="Adam steps of the per-image re-fit of q (default 50)")
    anomaly.add_argument("--regret-draws", type=int, default=32,
                         help="common draws per image for the re-fitted ELBO (default 32)")
    anomaly.add_argument("--compressor", default="png",
                         help="lossless compressor for the input complexity L(x): png "
                         "(default) or zlib (raw 8-bit pixels)")
    anomaly.add_argument("--typicality-batch", type=int, default=10,
                         help="images per batch of the typicality test (default 10)")
    anomaly.add_argument("--data-dir")
    anomaly.add_argument("--out", help="output folder (default RUN_DIR/anomaly)")

    impute = commands.add_parser(
        "impute", help="fill missing pixels of test images, against a mean-image baseline",
        description="Hide part of each test image (a centred box, random pixels or the "
        "bottom rows), fill it with E[missing | observed] by self-normalized importance "
        "sampling of p(z | observed), and report the mean squared error on the hidden pixels "
        "for the VAE and for the mean training image.")
    impute.add_argument("run_dir")
    impute.add_argument("--mask", choices=["box", "random", "bottom"], default="box")
    impute.add_argument("--fraction", type=float, default=0.25,
                        help="fraction of pixels hidden (default 0.25)")
    impute.add_argument("--num-samples", type=int, default=1000, help="K (default 1000)")
    impute.add_argument("--limit", type=int, default=1000, help="test images (default 1000)")
    impute.add_argument("--data-dir")
    impute.add_argument("--out", help="output folder (default RUN_DIR/impute)")

    probe = commands.add_parser(
        "probe", help="linear-probe accuracy of the latent means, for one or several runs",
        description="Fit a logistic regression on the encoder means of the training images "
        "and report its test accuracy; with several runs (e.g. different latent sizes), plot "
        "accuracy against latent size.")
    probe.add_argument("run_dirs", nargs="+")
    probe.add_argument("--data-dir")
    probe.add_argument("--out", help="output folder (default FIRST_RUN_DIR/probe)")

    traverse = commands.add_parser(
        "traverse", help="latent traversals: decode one coordinate swept across the prior",
        description="Decode the encoding of a test image with one latent coordinate swept "
        "from -3 to 3, one row per latent dimension, the most active first.")
    traverse.add_argument("run_dir")
    traverse.add_argument("--index", type=int, default=0, help="which test image (default 0)")
    traverse.add_argument("--data-dir")
    traverse.add_argument("--out", help="FILE.png (default RUN_DIR/traversals.png)")


def _load(run_dir: str, data_dir: str | None, dataset: str | None = None):
    from pyro_vae.runs import load_trained
    from pyro_vae.training import prepare_data

    config, vae, checkpoint = load_trained(run_dir)
    if has(config, "categorical_latents"):
        raise ConfigError(f"{run_dir} holds a model with a discrete code, and this command works "
                          "in a continuous latent space (encodings, gradients in z). Use it on a "
                          "Gaussian VAE run; for a discrete run use evaluate, sample or compare.")
    overrides = {k: v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v}
    if overrides:
        config = config.with_overrides({"data": overrides})
    data = prepare_data(config)
    check_same_shape(config, data, checkpoint)
    return config, vae, data


def check_same_shape(config, data, checkpoint) -> None:
    """Refuse to score data whose images differ in shape from the model's training images."""
    from pyro_vae.errors import ConfigError
    if list(data.image_shape) != list(checkpoint["image_shape"]):
        raise ConfigError(f"dataset {config.data.dataset!r} has images of shape "
                          f"{data.image_shape}, but the model was trained on "
                          f"{tuple(checkpoint['image_shape'])}; use data of the same shape.")


def refuse_kind(config, run_dir: str, command: str, capabilities: tuple[str, ...],
                why: str) -> None:
    """Refuse, in the user's terms, a run whose model kind declares any of ``capabilities``
    (those that ``command`` does not work with)."""
    if any(has(config, capability) for capability in capabilities):
        raise ConfigError(f"{run_dir} holds a {display_name(config)} "
                          f"(--model {config.model.kind}); {why}")


def positive_flag(name: str, value: int | None) -> None:
    """Refuse a non-positive count given as ``--name``."""
    from pyro_vae.errors import ConfigError
    if value is not None and value <= 0:
        raise ConfigError(f"--{name} must be a positive integer, not {value}.")


def command_anomaly(args: argparse.Namespace) -> int:
    import sys

    import torch

    from pyro_vae import anomaly
    from pyro_vae.evaluate import estimate_log_likelihood
    from pyro_vae.runs import make_run_dir, write_json

    for name in ("num-samples", "limit", "regret-steps", "regret-draws", "typicality-batch"):
        positive_flag(name, getattr(args, name.replace("-", "_")))
    scores = tuple(dict.fromkeys(args.score or anomaly.DEFAULT_SCORES))
    for score in scores:
        if score not in anomaly.SCORES:
            raise ConfigError(f"--score {score!r} is not a score; choose from "
                              f"{', '.join(anomaly.SCORES)}.")
    if args.compressor not in anomaly.COMPRESSORS:
        raise ConfigError(f"--compressor {args.compressor!r} is not one of "
                          f"{', '.join(anomaly.COMPRESSORS)}.")
    if args.background and "likelihood-ratio" not in scores:
        scores = (*scores, "likelihood-ratio")
    settings = anomaly.BackgroundSettings(rate=args.background_rate,
                                          epochs=args.background_epochs)
    settings.validate()
    if len(set(args.against)) != len(args.against):
        raise ConfigError(f"--against names a dataset twice ({' '.join(args.against)}); give "
                          "each once.")
    config, vae, data = _load(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "anomaly", ("labels", "completions"),
                "anomaly scores an image by log p(x), but this model scores images only "
                "given a label or given the rest of the image. Train a plain VAE on the same "
                "data (pyro-vae train --model vae ...) and score with that run.")
    others = {name: _load(args.run_dir, args.data_dir, name)[2] for name in args.against}
    if "regret" in scores:
        try:
            anomaly.check_regret_supported(vae, data.test_x[:1])
        except ConfigError as error:
            if args.score:  # asked for by name: say why not
                raise
            scores = tuple(s for s in scores if s != "regret")
            print(f"note: no likelihood regret for this model ({error})", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.run_dir) / "anomaly"
    make_run_dir(out)

    background, background_report = None, None
    if "likelihood-ratio" in scores:
        background, background_report = _background_model(config, data, out / "background",
                                                          settings)
    score_settings = anomaly.ScoreSettings(num_samples=args.num_samples,
                                           regret_steps=args.regret_steps,
                                           regret_draws=args.regret_draws,
                                           compressor=args.compressor)
    per_image = tuple(s for s in scores if s in anomaly.PER_IMAGE_SCORES)
    torch.manual_seed(0)
    normal = anomaly.score_images(vae, data.test_x[: args.limit], data.image_shape, per_image,
                                  score_settings, background)
    against = {name: anomaly.score_images(vae, other.test_x[: args.limit], data.image_shape,
                                          per_image, score_settings, background)
               for name, other in others.items()}
    table = anomaly.metrics_table(normal, against)
    warnings = []
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
        train_log_p = estimate_log_likelihood(vae, data.train_x[: args.limit],
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
        "mean_log_likelihood": float(normal["_log_p"].mean()),
        "mean_log_likelihood_against": {name: float(s["_log_p"].mean())
                                        for name, s in against.items()},
        "regret": {"steps": args.regret_steps, "draws": args.regret_draws,
                   "learning_rate": score_settings.regret_learning_rate}
        if "regret" in scores else None,
        "compressor": args.compressor if "complexity" in scores else None,
        "background": background_report, "warnings": warnings,
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
    write_json(out / "anomaly.json", report)
    anomaly.save_histograms(out / "anomaly.png", panels, config.data.dataset)
    print(_anomaly_table(config.data.dataset, report))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out / 'anomaly.json'} and {out / 'anomaly.png'}")
    return 0


def _background_model(config, data, run_dir: Path, settings):
    """The background model of the likelihood ratio: reused from ``run_dir`` when it was
    trained there with the same settings, else trained now."""
    import json

    from pyro_vae import anomaly
    from pyro_vae.runs import load_trained, write_json

    stamp_path = run_dir / "perturbation.json"
    stamp = {"dataset": config.data.dataset, "rate": settings.rate, "epochs": settings.epochs,
             "seed": config.train.seed}
    if (run_dir / "checkpoint.pt").exists():
        saved = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        if saved != stamp:
            raise ConfigError(f"{run_dir} holds a background model trained with other "
                              f"settings ({saved}); remove that folder or choose another --out "
                              "to train one with the settings given now.")
        print(f"reusing the background model in {run_dir}")
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"{run_dir} holds files but no finished background model; remove "
                              "it (an interrupted training) and run again.")
        print(f"training the background model ({settings.epochs} epoch(s) on training images "
              f"with {settings.rate:.0%} of pixels replaced by noise) into {run_dir}")
        anomaly.train_background(config, data, run_dir, settings, seed=config.train.seed)
        write_json(stamp_path, stamp)
    _, background, _ = load_trained(run_dir)
    return background, {**stamp, "run_dir": str(run_dir)}


def _anomaly_table(dataset: str, report: dict) -> str:
    """The printed table: one row per score, AUROC / AUPRC / FPR95 per other dataset."""
    names = report["against"]
    header = f"{'score (higher = more anomalous)':<34}" + "".join(
        f"{f'vs {name}: AUROC AUPRC FPR95':>36}" for name in names)
    lines = [f"{dataset} (in) against {', '.join(names)}, {report['num_images']} images each, "
             f"K={report['num_samples']}", header]
    for score in report["scores"]:
        if score == "typicality":
            continue
        cells = "".join(f"{'':>15}{m['auroc']:>7.4f}{m['auprc']:>7.4f}{m['fpr_at_95_tpr']:>7.3f}"
                        for m in (report["metrics"][name][score] for name in names))
        lines.append(f"{score:<34}{cells}")
    for name, result in report["typicality"].items():
        lines.append(f"typicality vs {name}, batches of {result['batch_size']}: detected "
                     f"{result['detection_rate']:.2f} of {result['num_batches_against']} "
                     f"batches, false alarms {result['false_alarm_rate']:.2f} of "
                     f"{result['num_batches_normal']} (α = {result['alpha']}), batch AUROC "
                     f"{result['batch_auroc']:.4f}")
    return "\n".join(lines)


def command_impute(args: argparse.Namespace) -> int:
    import torch

    from pyro_vae.applications import (impute, imputation_error, make_mask,
                                       save_imputation_picture)
    from pyro_vae.errors import ConfigError
    from pyro_vae.runs import make_run_dir, write_json

    positive_flag("num-samples", args.num_samples)
    positive_flag("limit", args.limit)
    config, vae, data = _load(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "impute", ("labels",),
                "imputation fills pixels from p(x) of an unconditional VAE, but this model's "
                "decoder needs each image's label. Impute with a --model vae run.")
    refuse_kind(config, args.run_dir, "impute", ("completions",),
                "it already completes images from their given quadrants (its completions are "
                "in RUN_DIR/completions.png); impute with box, random or bottom masks needs a "
                "--model vae run.")
    x = data.test_x[: args.limit]
    observed = make_mask(len(x), data.image_shape, args.mask, args.fraction)
    if observed.all():
        smallest = next((i / observed.shape[1] for i in range(1, observed.shape[1])
                         if not make_mask(len(x), data.image_shape, args.mask,
                                          i / observed.shape[1]).all()), None)
        raise ConfigError(
            f"--fraction {args.fraction} hides no pixel of the {len(x)} test images of shape "
            f"{tuple(data.image_shape)} with the {args.mask} mask, so there is nothing to "
            "impute" + (f"; the smallest fraction that hides a pixel is about {smallest:.3g}."
                        if smallest else "; give a larger --fraction."))
    mean_image = data.train_x.mean(0)
    torch.manual_seed(0)
    imputed = impute(vae, x, observed, mean_image, args.num_samples)
    report = imputation_error(x, observed, imputed, mean_image)
    out = Path(args.out) if args.out else Path(args.run_dir) / "impute"
    make_run_dir(out)
    write_json(out / "imputation.json", {"run_dir": args.run_dir, "mask": args.mask,
                                         "fraction": args.fraction,
                                         "num_samples": args.num_samples, **vars(report)})
    save_imputation_picture(out / "imputation.png", x, observed, imputed, data.image_shape)
    print(f"mean squared error on the {report.missing_fraction:.0%} hidden pixels of "
          f"{report.num_images} test images ({args.mask} mask): VAE {report.model_mse:.4f}, "
          f"mean image {report.baseline_mse:.4f}")
    print(f"wrote {out / 'imputation.json'} and {out / 'imputation.png'}")
    return 0


def command_probe(args: argparse.Namespace) -> int:
    from pyro_vae.applications import linear_probe_accuracy
    from pyro_vae.errors import ConfigError
    from pyro_vae.runs import make_run_dir, write_json

    rows = []
    for run_dir in args.run_dirs:
        config, vae, data = _load(run_dir, args.data_dir)
        refuse_kind(config, run_dir, "probe", ("labels",),
                    "its encoder q(z|x, y) is given the label, so a probe predicting the label "
                    "from its code would measure nothing. Probe a --model vae run"
                    + (" (M2's own classifier accuracy is test_accuracy in RUN_DIR/summary.json)."
                       if has(config, "semi_supervised") else "."))
        refuse_kind(config, run_dir, "probe", ("no_latents",),
                    "it has no latent code to probe; probe a --model vae or quadrant_cvae run.")
        if data.train_y is None or data.test_y is None:
            raise ConfigError(f"{run_dir} was trained on {config.data.dataset!r}, which has no "
                              "labels; a linear probe needs labelled data.")
        accuracy = linear_probe_accuracy(vae, data.train_x, data.train_y, data.test_x,
                                         data.test_y)
        rows.append({"run_dir": run_dir, "latent_dim": config.model.latent_dim,
                     "test_accuracy": accuracy})
        print(f"{run_dir}: latent size {config.model.latent_dim}, linear-probe test accuracy "
              f"{accuracy:.4f}")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "probe"
    make_run_dir(out)
    write_json(out / "probe.json", rows)
    if len(rows) > 1:
        from pyro_vae.plots import _save, subplots

        rows_sorted = sorted(rows, key=lambda r: r["latent_dim"])
        figure, axis = subplots(figsize=(5, 3.4))
        axis.plot([r["latent_dim"] for r in rows_sorted],
                  [r["test_accuracy"] for r in rows_sorted], marker="o")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("latent size")
        axis.set_ylabel("linear-probe test accuracy")
        axis.grid(alpha=0.3)
        _save(figure, out / "probe.png")
    print(f"wrote {out / 'probe.json'}" + (" and probe.png" if len(rows) > 1 else ""))
    return 0


def command_traverse(args: argparse.Namespace) -> int:
    from pyro_vae.applications import save_traversals
    from pyro_vae.errors import ConfigError

    out = Path(args.out) if args.out else Path(args.run_dir) / "traversals.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: traversals are a PNG picture; give a file name "
                          "ending in .png.")
    config, vae, data = _load(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "traverse", ("completions",),
                "it completes the missing quadrants of an image from the given ones and has no "
                "code of a whole image to sweep; its completions are in RUN_DIR/completions.png. "
                "Traverse a --model vae, cvae or m2 run.")
    if not 0 <= args.index < len(data.test_x):
        raise ConfigError(f"--index {args.index} is outside the {len(data.test_x)} test images.")
    x = data.test_x[args.index: args.index + 1]
    labels = None
    if has(config, "labels"):  # q(z|x, y) and p(x|z, y) take the image's label
        if data.test_y is not None:
            labels = torch_cat_first(data.test_y[args.index: args.index + 1], data.test_y)
        elif has(config, "semi_supervised"):  # its classifier's guess q(y|x)
            labels = vae.classify(torch_cat_first(x, data.test_x))
        else:
            raise ConfigError(f"{args.run_dir} holds a {display_name(config)}, whose codes need "
                              f"each image's label, but {config.data.dataset!r} has no test "
                              "labels; use the dataset it was trained on.")
    dims = save_traversals(out, vae, torch_cat_first(x, data.test_x), data.image_shape,
                           y=labels)
    print(f"wrote {out} (dimensions {dims}"
          + (f", label {int(labels[0])})" if labels is not None else ")"))
    return 0


def torch_cat_first(first, rest):
    """The chosen image first, then the test set (whose spread ranks the dimensions)."""
    import torch
    return torch.cat([first, rest[:2000]])


APPLICATION_COMMANDS = {"anomaly": command_anomaly, "impute": command_impute,
                        "probe": command_probe, "traverse": command_traverse}
