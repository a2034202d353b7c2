"""AUROC of every per-image anomaly score on many distribution shifts, for an MNIST and a
Fashion-MNIST VAE (issue 33).

For each in-distribution dataset the recipe ``anomaly_vae`` (Burda et al.'s networks, MLP
784-200-200-50 tanh with a log-variance head, Bernoulli, dynamic binarization, KL warm-up
"auto"; ``--architecture default`` gives the default 784-128-128-8) is trained with the
library's ``train`` for ``--epochs`` epochs (default 100: the networks and the budget chosen on
validation shifts by ``benchmarks/ood_validation.py``; earlier rounds used 3 and 30), batch
100, seed 0, as ``pyro-vae train anomaly_vae --dataset D`` does. The scores' reference images are the run's *validation*
split (``--reference`` of them); DoSE's density and the default verdict's calibration are
fitted there (:func:`pyro_vae.anomaly.score_with_reference`), never on a shift. Then
``--images`` test images of the in-distribution dataset are scored against ``--images`` images
of each shift:

- ``other``: the other dataset's test images (MNIST ↔ Fashion-MNIST, both directions);
- ``inverted``: 1 − x; ``rotated``: 90° counter-clockwise; ``upside-down``: flipped top to
  bottom (chosen here); ``pixel-shuffled``: each image's pixels in a random order, the same
  ink, no shape (chosen here);
- ``noise``: uniform grey levels; ``constant``: all pixels 0 or all 1 (half each);
- ``crops``: a random 14×14 crop enlarged ×2 (nearest neighbour); ``mixtures``: the mean of
  two test images;
- ``digits-8x8``: scikit-learn's 8×8 digits enlarged to 28×28 (bilinear).

Shifts are built from the grey test images (the in-distribution dataset's, not the reference
images) and binarized by one fixed Bernoulli draw, as the run's own test images are (constant
images stay constant). Score settings (fixed in advance, not tuned on any shift): K = 100
importance samples; likelihood regret with 20 Adam steps on 8 common draws (the CLI's default
is 50 on 32; cut for time); PNG input complexity; DoSE's bandwidth by 5-fold cross-validated
likelihood on the reference images; the default verdict (``fisher``: Fisher's method over the
empirical tail probabilities of log p(x) (two-sided), regret, complexity, the likelihood
ratio and DoSE — the rule and parts chosen on validation shifts, not on these;
``fisher-without-background``, the same without the likelihood ratio: the verdict of
``pyro-vae anomaly`` when no background model is given). ``likelihood-ratio``: Ren et al.'s
(2019) log p_bg(x) − log p(x), the background model the same recipe, budget and seed trained
on the training images with each pixel replaced, with probability μ = 0.2 (fixed before any
measurement), by a uniform grey value before binarization
(:func:`pyro_vae.anomaly.train_background`; kept in ``--runs`` as
``DATASET-EPOCHS-background``). ``knn``, the distance of the
code μ(x) to its k-th nearest in-distribution code (:mod:`pyro_vae.knn_score`, k = ⌈√n⌉), is an
informative column: the validation shifts rejected it as a part of the verdict
(``benchmarks/ood_validation.py``), so it is reported here after that choice, not used for
it. The batch-level typicality test is left out.

Informative extras in the result's details (the shifts stay as defined above): AUROC against
the rotated and upside-down images of each class, and, for the MNIST model, against the
upside-down digits other than 0, 1, 3 and 8 (which a top-to-bottom flip leaves nearly the same
digit), also a row of the table.

Run by hand, not in CI (one thread; about 15-25 minutes on a busy 2-core machine; ``--runs``
reuses the models ``benchmarks/ood_validation.py --runs`` trained, the same recipe and seed):

    OMP_NUM_THREADS=1 python benchmarks/ood_shifts.py --data-dir ../shared/data --runs runs/ood

Writes benchmarks/results/ood_shifts.json and docs/images/ood_shifts.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae import anomaly  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.data import binarize  # noqa: E402
from pyro_vae.fisher import FisherCombination  # noqa: E402
from pyro_vae.plots import save_figure, subplots  # noqa: E402
from pyro_vae.runs import CHECKPOINT, load_trained, write_json  # noqa: E402
from pyro_vae.training import prepare_data, train  # noqa: E402
from pyro_vae.transformation_score import (DEFAULT_EPOCHS,  # noqa: E402
                                           TransformationClassifier, load_classifier,
                                           save_classifier, train_transformation_classifier)

DATASETS = ("mnist", "fashion-mnist")
SHIFTS = ("other", "inverted", "rotated", "upside-down", "pixel-shuffled", "noise", "constant",
          "crops", "mixtures", "digits-8x8")
#: The default verdict when the user gives no background model (``pyro-vae anomaly`` without
#: ``--background``): Fisher's combination of the same parts but the likelihood ratio.
WITHOUT_BACKGROUND = "fisher-without-background"
#: The fifth round's verdict (with a background model, without the transformation score), for
#: comparison: the sixth round added that score (``benchmarks/ood_validation.py``).
WITHOUT_TRANSFORMATIONS = "fisher-without-transformations"
#: The sixth and seventh rounds' verdict (with the transformation score, without the feature
#: score), for comparison: the eighth round added the feature score.
WITHOUT_FEATURES = "fisher-without-features"
#: The parts each comparison verdict leaves out of the default's.
LEFT_OUT = {WITHOUT_BACKGROUND: ("likelihood-ratio",),
            WITHOUT_TRANSFORMATIONS: ("transformations", "features"),
            WITHOUT_FEATURES: ("features",)}
SCORES = ("log-likelihood", "elbo", "regret", "complexity", "likelihood-ratio",
          "transformations", "features", "dose", "knn", "fisher", WITHOUT_BACKGROUND,
          WITHOUT_TRANSFORMATIONS, WITHOUT_FEATURES)
#: The scores with an in-distribution threshold of their own (calibration, flagged shares).
CALIBRATED = tuple(s for s in SCORES if s not in LEFT_OUT)
#: Ren et al.'s (2019) perturbation rate μ of the likelihood ratio's background model: the
#: middle of the 0.1-0.3 they report for Fashion-MNIST, fixed before any measurement.
BACKGROUND_RATE = 0.2
#: Scores reported but rejected for the verdict on the validation shifts (informative columns).
INFORMATIVE = ("knn",)
SIDE = 28
#: MNIST digits that a top-to-bottom flip leaves (nearly) the same digit.
FLIP_INVARIANT_DIGITS = (0, 1, 3, 8)


def _digits_8x8(count: int, generator: torch.Generator) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32)
    index = torch.randint(len(images), (count,), generator=generator)
    enlarged = torch.nn.functional.interpolate(images[index, None], size=(SIDE, SIDE),
                                               mode="bilinear", align_corners=False)
    return enlarged.clamp(0, 1).reshape(count, -1)


def build_shifts(grey: torch.Tensor, other: torch.Tensor, seed: int = 0
                 ) -> dict[str, torch.Tensor]:
    """The shifted image sets (flattened, in [0, 1], binarized), from the grey test images
    ``grey`` of the in-distribution dataset and the other dataset's binarized test images."""
    generator = torch.Generator().manual_seed(seed)
    count = len(grey)
    square = grey.reshape(count, SIDE, SIDE)
    crops = torch.empty_like(square)
    corners = torch.randint(SIDE // 2 + 1, (count, 2), generator=generator)
    for n, (row, column) in enumerate(corners.tolist()):
        patch = square[n, row: row + SIDE // 2, column: column + SIDE // 2]
        crops[n] = patch.repeat_interleave(2, 0).repeat_interleave(2, 1)
    partner = torch.randperm(count, generator=generator)
    shuffled = torch.stack([image[torch.randperm(SIDE * SIDE, generator=generator)]
                            for image in grey])
    grey_sets = {
        "inverted": 1.0 - grey,
        "rotated": torch.rot90(square, 1, (1, 2)).reshape(count, -1),
        "upside-down": torch.flip(square, (1,)).reshape(count, -1),
        "pixel-shuffled": shuffled,
        "noise": torch.rand(count, SIDE * SIDE, generator=generator),
        "constant": (torch.arange(count) % 2).float()[:, None].expand(count, SIDE * SIDE),
        "crops": crops.reshape(count, -1),
        "mixtures": 0.5 * (grey + grey[partner]),
        "digits-8x8": _digits_8x8(count, generator),
    }
    shifts = {"other": other[:count]}
    shifts.update({name: binarize(images.contiguous(), generator)
                   for name, images in grey_sets.items()})
    return {name: shifts[name] for name in SHIFTS}


#: The networks a model of the benchmarks may have: the library's default (MLP 784-128-128-8,
#: ReLU) and, the fourth round's candidate of a stronger model, the one-stochastic-layer
#: architecture of Burda et al. (2016), as ``models/mnist_vae_burda.toml`` has it (784-200-200-50,
#: tanh, log-variance head), with the default recipe's training otherwise.
ARCHITECTURES = {
    "default": {},
    "burda": {"latent_dim": 50, "hidden_dims": [200, 200], "activation": "tanh",
              "encoder_scale": "logvar"},
}


def architecture_of(config) -> str:
    """The name in :data:`ARCHITECTURES` of the run ``config``'s networks (the most specific
    that matches: every model matches the default's empty table)."""
    return max((name for name, table in ARCHITECTURES.items()
                if all(getattr(config.model, key) == value for key, value in table.items())),
               key=lambda name: len(ARCHITECTURES[name]))


def run_name(dataset: str, epochs: int, architecture: str = "default", seed: int = 0) -> str:
    """``DATASET-EPOCHS`` [``-ARCHITECTURE``] [``-seedSEED``]: a model's folder in ``--runs``."""
    return (f"{dataset}-{epochs}" + ("" if architecture == "default" else f"-{architecture}")
            + ("" if seed == 0 else f"-seed{seed}"))


def trained_model(dataset: str, epochs: int, data_dir: str, folder: Path, seed: int = 0,
                  architecture: str = "default"):
    """The benchmark's model of ``dataset`` (the default recipe, ``epochs`` epochs, batch 100,
    seed 0): trained into ``folder/DATASET-EPOCHS`` unless a finished run is already there
    (``--runs`` shares them with ``benchmarks/ood_validation.py``); another ``seed`` (an
    ensemble member) or ``architecture`` (:data:`ARCHITECTURES`) into the folder
    :func:`run_name` names. Returns (config, vae, training seconds)."""
    run_dir = folder / run_name(dataset, epochs, architecture, seed)
    if not (run_dir / CHECKPOINT).exists():
        config = Config().with_overrides({
            "data": {"dataset": dataset, "data_dir": data_dir},
            "model": ARCHITECTURES[architecture],
            "train": {"epochs": epochs, "batch_size": 100, "seed": seed},
            "evaluate": {"num_samples": 10}})
        train(config, run_dir, progress=None)
    config, vae, checkpoint = load_trained(run_dir)
    if config.train.epochs != epochs:
        raise SystemExit(f"{run_dir} holds a run of {config.train.epochs} epochs, not {epochs}")
    return config, vae, float(checkpoint["train_seconds"])


def ensemble_members(config, folder: Path, count: int) -> tuple[list[torch.nn.Module], float]:
    """The ensemble's other ``count − 1`` members of the run ``config``: the same recipe and
    budget with the seeds 1 … count − 1 (:mod:`pyro_vae.ensemble_score`), trained into
    ``folder`` unless finished there. Returns (models, their total training seconds)."""
    members, seconds = [], 0.0
    for seed in range(config.train.seed + 1, config.train.seed + count):
        _, member, member_seconds = trained_model(config.data.dataset, config.train.epochs,
                                                  config.data.data_dir, folder, seed=seed,
                                                  architecture=architecture_of(config))
        members.append(member)
        seconds += member_seconds
    return members, seconds


def background_model(config, data, folder: Path) -> tuple[torch.nn.Module, float]:
    """The likelihood ratio's background model of the run ``config`` (its recipe, epochs and
    seed) on its training images perturbed at :data:`BACKGROUND_RATE`: trained into
    ``folder/DATASET-EPOCHS-background`` unless finished there. Returns (model, seconds)."""
    epochs = config.train.epochs
    architecture = architecture_of(config)
    run_dir = folder / f"{run_name(config.data.dataset, epochs, architecture)}-background"
    stamp_path = run_dir / "perturbation.json"  # written last, as pyro-vae anomaly does
    if not stamp_path.exists():
        if run_dir.exists():
            raise SystemExit(f"{run_dir} holds an unfinished background model; remove it")
        settings = anomaly.BackgroundSettings(rate=BACKGROUND_RATE, epochs=epochs)
        anomaly.train_background(config, data, run_dir, settings, seed=config.train.seed)
        write_json(stamp_path, {"dataset": config.data.dataset, "rate": BACKGROUND_RATE,
                                "epochs": epochs, "seed": config.train.seed})
    _, background, checkpoint = load_trained(run_dir)
    return background, float(checkpoint["train_seconds"])


def transformation_classifier(config, data, folder: Path, epochs: int = DEFAULT_EPOCHS
                              ) -> tuple[TransformationClassifier, float]:
    """The transformation score's classifier of the run ``config`` (:mod:`pyro_vae.
    transformation_score`, ``epochs`` passes, the run's seed), trained on its training images
    into ``folder/RUN-transformations.pt`` (``-transformationsEPOCHS.pt`` for another number of
    passes than the default) unless that is there. Returns (classifier, training seconds)."""
    suffix = "" if epochs == DEFAULT_EPOCHS else str(epochs)
    name = run_name(config.data.dataset, config.train.epochs, architecture_of(config))
    path = folder / f"{name}-transformations{suffix}.pt"
    seconds_path = path.with_suffix(".json")  # written last
    if not seconds_path.exists():
        clock = time.perf_counter()
        classifier = train_transformation_classifier(
            data.train_x.cpu(), data.image_shape, epochs,
            binarize_batches=config.binarization == "dynamic", seed=config.train.seed)
        seconds = time.perf_counter() - clock
        save_classifier(classifier, path)
        write_json(seconds_path, {"train_seconds": seconds})
    return load_classifier(path), float(json.loads(seconds_path.read_text())["train_seconds"])


def run_one(dataset: str, args: argparse.Namespace, folder: Path) -> dict:
    """Train the model of ``dataset``, score everything; AUROC by shift and score."""
    config, vae, train_seconds = trained_model(dataset, args.epochs, args.data_dir, folder,
                                               architecture=args.architecture)
    data = prepare_data(config)
    background, background_seconds = background_model(config, data, folder)
    classifier, classifier_seconds = transformation_classifier(config, data, folder)
    other_name = next(d for d in DATASETS if d != dataset)
    other = prepare_data(config.with_overrides({"data": {"dataset": other_name}}))
    grey = data.intensities["test"][: args.images]
    sets = {"_normal": data.test_x[: args.images],
            **build_shifts(grey, other.test_x[: args.images], seed=0)}
    settings = anomaly.ScoreSettings(num_samples=args.num_samples, regret_steps=args.regret_steps,
                                     regret_draws=args.regret_draws, compressor="png")
    clock = time.perf_counter()
    torch.manual_seed(0)
    scored, reference = anomaly.score_with_reference(
        vae, data.valid_x[: args.reference], sets, data.image_shape, CALIBRATED, settings,
        background, classifier=classifier)
    score_seconds = time.perf_counter() - clock
    # The verdict without a background model, the fifth round's (without the transformation
    # and feature scores) and the sixth round's (without the feature score), fitted as
    # score_with_reference fits the default.
    for name, left_out in LEFT_OUT.items():
        without = FisherCombination().fit({s: reference.scores[s] for s in anomaly.FISHER_PARTS
                                           if s in reference.scores and s not in left_out})
        for values in scored.values():
            values[name] = without.statistic(values)
    normal = scored.pop("_normal")
    table = {name: {score: asdict(anomaly.detection_metrics(normal[score], values[score]))
                    for score in SCORES} for name, values in scored.items()}
    calibration = anomaly.calibration(reference, normal, 0.05)
    flagged = {name: {score: float(anomaly.flagged(reference, score, values, 0.05)
                                   .double().mean()) for score in CALIBRATED}
               for name, values in scored.items()}
    if args.runs:  # the scores, for re-reading without scoring again
        # Other regret settings than the stated ones keep their own file.
        regret = ("" if (args.regret_steps, args.regret_draws) == (20, 8)
                  else f"-regret{args.regret_steps}x{args.regret_draws}")
        torch.save({"normal": normal, "scored": scored, "reference": reference.scores},
                   folder / f"{run_name(dataset, args.epochs, args.architecture)}{regret}"
                            "-shift-scores.pt")
    # Informative only (the shifts stay as defined): AUROC against the shifted images of each
    # class, for the shifts that leave some classes nearly unchanged (a 0, 1, 3 or 8 turned
    # upside down is still that digit).
    labels = data.test_y[: args.images].cpu()
    by_class = {shift: {str(c): {score: anomaly.detection_metrics(
        normal[score], scored[shift][score][labels == c]).auroc for score in SCORES}
        for c in range(10)} for shift in ("rotated", "upside-down")}
    keep = ~torch.isin(labels, torch.tensor(FLIP_INVARIANT_DIGITS))
    restricted = {score: anomaly.detection_metrics(normal[score],
                                                   scored["upside-down"][score][keep]).auroc
                  for score in SCORES} if dataset == "mnist" else None
    return {"auroc": {shift: {score: table[shift][score]["auroc"] for score in SCORES}
                      for shift in SHIFTS},
            "auroc_by_class": by_class, "upside_down_without_0_1_3_8": restricted,
            "verdict": {"rule": reference.fisher.rule, "tail": reference.fisher.tail,
                        "sides": reference.fisher.sides, "parts": list(reference.fisher.parts)},
            "fpr_at_95_tpr": {shift: {score: table[shift][score]["fpr_at_95_tpr"]
                                      for score in SCORES} for shift in SHIFTS},
            "flagged_share_at_0.05": flagged, "calibration": calibration,
            "dose_bandwidth": reference.dose.bandwidth,
            "dose_bandwidth_selection": reference.dose.selection,
            "other": other_name, "train_seconds": round(train_seconds, 1),
            "background": {"rate": BACKGROUND_RATE, "epochs": args.epochs,
                           "train_seconds": round(background_seconds, 1)},
            "transformation_classifier": {"train_seconds": round(classifier_seconds, 1)},
            "score_seconds": round(score_seconds, 1)}


def save_heatmap(path: Path, results: dict) -> None:
    figure, axes = subplots(1, len(results), figsize=(7.5 * len(results), 5.4), squeeze=False)
    for axis, (dataset, result) in zip(axes.flat, results.items()):
        rows = [f"{result['other']}" if s == "other" else s for s in SHIFTS]
        values = np.array([[result["auroc"][shift][score] for score in SCORES]
                           for shift in SHIFTS])
        image = axis.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      fontweight="bold" if value >= 0.95 else "normal")
        axis.set_xticks(range(len(SCORES)),
                        [f"{s} (informative)" if s in INFORMATIVE else s for s in SCORES],
                        rotation=40, ha="right", fontsize=8)
        axis.set_yticks(range(len(SHIFTS)), rows, fontsize=8)
        axis.set_title(f"{dataset} model ({result['architecture']} networks, "
                       f"{result['epochs']} epochs): AUROC", fontsize=9)
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default="burda",
                        help="the models' networks (default burda: chosen on the validation "
                        "shifts in the fourth round; default: the library's 784-128-128-8)")
    parser.add_argument("--images", type=int, default=2000, help="images per set")
    parser.add_argument("--reference", type=int, default=2000, help="validation images")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--regret-steps", type=int, default=20)
    parser.add_argument("--regret-draws", type=int, default=8)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--runs", default=None, help="folder to keep (and reuse) the trained "
                        "models in (default: a temporary one)")
    parser.add_argument("--out", default=None, help="result folder (default benchmarks/results)")
    parser.add_argument("--name", default="ood_shifts",
                        help="the result file's name (benchmarks/results/NAME.json) and the "
                        "figure's (docs/images/NAME.png), for a run with other settings")
    parser.add_argument("--figure", default=None, help="the heat map (default "
                        "docs/images/NAME.png)")
    args = parser.parse_args()
    if args.figure is None:
        args.figure = str(ROOT / "docs" / "images" / f"{args.name}.png")
    torch.set_num_threads(1)
    started = begin()
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.runs) if args.runs else Path(scratch)
        for dataset in args.datasets:
            results[dataset] = {**run_one(dataset, args, folder), "epochs": args.epochs,
                                "architecture": args.architecture}
            print(dataset, {s: {k: round(v, 3) for k, v in r.items()}
                            for s, r in results[dataset]["auroc"].items()}, flush=True)
    figures = {dataset.replace("-", "_"): {
        shift: {score: {"value": round(result["auroc"][shift][score], 3), "decimals": 3,
                        "label": f"AUROC of {score}, {dataset} model vs {shift}"}
                for score in SCORES} for shift in SHIFTS}
        for dataset, result in results.items()}
    for dataset, result in results.items():
        key = dataset.replace("-", "_")
        figures[key]["default_verdict_min_auroc"] = {
            "value": round(min(result["auroc"][s]["fisher"] for s in SHIFTS), 3), "decimals": 3,
            "label": f"lowest AUROC of the default verdict (fisher, with a background model), "
                     f"{dataset} model"}
        figures[key]["verdict_without_background_min_auroc"] = {
            "value": round(min(result["auroc"][s][WITHOUT_BACKGROUND] for s in SHIFTS), 3),
            "decimals": 3,
            "label": f"lowest AUROC of the verdict without a background model, {dataset} model"}
        figures[key]["verdict_without_transformations_min_auroc"] = {
            "value": round(min(result["auroc"][s][WITHOUT_TRANSFORMATIONS] for s in SHIFTS), 3),
            "decimals": 3,
            "label": f"lowest AUROC of the fifth round's verdict (with a background model, "
                     f"without the transformation and feature scores), {dataset} model"}
        figures[key]["verdict_without_features_min_auroc"] = {
            "value": round(min(result["auroc"][s][WITHOUT_FEATURES] for s in SHIFTS), 3),
            "decimals": 3,
            "label": f"lowest AUROC of the sixth round's verdict (with a background model and "
                     f"the transformation score, without the feature score), {dataset} model"}
        if result["upside_down_without_0_1_3_8"] is not None:
            figures[key]["upside_down_without_0_1_3_8"] = {
                score: {"value": round(value, 3), "decimals": 3,
                        "label": f"AUROC of {score}, {dataset} model vs upside-down digits "
                                 "other than 0, 1, 3, 8 (informative, not a shift)"}
                for score, value in result["upside_down_without_0_1_3_8"].items()}
    rows = [[f"{dataset} model", result["other"] if shift == "other" else shift,
             *[f"{{{dataset.replace('-', '_')}.{shift}.{score}}}" for score in SCORES]]
            for dataset, result in results.items() for shift in SHIFTS]
    rows += [[f"{dataset} model", "(informative) upside-down, digits 2, 4-7, 9 only",
              *[f"{{{dataset.replace('-', '_')}.upside_down_without_0_1_3_8.{score}}}"
                for score in SCORES]]
             for dataset, result in results.items()
             if result["upside_down_without_0_1_3_8"] is not None]
    table = {"columns": ["in-distribution", "shift",
                         *(f"{s} (informative)" if s in INFORMATIVE else s for s in SCORES)],
             "rows": rows}
    details = {"settings": {k: v for k, v in vars(args).items()
                            if k not in ("data_dir", "out", "figure", "runs", "name")},
               **{dataset: {k: v for k, v in result.items() if k != "auroc"}
                  for dataset, result in results.items()}}
    path = write_result(args.name, figures, started=started, table=table, details=details,
                        out_dir=args.out)
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    save_heatmap(Path(args.figure), results)
    print(f"wrote {path} and {args.figure}")


if __name__ == "__main__":
    main()
