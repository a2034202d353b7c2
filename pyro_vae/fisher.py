"""Fisher's combination of anomaly scores, each calibrated on in-distribution data.

Scores live on different scales (nats, bits of a compressor, log-densities) and fail on
different shifts; their *in-distribution tail probabilities* share one scale. For a score s
with reference values s_1..s_n on held-out in-distribution images, the empirical p-value of an
image x is (conformal; Vovk et al. 2005)

    upper tail:  p⁺(x) = (1 + #{i : s_i ≥ s(x)}) / (n + 1),
    both tails:  p^±(x) = min(1, 2 min(p⁺(x), p⁻(x))),  p⁻ the same with ≤,

exactly uniform on {1/(n+1), …, 1} when x is exchangeable with the reference images. Both
tails are used for log p(x), which fails by being too *high* on simple data (the typicality
argument of Nalisnick et al. 2019b, per image); every other score uses its upper tail (higher =
more anomalous by construction). Fisher's method combines k p-values into

    T(x) = −2 Σ_j log p_j(x),

which is χ²(2k) when the p_j are independent. The scores of one image are not independent
(log p(x) enters several of them), so T is calibrated empirically instead: the reference images
are split in two halves A and B; the p-values are taken against A, and the combined p-value of
x is the upper-tail p-value of T(x) among the T of the images of B — again exactly uniform under
the null, whatever the dependence. The score is T itself (higher = more anomalous), the verdict
"anomalous" when the combined p-value is below α. Every setting comes from the in-distribution
reference images: nothing is tuned on out-of-distribution data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyro_vae.errors import ConfigError

#: Which tail of each score counts as anomalous (any other score: the upper tail).
TWO_SIDED = frozenset({"log-likelihood", "elbo"})


def upper_tail_p(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """p⁺ = (1 + #{reference ≥ s}) / (n + 1) for every entry of ``scores``."""
    ordered = torch.sort(reference.double()).values
    below = torch.searchsorted(ordered, scores.double(), right=False)  # #{ref < s}
    return (1.0 + len(ordered) - below.double()) / (len(ordered) + 1.0)


def tail_p(reference: torch.Tensor, scores: torch.Tensor, two_sided: bool) -> torch.Tensor:
    """The empirical in-distribution tail probability (see the module docstring)."""
    upper = upper_tail_p(reference, scores)
    if not two_sided:
        return upper
    lower = upper_tail_p(-reference, -scores)
    return torch.clamp(2.0 * torch.minimum(upper, lower), max=1.0)


#: The fewest held-out in-distribution images the combination calibrates on.
MIN_CALIBRATION_IMAGES = 20


@dataclass
class FisherCombination:
    """Fisher's method over named scores, calibrated on in-distribution reference scores."""

    parts: tuple[str, ...] = ()
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    null: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def fit(self, reference: dict[str, torch.Tensor], seed: int = 0) -> "FisherCombination":
        """Split each score's in-distribution reference values (same images, same order) into
        halves A (p-values) and B (the null distribution of T)."""
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

    def p_values(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each part's in-distribution tail probability."""
        return {name: tail_p(self.reference[name], scores[name], name in TWO_SIDED)
                for name in self.parts}

    def statistic(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """T = −2 Σ log p_j (higher = more anomalous)."""
        return -2.0 * torch.stack([p.log() for p in self.p_values(scores).values()]).sum(0)

    def combined_p(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """The combined p-value: T's upper tail among the calibration half's T."""
        return upper_tail_p(self.null, self.statistic(scores))
