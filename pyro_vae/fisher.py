"""The default verdict: anomaly scores, each calibrated on in-distribution data, combined.

Scores live on different scales (nats, bits of a compressor, log-densities) and fail on
different shifts; their *in-distribution tail probabilities* share one scale. For a score s
with reference values s_1..s_n on held-out in-distribution images, three estimates of the
upper-tail probability P(S ≥ s) are offered (``tail``):

``empirical`` — the conformal p-value (Vovk et al. 2005, "Algorithmic learning in a random
    world")
        p⁺(x) = (1 + #{i : s_i ≥ s(x)}) / (n + 1),
    exactly uniform on {1/(n+1), …, 1} when x is exchangeable with the reference images, but
    *floored* at 1/(n+1): an image 50 standard deviations out gets the p-value of one just
    beyond the largest reference value.
``kernel`` — the kernel-smoothed distribution function (Nadaraya 1964, "Some new estimates for
    distribution functions")
        p⁺(x) = (1/n) Σ_i Φ((s_i − s(x)) / h),  h = 0.9 min(σ̂, IQR/1.34) n^{−1/5}
    (Silverman's rule of thumb), which keeps falling beyond the reference range: log p⁺ is
    computed as a log-sum-exp of log Φ, so it does not underflow.
``exponential`` — peaks over threshold (Pickands 1975, "Statistical inference using extreme
    order statistics"; the exponential case of the generalized Pareto tail): below the
    threshold u, the (k+1)-th largest reference value with k = ⌊n/10⌋, p⁺ is the empirical
    one; above it
        p⁺(x) = (k + 1)/(n + 1) · exp(−(s(x) − u)/β),  β the mean of the excesses s_i − u,
    so −log p⁺ grows linearly in the distance beyond the in-distribution tail.

The lower tail p⁻ is the same with −s. Two-sided: p^± = min(1, 2 min(p⁺, p⁻)). Which scores
are read two-sided is the setting ``sides``: ``"likelihood"`` reads both tails of log p(x) only
(it fails by being too *high* on simple data: the typicality argument of Nalisnick et al.
2019b, per image) and the upper tail of every other score (higher = more anomalous by
construction); ``"all"`` reads both tails of every score (an image that is *too* typical in a
statistic — a mixture of two images that compresses worse than any single one — is atypical
too).

The k tail probabilities of an image are combined (``rule``) by

    Fisher (1925):   T(x) = −2 Σ_j log p_j(x),
    Tippett (1931):  T(x) = −log min_j p_j(x)   (the minimum p-value; Bonferroni's rule
                                                  flags k · min_j p_j < α).

T is χ²(2k) (Fisher) when the p_j are independent and empirical-exact; the scores of one image
are not independent (log p(x) enters several of them) and the smoothed tails are not exact, so
T is calibrated empirically instead: the reference images are split in two halves A and B; the
tail probabilities are taken against A, and the combined p-value of x is the conformal upper-tail
p-value of T(x) among the T of the images of B — exactly uniform on {1/(n_B+1), …, 1} under the
null, whatever the dependence and whichever ``tail`` and ``rule``. The score is T itself (higher
= more anomalous), the verdict "anomalous" when the combined p-value is below α.

The default (:data:`DEFAULT_RULE`, :data:`DEFAULT_TAIL`, :data:`DEFAULT_SIDES`: Fisher's rule
over empirical tail probabilities, log p(x) alone two-sided) was chosen among these 12
combinations and a kernel density over the vector of scores, on *validation shifts* built from
the in-distribution training images only (blur, translation, salt-and-pepper pixels, thicker
and thinner strokes, cut-out squares, fainter ink: ``benchmarks/ood_validation.py``), by the
rule fixed before the measurement: the highest minimum AUROC over the (model, shift) pairs,
near-ties (0.005) broken by the mean, then by the fewest settings changed. With the 30-epoch
models every combination reading log p(x) alone two-sided, and the joint density, reached a
minimum within 0.005 of the best (0.567 to 0.572); of those, Fisher's rule on any tail and the
joint density had the best means (0.818 to 0.819; Tippett's 0.808 to 0.810); reading every
score two-sided lost 0.05 to 0.07 of mean AUROC. The differences that remain are below the
AUROCs' standard error (about 0.01 at 1,000 images a side), so the fewest-changes rule keeps
Fisher's over empirical tails (the previous default); the
smoothed tails and Tippett's rule are there to be chosen (``FisherCombination(rule, tail,
sides)``), and the numbers are in ``benchmarks/results/ood_validation.json``. A second round
offered a fifth part, the distance of the code μ(x) to its k-th nearest in-distribution code
(:mod:`pyro_vae.knn_score`), and that distance alone, to the same rule: both lost (minimum
0.521 and 0.170, mean 0.800 and 0.531, against 0.568 and 0.818), so ``knn`` is a score of its
own. A third round offered Ren et al.'s (2019) likelihood ratio log p_bg(x) − log p(x) as a
fifth part, and alone; its background model is the same recipe and budget trained on the
training images with each pixel replaced by uniform noise with probability μ = 0.2 (fixed
before measuring). As a part it won at every budget (at 30 epochs minimum 0.632, mean 0.834,
against 0.568 and 0.818; alone 0.134 and 0.686), so the default verdict combines it whenever
a background model is given (``pyro-vae anomaly --background``) and the other scores
otherwise: it cannot be computed without a background model. A fourth round offered the
disagreement of an ensemble of five models (:mod:`pyro_vae.ensemble_score`) as a sixth part —
it lost (minimum 0.569 against 0.632: fainter images make the members agree more) — and the
same verdict computed from stronger models, the networks of Burda et al.'s (2016) VAE
(784-200-200-50, tanh) in place of the default 784-128-128-8: that won (minimum 0.646, mean
0.851), so the rule is unchanged and the benchmark's models, and the packaged recipe
``anomaly_vae``, have those networks. A fifth round trained them longer, 100 epochs against
30 (the grid 3, 10, 30 extended by one step): the same minimum (0.646) and a higher mean
(0.857), so the recipe trains 100 epochs. A sixth round offered the transformation score of
Golan & El-Yaniv (2018) (:mod:`pyro_vae.transformation_score`) as a sixth part: it won
(minimum 0.684, mean 0.872), so the default verdict combines it whenever its classifier is
trained (by default). A seventh measured the 12 rules again with the six parts and the
classifier at 10 and 30 passes: every Fisher rule reading log p(x) alone two-sided tied with
the default (Tippett's lost 0.04 of minimum), so the default stands. An eighth offered the
distance of the classifier's hidden features to the in-distribution ones (SSD;
:mod:`pyro_vae.feature_score`) as a seventh part: the same minimum (0.684) and a higher mean
(0.879 against 0.872), so the default verdict combines it too. Every setting
comes from in-distribution images: nothing is tuned on the out-of-distribution data a user
meets, nor on the shifts of ``benchmarks/ood_shifts.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pyro_vae.errors import ConfigError

#: The scores read two-sided under ``sides="likelihood"`` (every other: the upper tail).
TWO_SIDED = frozenset({"log-likelihood", "elbo"})
#: How a tail probability is read from the reference values.
TAILS = ("empirical", "kernel", "exponential")
#: How tail probabilities are combined.
RULES = ("fisher", "tippett")
#: Which scores are read two-sided.
SIDES = ("likelihood", "all")
#: The default verdict's settings (chosen on validation shifts; see the module docstring).
DEFAULT_RULE, DEFAULT_TAIL, DEFAULT_SIDES = "fisher", "empirical", "likelihood"
#: The share of the reference values above the threshold of the ``exponential`` tail.
EXCEEDANCE_SHARE = 0.1
#: The fewest held-out in-distribution images the combination calibrates on.
MIN_CALIBRATION_IMAGES = 20


def upper_tail_p(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """p⁺ = (1 + #{reference ≥ s}) / (n + 1) for every entry of ``scores``."""
    ordered = torch.sort(reference.double()).values
    below = torch.searchsorted(ordered, scores.double(), right=False)  # #{ref < s}
    return (1.0 + len(ordered) - below.double()) / (len(ordered) + 1.0)


def silverman_bandwidth(reference: torch.Tensor) -> float:
    """h = 0.9 min(σ̂, IQR/1.34) n^{−1/5} (falls back to σ̂, then 1, for degenerate data)."""
    values = reference.double()
    spread = float(values.std())
    quartiles = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=torch.float64))
    iqr = float(quartiles[1] - quartiles[0]) / 1.34
    scale = min(spread, iqr) if iqr > 0 else spread
    if not scale > 0:
        scale = 1.0
    return 0.9 * scale * len(values) ** -0.2


def log_upper_tail_p(reference: torch.Tensor, scores: torch.Tensor,
                     tail: str = "empirical") -> torch.Tensor:
    """log P(S ≥ s) for every entry of ``scores``, read from ``reference`` by ``tail``."""
    reference, scores = reference.double(), scores.double()
    if tail == "empirical":
        return upper_tail_p(reference, scores).log()
    if tail == "kernel":
        bandwidth = silverman_bandwidth(reference)
        terms = torch.special.log_ndtr((reference[None, :] - scores[:, None]) / bandwidth)
        return torch.logsumexp(terms, dim=1) - math.log(len(reference))
    if tail == "exponential":
        count = len(reference)
        exceed = max(1, int(EXCEEDANCE_SHARE * count))
        ordered = torch.sort(reference, descending=True).values
        threshold = ordered[min(exceed, count - 1)]
        scale = float((ordered[:exceed] - threshold).mean())
        if not scale > 0:
            scale = silverman_bandwidth(reference)
        beyond = math.log((exceed + 1) / (count + 1)) - (scores - threshold) / scale
        return torch.where(scores > threshold, beyond, upper_tail_p(reference, scores).log())
    raise ConfigError(f"unknown tail {tail!r}; choose from {', '.join(TAILS)}.")


def log_tail_p(reference: torch.Tensor, scores: torch.Tensor, two_sided: bool,
               tail: str = "empirical") -> torch.Tensor:
    """log of the in-distribution tail probability (see the module docstring)."""
    upper = log_upper_tail_p(reference, scores, tail)
    if not two_sided:
        return upper
    lower = log_upper_tail_p(-reference.double(), -scores.double(), tail)
    return torch.clamp(math.log(2.0) + torch.minimum(upper, lower), max=0.0)


def tail_p(reference: torch.Tensor, scores: torch.Tensor, two_sided: bool,
           tail: str = "empirical") -> torch.Tensor:
    """The in-distribution tail probability (see the module docstring)."""
    return log_tail_p(reference, scores, two_sided, tail).exp()


@dataclass
class FisherCombination:
    """Tail probabilities of named scores, combined by ``rule`` and calibrated on
    in-distribution reference scores (the ``fisher`` score: the default verdict)."""

    rule: str = DEFAULT_RULE
    tail: str = DEFAULT_TAIL
    sides: str = DEFAULT_SIDES
    parts: tuple[str, ...] = ()
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    null: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def fit(self, reference: dict[str, torch.Tensor], seed: int = 0) -> "FisherCombination":
        """Split each score's in-distribution reference values (same images, same order) into
        halves A (tail probabilities) and B (the null distribution of T)."""
        for name, value, allowed in (("rule", self.rule, RULES), ("tail", self.tail, TAILS),
                                     ("sides", self.sides, SIDES)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r} for the combination; choose from "
                                  f"{', '.join(allowed)}.")
        if not reference:
            raise ConfigError("Fisher's combination needs at least one score to combine.")
        count = len(next(iter(reference.values())))
        if count < MIN_CALIBRATION_IMAGES:
            raise ConfigError(f"Fisher's combination calibrates on at least "
                              f"{MIN_CALIBRATION_IMAGES} in-distribution "
                              f"images, but got {count}; raise --limit.")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        half_a, half_b = order[: count // 2], order[count // 2:]
        self.parts = tuple(reference)
        self.reference = {name: values.double()[half_a] for name, values in reference.items()}
        self.null = torch.sort(self.statistic({name: values.double()[half_b]
                                               for name, values in reference.items()})).values
        return self

    def two_sided(self, name: str) -> bool:
        return self.sides == "all" or name in TWO_SIDED

    def log_p_values(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """log of each part's in-distribution tail probability."""
        return {name: log_tail_p(self.reference[name], scores[name], self.two_sided(name),
                                 self.tail) for name in self.parts}

    def p_values(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each part's in-distribution tail probability."""
        return {name: value.exp() for name, value in self.log_p_values(scores).items()}

    def statistic(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """T (higher = more anomalous): −2 Σ log p_j (Fisher) or −log min p_j (Tippett)."""
        logs = torch.stack(list(self.log_p_values(scores).values()))
        if self.rule == "fisher":
            return -2.0 * logs.sum(0)
        return -logs.min(0).values

    def combined_p(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The combined p-value: T's upper tail among the calibration half's T."""
        return upper_tail_p(self.null, self.statistic(scores))
