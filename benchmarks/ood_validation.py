"""Choose the default verdict's combination rule on *validation shifts* (issue 33).

The default verdict combines the in-distribution tail probabilities of log p(x) (both tails),
likelihood regret, input complexity and DoSE, and, since the third round below, the likelihood
ratio when a background model is given (:mod:`pyro_vae.fisher`). How to read each tail
probability (``empirical``, ``kernel``, ``exponential``), which scores to read two-sided
(``likelihood``: log p(x) only; ``all``) and how to combine them (``fisher``, ``tippett``) are
choices; so is the training budget. They are made here, on shifts that are **not** the
benchmark's (``benchmarks/ood_shifts.py``) and are built only from the in-distribution
*training* images, fixed before any result was seen:

- ``blurred``: Gaussian blur, σ = 1 pixel (5×5 kernel);
- ``translated``: moved 4 pixels in one of the 8 compass directions (random per image),
  blank pixels filled in;
- ``salt-and-pepper``: 5 % of the pixels set to 0 or 1 at random;
- ``thicker``: grey-level dilation (3×3 maximum): thicker strokes, bigger garments;
- ``thinner``: grey-level erosion (3×3 minimum);
- ``cutout``: a random 10×10 square blanked;
- ``faint``: intensities halved (half the ink after binarization).

Grey shifted images are binarized by one fixed Bernoulli draw, as in the benchmark. The
in-distribution images are validation images the scores were *not* fitted on (the reference is
the first ``--reference`` validation images, as in the benchmark; the normal set the next
``--images``). The models, scores and their settings are the benchmark's (K = 100, regret 20
Adam steps on 8 draws, PNG complexity, DoSE by cross-validated bandwidth).

The candidates: every (rule, tail, sides) of :mod:`pyro_vae.fisher` (12), and ``joint-kde``: a
kernel density of the vector of the four scores (standardized, bandwidth by 5-fold
cross-validation; :class:`pyro_vae.dose.DoSE` applied to the scores), fitted on the same half
of the reference images as the tail probabilities. Second round (a score that looks at where
the code lands, :mod:`pyro_vae.knn_score`): ``fisher-empirical-likelihood+knn``, the default
with the k-th nearest neighbour distance of μ(x) as a fifth part, and ``knn``, that distance
alone (k = ⌈√n⌉, fixed by rule before any measurement). Third round (a score that compares
with a model of the background statistics): ``fisher-empirical-likelihood+likelihood-ratio``,
the default with Ren et al.'s (2019) likelihood ratio log p_bg(x) − log p(x) as a fifth part,
and ``likelihood-ratio`` alone. The background model is the same recipe with the same budget
(epochs, batch 100, seed 0), trained by :func:`pyro_vae.anomaly.train_background` on the
in-distribution training images with each pixel replaced, with probability μ = 0.2, by a
uniform grey value before binarization (``BACKGROUND_RATE`` of ``ood_shifts.py``: the middle
of the range 0.1-0.3 that Ren et al. report for Fashion-MNIST, fixed before any measurement,
not tuned); it
is kept in ``--runs`` as ``DATASET-EPOCHS-background`` (with the ``perturbation.json`` stamp
that ``pyro-vae anomaly --background`` reads, so a copy of it at ``OUT/background`` is reused
there). Fourth round, two candidates fixed before measuring: the ensemble's disagreement
Var_m log p̂_m(x) over M = 5 models of the same recipe and budget with the seeds 0-4 (Choi et
al. 2018; :mod:`pyro_vae.ensemble_score`; M from the papers) as a sixth part
(``...+likelihood-ratio+ensemble``), the disagreement alone and −WAIC alone; and a stronger
model, ``burda-architecture``: the third round's verdict unchanged, computed from models (and
their background models) with the one-stochastic-layer networks of Burda et al. (2016),
784-200-200-50 tanh with a log-variance head (``ARCHITECTURES["burda"]`` of ``ood_shifts.py``,
as ``models/mnist_vae_burda.toml`` has them), trained with the same budget and recipe
otherwise; measured at 30 epochs, the budget the earlier rounds chose. Only the new scores are
computed when the cached scores of an earlier round are there (``--runs``); they are added to
the cache. Fifth round, one candidate fixed before measuring: the fourth round's choice
trained longer. The budget that won the first round (30 epochs) was the largest of the grid
3, 10, 30, and the stronger networks were measured at it alone; so the grid is extended by
one step of the same ratio of about three, to **100 epochs** (``--stronger-epochs 30 100``),
for the stronger model and its background model only (the default networks lost at 30).
Sixth round, two candidates fixed before measuring, on the fifth round's choice (the stronger
networks at 100 epochs): the transformation score of Golan & El-Yaniv (2018)
(:mod:`pyro_vae.transformation_score`: a classifier of the paper's 72 flips, translations and
quarter turns, trained on the model's training images with its seed; every setting the
paper's or fixed for cost, none measured) as a sixth part of the verdict
(``burda-architecture+transformations``), and alone (``transformations``). The candidate was
proposed after the benchmark had shown that the density scores miss flipped and turned
images; it was admitted or rejected by this rule alone, on these shifts, which contain no flip
or turn.
Seventh round, fixed before measuring, on the same models: with the transformation score a
part, the combination rule was chosen among five parts it had never seen, so the first
round's 12 rules (Fisher's or Tippett's; empirical, kernel or exponential tails; log p(x) or
every score two-sided) are measured again with the six parts, each with the classifier of the
default 10 passes and of 30 (the budget grid extended by one step of about three, as the
VAE's was in the fifth round; closer to the paper's): ``six-parts-RULE-TAIL-SIDES-P-passes``,
24 candidates, each changed setting (rule, tail, sides, passes) counted as one change. This
round too was fixed after the benchmark had been seen (its misses: the flips, where the
transformation score alone is at 0.98 and Fisher's sum dilutes it, and Fashion-MNIST
mixtures).
Eighth round, two candidates fixed before measuring (committed before the run), on the sixth
round's choice: the feature score (:mod:`pyro_vae.feature_score`), the squared Mahalanobis
distance of the transformation classifier's hidden features of the untransformed image to those
of the in-distribution images (SSD, Sehwag, Chiang & Mittal 2021: one cluster; the classifier's
only hidden layer; Ledoit-Wolf covariance; the default 10-pass classifier; fitted on the first
half of the reference images, as the bank of codes of ``knn`` is), as a seventh part
(``burda-architecture+transformations+features``) and alone (``features``). Proposed after the
benchmark had been seen (its misses: the flips and Fashion-MNIST mixtures) and after the
validation minimum was seen to lie on Fashion-MNIST's faint, thinner and blurred images; a
score of the features, not of the classifier's answer, might see what a changed stroke does to
them. Admitted or rejected by the rule below alone.

The selection rule, fixed in advance: the highest *minimum* AUROC over every (model,
validation shift) pair (the benchmark's must-hold is a minimum), ties within 0.005 broken by
the mean AUROC, then by the fewer settings changed from the current default (the third
round's choice, ``fisher-empirical-likelihood+likelihood-ratio``; adding or removing one part
counts as one change, a rule of another kind — the joint density, a new score alone, another
model — as three). Each ``--epochs`` budget is measured; the
budget is chosen by the same rule, each budget represented by its chosen candidate (a tie
goes to the budget of the current default, 100 epochs since the fifth round, then to the
smaller budget).

Run by hand, not in CI (one thread on a 2-core machine, training included: about 12 minutes
for the first three rounds' models at the budgets 3, 10 and 30 epochs, about 15 more for the
ensembles' 24 extra models, about 30 more for the stronger models and their background models
at 30 and 100 epochs, about 30 more for the transformation classifiers of the sixth and seventh
rounds (10 and 30 passes: about 3 and 10 minutes per model) and their scoring; about an hour
and a half in all, a few minutes when ``--runs`` holds them):

    OMP_NUM_THREADS=1 python benchmarks/ood_validation.py --data-dir ../shared/data \\
        --runs runs/ood

Writes benchmarks/results/ood_validation.json. ``--runs`` keeps the trained models (and the
scores, ``*-validation-scores.pt``) for ``ood_shifts.py --runs`` to reuse. After the
benchmark has run, ``--check-on-benchmark --epochs 30 --runs runs/ood`` prints every
candidate's AUROC on the benchmark's shifts (a check of the choice, not an input to it).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ood_shifts import (ARCHITECTURES, BACKGROUND_RATE, DATASETS, SIDE,  # noqa: E402
                                   background_model, ensemble_members,
                                   transformation_classifier, trained_model)
from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae import anomaly, fisher  # noqa: E402
from pyro_vae.data import binarize  # noqa: E402
from pyro_vae.dose import DoSE  # noqa: E402
from pyro_vae.ensemble_score import (DEFAULT_MEMBERS, disagreement,  # noqa: E402
                                     member_log_likelihoods, negative_waic)
from pyro_vae.evaluate import estimate_log_likelihood  # noqa: E402
from pyro_vae.feature_score import FeatureDistance, classifier_features  # noqa: E402
from pyro_vae.knn_score import KNNScore, latent_codes  # noqa: E402
from pyro_vae.training import prepare_data  # noqa: E402
from pyro_vae.transformation_score import DEFAULT_EPOCHS as DEFAULT_PASSES  # noqa: E402
from pyro_vae.transformation_score import transformation_scores  # noqa: E402

VALIDATION_SHIFTS = ("blurred", "translated", "salt-and-pepper", "thicker", "thinner", "cutout",
                     "faint")
PARTS = ("log-likelihood", "regret", "complexity", "dose")
PREVIOUS = ("fisher", "empirical", "likelihood")
#: The scores of the later rounds' candidates (each AUROC is recorded for them too).
NEW_PARTS = ("knn", "likelihood-ratio", "ensemble", "waic")
#: The second round's candidates: the previous default with the new score as a part, and it alone.
WITH_KNN, KNN_ALONE = "fisher-empirical-likelihood+knn", "knn"
#: The third round's: the previous default with the likelihood ratio as a part, and it alone.
WITH_LLR, LLR_ALONE = "fisher-empirical-likelihood+likelihood-ratio", "likelihood-ratio"
#: The fourth round's: the third round's choice with the ensemble's disagreement as a part, the
#: disagreement alone, and Choi et al.'s −WAIC alone (:mod:`pyro_vae.ensemble_score`).
WITH_ENSEMBLE = "fisher-empirical-likelihood+likelihood-ratio+ensemble"
ENSEMBLE_ALONE, WAIC_ALONE = "ensemble", "waic"
ENSEMBLE_PARTS = ("ensemble", "waic")
#: And a stronger model: the third round's verdict on models of Burda et al.'s architecture
#: (``ARCHITECTURES["burda"]`` of ``ood_shifts.py``), measured at the chosen budget only.
STRONGER = "burda-architecture"
#: The budgets the stronger model is measured at: the chosen one (fourth round), and the grid
#: extended by one step (fifth round).
STRONGER_EPOCHS = (30, 100)
#: The budget of the current default, which a near-tie between budgets keeps (30 epochs until
#: the fifth round chose 100 by the mean, not by a tie).
CURRENT_EPOCHS = 100
#: The sixth round's candidates, on the fifth round's choice (the stronger networks at
#: :data:`SIXTH_ROUND_EPOCHS` epochs): the transformation score of Golan & El-Yaniv (2018)
#: (:mod:`pyro_vae.transformation_score`, its default settings) as a sixth part of the
#: verdict, and alone.
SIXTH_ROUND_EPOCHS = 100
WITH_TRANSFORMATIONS = "burda-architecture+transformations"
TRANSFORMATIONS_ALONE = "transformations"
#: The seventh round's: with the transformation score a part, the first round's 12 rules
#: (rule, tail, sides) measured again, with the classifier trained the default 10 passes and
#: 30 (the grid extended by one step of about three, as the VAE's budget was in the fifth).
SEVENTH_ROUND_PASSES = (10, 30)
SEVENTH_ROUND = [f"six-parts-{rule}-{tail}-{sides}-{passes}-passes"
                 for passes in SEVENTH_ROUND_PASSES
                 for rule, tail, sides in itertools.product(fisher.RULES, fisher.TAILS,
                                                            fisher.SIDES)]


#: The eighth round's, on the sixth round's choice: the distance of an image's features in the
#: transformation classifier (default passes) to the in-distribution features
#: (:mod:`pyro_vae.feature_score`; SSD, Sehwag et al. 2021) as a seventh part, and alone.
WITH_FEATURES = "burda-architecture+transformations+features"
FEATURES_ALONE = "features"


def transformation_part(passes: int) -> str:
    """The name under which the scores of a classifier of ``passes`` passes are cached."""
    return "transformations" if passes == DEFAULT_PASSES else f"transformations-{passes}"


def build_validation_shifts(grey: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """The validation shifts (flattened, binarized) of the grey training images ``grey``."""
    generator = torch.Generator().manual_seed(seed)
    count = len(grey)
    square = grey.reshape(count, 1, SIDE, SIDE)
    offsets = torch.arange(-2, 3, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / 2.0)
    kernel = (kernel[:, None] * kernel[None, :] / kernel.sum() ** 2).float()
    blurred = torch.nn.functional.conv2d(square, kernel[None, None], padding=2)
    directions = [(dr, dc) for dr in (-4, 0, 4) for dc in (-4, 0, 4) if (dr, dc) != (0, 0)]
    padded = torch.nn.functional.pad(square, (4, 4, 4, 4))
    translated = torch.empty_like(square)
    cutout = square.clone()
    corners = torch.randint(SIDE - 10 + 1, (count, 2), generator=generator)
    for n, pick in enumerate(torch.randint(8, (count,), generator=generator).tolist()):
        dr, dc = directions[pick]
        translated[n] = padded[n, :, 4 - dr: 4 - dr + SIDE, 4 - dc: 4 - dc + SIDE]
        row, column = corners[n].tolist()
        cutout[n, :, row: row + 10, column: column + 10] = 0.0
    salt = torch.rand(square.shape, generator=generator) < 0.05
    pepper = (torch.rand(square.shape, generator=generator) < 0.5).float()
    grey_sets = {
        "blurred": blurred.clamp(0, 1),
        "translated": translated,
        "salt-and-pepper": torch.where(salt, pepper, square),
        "thicker": torch.nn.functional.max_pool2d(square, 3, stride=1, padding=1),
        "thinner": -torch.nn.functional.max_pool2d(-square, 3, stride=1, padding=1),
        "cutout": cutout,
        "faint": 0.5 * square,
    }
    return {name: binarize(grey_sets[name].reshape(count, -1).contiguous(), generator)
            for name in VALIDATION_SHIFTS}


def candidate_names() -> list[str]:
    return ["-".join(c) for c in itertools.product(fisher.RULES, fisher.TAILS, fisher.SIDES)] \
        + ["joint-kde", WITH_KNN, KNN_ALONE, WITH_LLR, LLR_ALONE, WITH_ENSEMBLE, ENSEMBLE_ALONE,
           WAIC_ALONE, STRONGER, WITH_TRANSFORMATIONS, TRANSFORMATIONS_ALONE, *SEVENTH_ROUND,
           WITH_FEATURES, FEATURES_ALONE]


def candidate_statistics(reference: dict[str, torch.Tensor],
                         sets: dict[str, dict[str, torch.Tensor]], seed: int = 0
                         ) -> dict[str, dict[str, torch.Tensor]]:
    """``{candidate: {set: T}}``: each candidate fitted on the reference scores of
    :data:`PARTS` (halves as in :class:`pyro_vae.fisher.FisherCombination`)."""
    parts = {name: reference[name] for name in PARTS}
    found = {}
    for rule, tail, sides in itertools.product(fisher.RULES, fisher.TAILS, fisher.SIDES):
        combination = fisher.FisherCombination(rule, tail, sides).fit(parts, seed=seed)
        found[f"{rule}-{tail}-{sides}"] = {name: combination.statistic(values)
                                           for name, values in sets.items()}
    count = len(parts[PARTS[0]])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    stacked = torch.stack([parts[name] for name in PARTS], dim=-1)
    density = DoSE(seed=seed).fit(stacked[order[: count // 2]])
    found["joint-kde"] = {name: density.score(torch.stack([values[p] for p in PARTS], dim=-1))
                          for name, values in sets.items()}
    combination = fisher.FisherCombination(*PREVIOUS).fit(
        {**parts, "knn": reference["knn"]}, seed=seed)
    found[WITH_KNN] = {name: combination.statistic(values) for name, values in sets.items()}
    found[KNN_ALONE] = {name: values["knn"] for name, values in sets.items()}
    combination = fisher.FisherCombination(*PREVIOUS).fit(
        {**parts, "likelihood-ratio": reference["likelihood-ratio"]}, seed=seed)
    found[WITH_LLR] = {name: combination.statistic(values) for name, values in sets.items()}
    found[LLR_ALONE] = {name: values["likelihood-ratio"] for name, values in sets.items()}
    if "ensemble" not in reference:  # scores kept by ood_shifts.py, which trains no ensemble
        return found
    combination = fisher.FisherCombination(*PREVIOUS).fit(
        {**parts, "likelihood-ratio": reference["likelihood-ratio"],
         "ensemble": reference["ensemble"]}, seed=seed)
    found[WITH_ENSEMBLE] = {name: combination.statistic(values) for name, values in sets.items()}
    for alone in (ENSEMBLE_ALONE, WAIC_ALONE):
        found[alone] = {name: values[alone] for name, values in sets.items()}
    return found


def changed_settings(candidate: str) -> int:
    """Settings changed from the current default, the third round's choice ``WITH_LLR``
    (adding or removing a part is one change; a rule of another kind three)."""
    if candidate in ("joint-kde", KNN_ALONE, LLR_ALONE, ENSEMBLE_ALONE, WAIC_ALONE, STRONGER,
                     TRANSFORMATIONS_ALONE, FEATURES_ALONE):
        return 3
    if candidate == WITH_TRANSFORMATIONS:  # the stronger model's verdict and one part
        return 4
    if candidate == WITH_FEATURES:  # and one more part
        return 5
    if candidate in SEVENTH_ROUND:  # that, another rule, tail or sides, another budget
        *setting, passes, _ = candidate[len("six-parts-"):].split("-")
        return (4 + sum(a != b for a, b in zip(setting, PREVIOUS))
                + (int(passes) != DEFAULT_PASSES))
    if candidate == WITH_LLR:
        return 0
    if candidate == WITH_ENSEMBLE:
        return 1
    if candidate == WITH_KNN:
        return 2
    return 1 + sum(a != b for a, b in zip(candidate.split("-"), PREVIOUS))


def choose(auroc: dict[str, dict[str, dict[str, float]]]) -> tuple[str, dict[str, dict]]:
    """The selection rule of the module docstring over ``{dataset: {shift: {candidate: auroc}}}``.
    Returns the chosen candidate and each candidate's minimum and mean."""
    summary = {}
    for candidate in candidate_names():
        values = [auroc[d][s][candidate] for d in auroc for s in auroc[d]
                  if candidate in auroc[d][s]]
        if not values:  # not measured at this budget
            continue
        summary[candidate] = {"min": min(values), "mean": sum(values) / len(values)}
    best_min = max(v["min"] for v in summary.values())
    tied = [c for c, v in summary.items() if v["min"] >= best_min - 0.005]
    best_mean = max(summary[c]["mean"] for c in tied)
    tied = [c for c in tied if summary[c]["mean"] >= best_mean - 0.005]
    return min(tied, key=lambda c: (changed_settings(c), -summary[c]["min"])), summary


def choose_budget(best: dict[int, dict[str, float]]) -> int:
    """The budget whose chosen candidate (``{epochs: {"min": ..., "mean": ...}}``) wins by the
    selection rule: the highest minimum, near-ties (0.005) by the mean, then the current
    default's budget, then the smaller one."""
    best_min = max(v["min"] for v in best.values())
    tied = [e for e, v in best.items() if v["min"] >= best_min - 0.005]
    best_mean = max(best[e]["mean"] for e in tied)
    tied = [e for e in tied if best[e]["mean"] >= best_mean - 0.005]
    return min(tied, key=lambda e: (e != CURRENT_EPOCHS, e))


def stronger_model_auroc(dataset: str, epochs: int, args: argparse.Namespace, folder: Path
                         ) -> tuple[dict[str, dict[str, float]], dict]:
    """The third round's verdict (the parts and the likelihood ratio, Fisher's rule over
    empirical tails) computed from models of the stronger architecture (their own background
    model), and at :data:`SIXTH_ROUND_EPOCHS` the sixth round's candidates beside it:
    ``{shift: {candidate: AUROC}}`` and the timings. Scores cached as the default model's
    are; the transformation score is added to the cache when it is not there."""
    config, vae, train_seconds = trained_model(dataset, epochs, args.data_dir, folder,
                                               architecture="burda")
    data = prepare_data(config)
    background, background_seconds = background_model(config, data, folder)
    cache = folder / f"{dataset}-{epochs}-burda-validation-scores.pt"
    clock = time.perf_counter()
    cached = cache.exists()
    sets = validation_sets(data, args)
    reference_x = data.valid_x[: args.reference]
    if cached:
        saved = torch.load(cache)
        scored, reference_scores = saved["scored"], saved["reference"]
    else:
        settings = anomaly.ScoreSettings(num_samples=args.num_samples,
                                         regret_steps=args.regret_steps,
                                         regret_draws=args.regret_draws, compressor="png")
        torch.manual_seed(0)
        scored, reference = anomaly.score_with_reference(
            vae, reference_x, sets, data.image_shape, (*PARTS, "likelihood-ratio"), settings,
            background)
        reference_scores = reference.scores
    timings = {"train_seconds": round(train_seconds, 1),
               "background_train_seconds": round(background_seconds, 1)}
    if epochs == SIXTH_ROUND_EPOCHS:
        _, reference_half = anomaly.reference_halves(len(reference_x))
        for passes in SEVENTH_ROUND_PASSES:
            part = transformation_part(passes)
            if part in reference_scores:
                continue
            classifier, seconds = transformation_classifier(config, data, folder, passes)
            timings[f"{part}_train_seconds"] = round(seconds, 1)
            for name, values in scored.items():
                values[part] = transformation_scores(classifier, sets[name])
            reference_scores[part] = transformation_scores(classifier,
                                                           reference_x[reference_half])
        if "features" not in reference_scores:
            classifier, _ = transformation_classifier(config, data, folder, DEFAULT_PASSES)
            add_features(classifier, reference_x, sets, scored, reference_scores)
    torch.save({"scored": scored, "reference": reference_scores}, cache)
    with_llr = (*PARTS, "likelihood-ratio")
    found = {STRONGER: _fisher_statistics(reference_scores, scored, with_llr)}
    if "transformations" in reference_scores:
        found[WITH_TRANSFORMATIONS] = _fisher_statistics(reference_scores, scored,
                                                         (*with_llr, "transformations"))
        found[TRANSFORMATIONS_ALONE] = {name: values["transformations"]
                                        for name, values in scored.items()}
    if "features" in reference_scores:
        found[WITH_FEATURES] = _fisher_statistics(reference_scores, scored,
                                                  (*with_llr, "transformations", "features"))
        found[FEATURES_ALONE] = {name: values["features"] for name, values in scored.items()}
    for candidate in SEVENTH_ROUND:
        *setting, passes, _ = candidate[len("six-parts-"):].split("-")
        part = transformation_part(int(passes))
        if part in reference_scores:
            found[candidate] = _fisher_statistics(reference_scores, scored,
                                                  (*with_llr, part), tuple(setting))
    auroc = {shift: {candidate: anomaly.detection_metrics(statistic["_normal"],
                                                          statistic[shift]).auroc
                     for candidate, statistic in found.items()}
             for shift in VALIDATION_SHIFTS}
    timings.update(score_seconds=round(time.perf_counter() - clock, 1), scores_from_cache=cached)
    return auroc, timings


def _fisher_statistics(reference_scores: dict[str, torch.Tensor],
                       scored: dict[str, dict[str, torch.Tensor]], parts: tuple[str, ...],
                       setting: tuple[str, ...] = PREVIOUS) -> dict[str, torch.Tensor]:
    """The combination of ``parts`` by ``setting`` (rule, tail, sides; the default's unless
    given), fitted on the reference scores, for every scored set."""
    combination = fisher.FisherCombination(*setting).fit(
        {name: reference_scores[name] for name in parts})
    return {name: combination.statistic(values) for name, values in scored.items()}


def validation_sets(data, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The in-distribution validation images not in the reference (``_normal``) and the
    validation shifts of ``--images`` training images (a fixed pick)."""
    pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(1))
    grey = data.grey("train")[pick[: args.images]].cpu()
    start = args.reference
    return {"_normal": data.valid_x[start: start + args.images], **build_validation_shifts(grey)}


def add_fitted(name: str, embed, fitted, reference_x: torch.Tensor,
               sets: dict[str, torch.Tensor], scored: dict[str, dict[str, torch.Tensor]],
               reference_scores: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Add a score fitted on embeddings (``embed(x)``; ``fitted``, with ``fit`` and ``score``)
    to cached scores, fitted on the same half of the reference images as
    :func:`pyro_vae.anomaly.score_with_reference` fits it, its reference values from the
    other half."""
    fit_half, reference_half = anomaly.reference_halves(len(reference_x), seed)
    embedded = embed(reference_x)
    fitted.fit(embedded[fit_half])
    reference_scores[name] = fitted.score(embedded[reference_half])
    for set_name, x in sets.items():
        scored[set_name][name] = fitted.score(embed(x))


def add_knn(vae, reference_x: torch.Tensor, sets: dict[str, torch.Tensor],
            scored: dict[str, dict[str, torch.Tensor]], reference_scores: dict[str, torch.Tensor],
            seed: int = 0) -> None:
    """The nearest-neighbour score (its bank of codes μ(x)), added by :func:`add_fitted`."""
    add_fitted("knn", lambda x: latent_codes(vae, x), KNNScore(), reference_x, sets, scored,
               reference_scores, seed)


def add_features(classifier, reference_x: torch.Tensor, sets: dict[str, torch.Tensor],
                 scored: dict[str, dict[str, torch.Tensor]],
                 reference_scores: dict[str, torch.Tensor], seed: int = 0) -> None:
    """The feature score (the classifier's hidden features), added by :func:`add_fitted`."""
    add_fitted("features", lambda x: classifier_features(classifier, x), FeatureDistance(),
               reference_x, sets, scored, reference_scores, seed)


def add_likelihood_ratio(vae, background, reference_x: torch.Tensor,
                         sets: dict[str, torch.Tensor], scored: dict[str, dict[str, torch.Tensor]],
                         reference_scores: dict[str, torch.Tensor], num_samples: int,
                         seed: int = 0) -> None:
    """Add the likelihood ratio log p̂_bg(x) − log p̂(x) to cached scores: the background's
    estimate (K = ``num_samples``) minus the cached log p̂(x) of the same images (the cached
    ``log-likelihood`` is −log p̂(x)), as :func:`pyro_vae.anomaly.score_images` computes it;
    its reference values on the half of the reference images the tails are read from."""
    _, reference_half = anomaly.reference_halves(len(reference_x), seed)
    torch.manual_seed(seed)

    def log_background(x: torch.Tensor) -> torch.Tensor:
        return estimate_log_likelihood(background, x, num_samples).log_likelihood.double()

    reference_scores["likelihood-ratio"] = (log_background(reference_x[reference_half])
                                            + reference_scores["log-likelihood"])
    for name, x in sets.items():
        scored[name]["likelihood-ratio"] = log_background(x) + scored[name]["log-likelihood"]


def add_ensemble(vae, members, reference_x: torch.Tensor, sets: dict[str, torch.Tensor],
                 scored: dict[str, dict[str, torch.Tensor]],
                 reference_scores: dict[str, torch.Tensor], num_samples: int,
                 seed: int = 0) -> None:
    """Add the ensemble's disagreement and −WAIC to cached scores: the run's cached log p̂(x)
    is the first member, the other members' estimates (K = ``num_samples``) are made now, as
    :func:`pyro_vae.anomaly.score_images` does; reference values on the half of the reference
    images the tails are read from."""
    _, reference_half = anomaly.reference_halves(len(reference_x), seed)
    torch.manual_seed(seed)

    def add(x: torch.Tensor, cached: dict[str, torch.Tensor]) -> None:
        log_ps = torch.cat([-cached["log-likelihood"][None],
                            member_log_likelihoods(members, x, num_samples)])
        cached["ensemble"] = disagreement(log_ps)
        cached["waic"] = negative_waic(log_ps)

    add(reference_x[reference_half], reference_scores)
    for name, x in sets.items():
        add(x, scored[name])


def run_one(dataset: str, epochs: int, args: argparse.Namespace, folder: Path) -> dict:
    config, vae, train_seconds = trained_model(dataset, epochs, args.data_dir, folder)
    data = prepare_data(config)
    background, background_seconds = background_model(config, data, folder)
    members, members_seconds = ensemble_members(config, folder, DEFAULT_MEMBERS)
    cache = folder / f"{dataset}-{epochs}-validation-scores.pt"
    clock = time.perf_counter()
    cached = cache.exists()
    if cached:
        saved = torch.load(cache)
        scored, reference_scores = saved["scored"], saved["reference"]
        if "knn" not in reference_scores:  # the first round's cache: add the new score only
            add_knn(vae, data.valid_x[: args.reference], validation_sets(data, args), scored,
                    reference_scores)
            torch.save({"scored": scored, "reference": reference_scores}, cache)
        if "likelihood-ratio" not in reference_scores:  # the third round's score only
            add_likelihood_ratio(vae, background, data.valid_x[: args.reference],
                                 validation_sets(data, args), scored, reference_scores,
                                 args.num_samples)
            torch.save({"scored": scored, "reference": reference_scores}, cache)
        if "ensemble" not in reference_scores:  # the fourth round's scores only
            add_ensemble(vae, members, data.valid_x[: args.reference],
                         validation_sets(data, args), scored, reference_scores,
                         args.num_samples)
            torch.save({"scored": scored, "reference": reference_scores}, cache)
    else:
        sets = validation_sets(data, args)
        settings = anomaly.ScoreSettings(num_samples=args.num_samples,
                                         regret_steps=args.regret_steps,
                                         regret_draws=args.regret_draws, compressor="png")
        torch.manual_seed(0)
        scored, reference = anomaly.score_with_reference(
            vae, data.valid_x[: args.reference], sets, data.image_shape, (*PARTS, *NEW_PARTS),
            settings, background, members=members)
        reference_scores = reference.scores
        torch.save({"scored": scored, "reference": reference_scores}, cache)
    score_seconds = time.perf_counter() - clock
    statistics = candidate_statistics(reference_scores, scored)
    normal = scored["_normal"]
    auroc = {shift: {**{c: anomaly.detection_metrics(statistics[c]["_normal"],
                                                      statistics[c][shift]).auroc
                        for c in statistics},
                     **{p: anomaly.detection_metrics(normal[p], scored[shift][p]).auroc
                        for p in (*PARTS, *NEW_PARTS)}}
             for shift in VALIDATION_SHIFTS}
    return {"auroc": auroc, "train_seconds": round(train_seconds, 1),
            "background_train_seconds": round(background_seconds, 1),
            "ensemble_train_seconds": round(members_seconds, 1),
            "score_seconds": round(score_seconds, 1), "scores_from_cache": cached}


def check_on_benchmark(folder: Path, epochs: int, architecture: str = "burda") -> None:
    """Print every candidate's AUROC on the *benchmark's* shifts, read from the scores
    ``ood_shifts.py --runs`` kept: a check after the choice, never an input to it."""
    from benchmarks.ood_shifts import SHIFTS, run_name

    for dataset in DATASETS:
        path = folder / f"{run_name(dataset, epochs, architecture)}-shift-scores.pt"
        if not path.exists():
            print(f"{dataset} ({epochs} epochs, {architecture} networks): no benchmark scores "
                  f"in {folder} (run ood_shifts.py --epochs {epochs} --architecture "
                  f"{architecture} --runs {folder} first)")
            continue
        saved = torch.load(path)
        statistics = candidate_statistics(saved["reference"],
                                          {"_normal": saved["normal"], **saved["scored"]})
        print(f"{dataset} ({epochs} epochs): AUROC on {', '.join(SHIFTS)}")
        for name, values in statistics.items():
            aurocs = [anomaly.detection_metrics(values["_normal"], values[s]).auroc
                      for s in SHIFTS]
            print(f"  {name:<32}" + " ".join(f"{a:.3f}" for a in aurocs)
                  + f"   {sum(a >= 0.95 for a in aurocs)} at 0.95 or more")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 10, 30])
    parser.add_argument("--images", type=int, default=1000, help="images per set")
    parser.add_argument("--reference", type=int, default=2000, help="validation images")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--regret-steps", type=int, default=20)
    parser.add_argument("--regret-draws", type=int, default=8)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--stronger-epochs", type=int, nargs="*", default=list(STRONGER_EPOCHS),
                        help="budgets at which the stronger model (Burda et al.'s networks) is "
                        "measured (default: 30 100)")
    parser.add_argument("--runs", default=None, help="folder to keep the trained models and "
                        "scores in (default: a temporary one)")
    parser.add_argument("--out", default=None, help="result folder (default benchmarks/results)")
    parser.add_argument("--check-on-benchmark", action="store_true",
                        help="only print each candidate's AUROC on the benchmark's shifts, from "
                        "the scores ood_shifts.py --runs kept in --runs (after the choice)")
    parser.add_argument("--architecture", default="burda", choices=sorted(ARCHITECTURES),
                        help="with --check-on-benchmark: the networks whose scores to read")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check_on_benchmark:
        for epochs in args.epochs:
            check_on_benchmark(Path(args.runs or "runs/ood"), epochs, args.architecture)
        return
    started = begin()
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.runs) if args.runs else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for epochs in sorted(set(args.epochs) | set(args.stronger_epochs)):
            results[epochs] = ({d: run_one(d, epochs, args, folder) for d in args.datasets}
                               if epochs in args.epochs else  # the stronger model alone
                               {d: {"auroc": {s: {} for s in VALIDATION_SHIFTS}}
                                for d in args.datasets})
            if epochs in args.stronger_epochs:
                for dataset in args.datasets:
                    auroc, seconds = stronger_model_auroc(dataset, epochs, args, folder)
                    for shift, values in auroc.items():
                        results[epochs][dataset]["auroc"][shift].update(values)
                    results[epochs][dataset]["stronger_model"] = seconds
            print(epochs, {d: {s: {k: round(v, 3) for k, v in r.items()}
                               for s, r in results[epochs][d]["auroc"].items()}
                           for d in args.datasets}, flush=True)
    selection = {}
    for epochs, by_dataset in results.items():
        chosen, summary = choose({d: r["auroc"] for d, r in by_dataset.items()})
        selection[epochs] = {"chosen": chosen, "summary": summary}
    budget = choose_budget({epochs: s["summary"][s["chosen"]] for epochs, s in selection.items()})
    figures = {f"epochs_{epochs}": {
        **{dataset.replace("-", "_"): {
            shift: {name: {"value": round(value, 3), "decimals": 3,
                           "label": f"validation AUROC of {name}, {dataset} model "
                                    f"({epochs} epochs) vs {shift}"}
                    for name, value in row.items()}
            for shift, row in result["auroc"].items()}
           for dataset, result in results[epochs].items()},
        **{f"{stat}_{name}": {"value": round(value, 3), "decimals": 3,
                              "label": f"{stat} validation AUROC of {name}, {epochs} epochs"}
           for name, values in selection[epochs]["summary"].items()
           for stat, value in values.items()}}
        for epochs in results}
    rows = [[f"{epochs}", name, f"{{epochs_{epochs}.min_{name}}}",
             f"{{epochs_{epochs}.mean_{name}}}",
             "chosen" if name == selection[epochs]["chosen"] and epochs == budget else ""]
            for epochs in results for name in candidate_names()
            if name in selection[epochs]["summary"]]
    table = {"columns": ["epochs", "candidate (rule-tail-sides)", "min AUROC", "mean AUROC",
                         ""], "rows": rows}
    details = {"settings": {k: v for k, v in vars(args).items()
                            if k not in ("data_dir", "out", "runs")},
               "validation_shifts": list(VALIDATION_SHIFTS), "parts": list(PARTS),
               "chosen": {"epochs": budget, "candidate": selection[budget]["chosen"]},
               "chosen_per_budget": {str(e): s["chosen"] for e, s in selection.items()},
               "background": {"rate": BACKGROUND_RATE, "epochs": "the model's own",
                              "how_fixed": "the middle of Ren et al.'s 0.1-0.3 for "
                                           "Fashion-MNIST, before any measurement"},
               "seconds": {str(e): {d: {k: r[k] for k in ("train_seconds",
                                                         "background_train_seconds",
                                                         "ensemble_train_seconds",
                                                         "score_seconds", "scores_from_cache",
                                                         "stronger_model") if k in r}
                                    for d, r in by.items()} for e, by in results.items()}}
    path = write_result("ood_validation", figures, started=started, table=table,
                        details=details, out_dir=args.out)
    print(f"chosen: {budget} epochs, {selection[budget]['chosen']}; wrote {path}")


if __name__ == "__main__":
    main()
