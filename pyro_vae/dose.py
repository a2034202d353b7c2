"""DoSE: the density of a VAE's summary statistics, fitted on in-distribution data.

Morningstar et al. (2021), "Density of States Estimation for out-of-distribution detection"
(AISTATS). A single statistic such as log p(x) fails when another dataset is *more* likely
than the training data (Nalisnick et al. 2019a); but the same image is rarely typical in every
statistic at once. DoSE summarizes each image x by a vector of statistics of the trained VAE,

    t(x) = ( log p̂_K(x),                                  importance-sampled log-likelihood
             R(x) = KL(q(z|x) ‖ p(z)),                     the rate (Monte Carlo, S draws)
             D(x) = E_q[log p(x|z)] = ELBO(x) + R(x),      the distortion
             H(x) = ½ Σ_d log(2π e σ_d(x)²),               the posterior entropy
             ‖μ(x)‖ ),                                     the norm of the posterior mean

(σ, μ of the diagonal Gaussian at the base of q(z|x); the entropy column is left out for a
posterior that has none), standardizes each column by its in-distribution mean and standard
deviation, and fits a density estimator ρ̂ to the t(x) of held-out in-distribution images. The
score is s(x) = −log ρ̂(t(x)): an image whose statistics are jointly atypical — a likelihood that
is too *high* as much as one that is too low — gets a high score.

The density estimator is a Gaussian kernel density estimate (scikit-learn's ``KernelDensity``);
its bandwidth h is chosen, from the in-distribution fitting images only, by k-fold
cross-validated log-likelihood over a grid of h (the grid spans Silverman's rule of thumb by a
factor of 8 each way). Nothing about any out-of-distribution data enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import (encode_means, gaussian_start, has_labelled_encoder,
                               monte_carlo_kl)

#: The columns of t(x), in order (``entropy`` is dropped for a posterior without one).
STATISTICS = ("log_p", "rate", "distortion", "entropy", "mean_norm")


def summary_statistics(vae: torch.nn.Module, x: torch.Tensor, log_p: torch.Tensor,
                       elbo: torch.Tensor, kl_samples: int = 16
                       ) -> tuple[torch.Tensor, tuple[str, ...]]:
    """t(x) for every row of ``x`` (see the module docstring) and the names of its columns.

    ``log_p`` and ``elbo`` are the per-image estimates already computed for the other scores
    (:func:`pyro_vae.evaluate.estimate_log_likelihood`); the rate takes ``kl_samples`` draws.
    """
    with torch.no_grad():
        rate = monte_carlo_kl(vae, x, kl_samples).double().cpu()
        with vae.scoring():
            start = gaussian_start(vae, x)
            # q(z|x, y) (M2) has no encoding from x alone: no entropy and no ‖μ‖ column then.
            loc = start[0] if start is not None else \
                None if has_labelled_encoder(vae) else encode_means(vae, x)[0]
    columns = [log_p.double().cpu(), rate, elbo.double().cpu() + rate]
    names = ["log_p", "rate", "distortion"]
    if start is not None:
        scale = start[1].detach().double().cpu()
        entropy = (scale.log() + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        columns.append(entropy)
        names.append("entropy")
    if loc is not None:
        columns.append(loc.detach().double().cpu().reshape(len(x), -1).norm(dim=-1))
        names.append("mean_norm")
    return torch.stack(columns, dim=-1), tuple(names)


@dataclass
class DoSE:
    """A kernel density estimate of standardized summary statistics (higher score = rarer).

    ``folds`` and ``grid`` set the cross-validated choice of the bandwidth (see the module
    docstring); :meth:`fit` records the chosen bandwidth and every candidate's mean held-out
    log-likelihood in ``selection``.
    """

    folds: int = 5
    grid: int = 13
    seed: int = 0
    bandwidth: float = float("nan")
    selection: dict[str, float] = field(default_factory=dict)

    def fit(self, statistics: torch.Tensor) -> "DoSE":
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.neighbors import KernelDensity

        values = statistics.double().cpu().numpy()
        count, dim = values.shape
        if count < 2 * self.folds:
            raise ConfigError(f"DoSE fits its density to at least {2 * self.folds} "
                              f"in-distribution images, but got {count}; score more validation "
                              "images (raise --limit).")
        self._mean = values.mean(0)
        self._std = values.std(0)
        self._std[self._std == 0] = 1.0
        standard = (values - self._mean) / self._std
        silverman = (4.0 / (dim + 2)) ** (1.0 / (dim + 4)) * count ** (-1.0 / (dim + 4))
        candidates = silverman * np.logspace(-np.log10(8), np.log10(8), self.grid)
        search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": candidates},
                              cv=KFold(self.folds, shuffle=True, random_state=self.seed))
        search.fit(standard)
        self.bandwidth = float(search.best_params_["bandwidth"])
        self.selection = {f"{h:.4g}": float(s) for h, s in
                          zip(candidates, search.cv_results_["mean_test_score"])}
        self._kde = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(standard)
        return self

    def score(self, statistics: torch.Tensor) -> torch.Tensor:
        """s(x) = −log ρ̂(t(x)) per row (higher = more anomalous)."""
        if not hasattr(self, "_kde"):
            raise RuntimeError("fit DoSE to in-distribution statistics before scoring")
        standard = (statistics.double().cpu().numpy() - self._mean) / self._std
        return -torch.from_numpy(self._kde.score_samples(standard))
