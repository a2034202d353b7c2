"""The k-th nearest neighbour distance of an image's code among in-distribution codes.

Sun et al. (2022), "Out-of-distribution detection with deep nearest neighbors" (ICML), score a
test input by the distance from its feature vector to the k-th nearest feature vector of the
in-distribution data: no density is fitted, no parametric form assumed. Applied to a VAE's
code, the feature of an image x is its posterior mean μ(x) (the protocol's ``latent_mean(x)``:
the mean of q(z|x) for a Gaussian). Every other anomaly score of :mod:`pyro_vae.anomaly` is a
function of how well the image is *coded* (its likelihood, its regret, its compressed length,
DoSE's summary statistics); this one looks at *where* the code lands: an image the encoder
maps into a region of latent space that no in-distribution image occupies is anomalous, however
well the decoder then explains it.

With in-distribution reference codes m_1..m_n (held-out images, the *bank*), each dimension
is standardized by the bank's standard deviation σ̂_d (a code dimension the prior stretches
further counts no more than another; distances do not depend on a shift, so no centring is
needed):

    u(x) = μ(x) / σ̂,        s(x) = ‖u(x) − u_(k)(x)‖₂,

where u_(k)(x) is the k-th nearest of u(m_1)..u(m_n) to u(x). Higher = more anomalous. The
k-NN distance is the k-NN density estimate read backwards (Loftsgaarden & Quesenberry 1965,
"A nonparametric estimate of a multivariate density function"): p̂(x) = k / (n V_D r_k(x)^D),
with V_D the volume of the unit ball in D dimensions, so s(x) = r_k(x) is a decreasing
function of the estimated density of codes at μ(x).

Sun et al. first normalize each feature to unit length; a VAE's code is not a classifier's
penultimate layer, and the norm of μ(x) carries information (an image the encoder sends far
out along the prior's tails), so the code is standardized per dimension instead, as DoSE
standardizes its statistics.

**How k is fixed** (before any measurement, by a rule, not by looking at any shift):
k = ⌈√n⌉ for a bank of n codes, the choice Loftsgaarden & Quesenberry propose for the
k-NN density estimate (k → ∞ and k/n → 0 as n grows, as its consistency needs). With the
benchmark's 1,000 bank codes k = 32; with ``pyro-vae anomaly``'s default ``--limit 1000``,
500 codes and k = 23. Sun et al. report their detector insensitive to k over a wide range.

Calibrated like every other score: its in-distribution tail probability is read from the
distances of other held-out in-distribution images (not in the bank) to the bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import has_labelled_encoder


def check_knn_supported(vae: torch.nn.Module) -> None:
    """Raise :class:`ConfigError` unless the model maps an image alone to a code μ(x)."""
    if not hasattr(vae, "latent_mean"):
        raise ConfigError("the nearest-neighbour score measures where an image's code μ(x) "
                          "lands, and this model offers no latent_mean(x) (the capability "
                          "\"latent_means\" of pyro_vae.protocol); leave out --score knn.")
    if has_labelled_encoder(vae):
        raise ConfigError("the nearest-neighbour score needs the code μ(x) of an image alone, "
                          "but this model encodes an image together with its label, "
                          "q(z|x, y); leave out --score knn.")


@torch.no_grad()
def latent_codes(vae: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000
                 ) -> torch.Tensor:
    """μ(x) = ``latent_mean(x)`` for every row of ``x``, flattened to ``[N, D]``, float64 on
    the CPU, ``batch_size`` rows at a time."""
    check_knn_supported(vae)
    with vae.scoring():
        codes = [vae.latent_mean(x[start: start + batch_size]).reshape(
            len(x[start: start + batch_size]), -1) for start in range(0, len(x), batch_size)]
    return torch.cat(codes).double().cpu()


def default_k(count: int) -> int:
    """k = ⌈√n⌉ for a bank of ``count`` codes (Loftsgaarden & Quesenberry 1965)."""
    return max(1, math.ceil(math.sqrt(count)))


def kth_neighbour_distance(bank: torch.Tensor, queries: torch.Tensor, k: int,
                           chunk: int = 2048) -> torch.Tensor:
    """The Euclidean distance from each row of ``queries`` to its ``k``-th nearest row of
    ``bank`` (k = 1: the nearest), ``chunk`` queries at a time."""
    if not 1 <= k <= len(bank):
        raise ConfigError(f"the k-th nearest neighbour needs 1 ≤ k ≤ {len(bank)} (the bank's "
                          f"size), not k = {k}.")
    distances = []
    for start in range(0, len(queries), chunk):
        # Differences, not the ‖a‖² + ‖b‖² − 2a·b expansion, which loses the small distances.
        pairwise = torch.cdist(queries[start: start + chunk].double(), bank.double(),
                               compute_mode="donot_use_mm_for_euclid_dist")
        distances.append(pairwise.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(distances) if distances else torch.empty(0, dtype=torch.float64)


@dataclass
class KNNScore:
    """s(x) = distance from the standardized code of x to its k-th nearest bank code (see the
    module docstring); ``k`` = ⌈√n⌉ unless given."""

    k: int | None = None
    bank: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    scale: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def fit(self, codes: torch.Tensor) -> "KNNScore":
        """Keep the in-distribution ``codes`` ``[n, D]`` as the bank, standardized."""
        codes = codes.double().cpu().reshape(len(codes), -1)
        if len(codes) < 2:
            raise ConfigError(f"the nearest-neighbour score needs a bank of at least 2 "
                              f"in-distribution codes, but got {len(codes)}; score more "
                              "validation images (raise --limit).")
        self.scale = codes.std(0)
        self.scale[~(self.scale > 0)] = 1.0
        self.bank = codes / self.scale
        self.k = default_k(len(codes)) if self.k is None else self.k
        return self

    def score(self, codes: torch.Tensor) -> torch.Tensor:
        """s(x) per row of ``codes`` (higher = more anomalous)."""
        if not len(self.bank):
            raise RuntimeError("fit the nearest-neighbour score to in-distribution codes "
                               "before scoring")
        standard = codes.double().cpu().reshape(len(codes), -1) / self.scale
        return kth_neighbour_distance(self.bank, standard, int(self.k))
