"""Disagreement of independently trained models: the epistemic part of an anomaly score.

One trained VAE gives one log p(x). Train the same recipe M times from different seeds and the
models agree about images like their training data (each was fitted to them) but not about
images unlike it, where nothing pinned the decoder down: the spread of log p_m(x) over the
members is a Monte Carlo estimate of the posterior variance of the log-likelihood over the
weights, with the members standing in for draws from the posterior (deep ensembles,
Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation using deep
ensembles"). Choi, Jang & Alemi (2018, "WAIC, but why? Generative ensembles for robust anomaly
detection") score an input by the Watanabe-Akaike information criterion

    WAIC(x) = E_m[log p_m(x)] − Var_m[log p_m(x)],

with E_m and Var_m the mean and the (unbiased) variance over the M members, and flag a low
WAIC. Two scores follow (higher = more anomalous, as everywhere in :mod:`pyro_vae.anomaly`):

``ensemble``
    s(x) = Var_m[log p̂_m(x)] — the disagreement alone, the part that one model cannot give.
    Offered to the default verdict as a part of its own (log p(x) is already one, so each
    correction would enter once) and rejected by the validation study
    (``benchmarks/ood_validation.py``, fourth round): fainter images make the members agree
    more, not less.
``waic``
    s(x) = −WAIC(x) = −E_m[log p̂_m(x)] + Var_m[log p̂_m(x)].

log p̂_m(x) is each member's importance-sampled estimate with K draws
(:func:`pyro_vae.evaluate.estimate_log_likelihood`); its own Monte Carlo variance adds to the
spread, the same for in- and out-of-distribution images of similar likelihood, and the
calibration on held-out in-distribution images absorbs it.

**How M and the members are fixed** (before any measurement, not by looking at any shift):
M = 5, the ensemble size of both papers; the members are the run itself and the same recipe
trained with the seeds ``seed + 1`` … ``seed + M − 1`` on the same data for the same number
of epochs (``pyro-vae anomaly --ensemble 5`` trains them and keeps them for reuse).
"""

from __future__ import annotations

from typing import Sequence

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood

#: The ensemble size of Choi et al. (2018) and Lakshminarayanan et al. (2017).
DEFAULT_MEMBERS = 5


def member_log_likelihoods(members: Sequence[torch.nn.Module], x: torch.Tensor,
                           num_samples: int) -> torch.Tensor:
    """``[M, N]``: each member's importance-sampled log p̂(x) of every row of ``x``."""
    return torch.stack([estimate_log_likelihood(member, x, num_samples).log_likelihood.double()
                        for member in members])


def check_members(count: int) -> None:
    """Raise :class:`ConfigError` unless ``count`` members (the run included) can disagree."""
    if count < 2:
        raise ConfigError(f"an ensemble needs at least 2 members to disagree, not {count}; "
                          f"give --ensemble 2 or more ({DEFAULT_MEMBERS} is the papers' size).")


def disagreement(log_likelihoods: torch.Tensor) -> torch.Tensor:
    """Var_m[log p̂_m(x)] over the members (dimension 0), unbiased."""
    check_members(len(log_likelihoods))
    return log_likelihoods.var(dim=0, unbiased=True)


def negative_waic(log_likelihoods: torch.Tensor) -> torch.Tensor:
    """−WAIC(x) = −E_m[log p̂_m(x)] + Var_m[log p̂_m(x)] (Choi et al. 2018)."""
    return -log_likelihoods.mean(dim=0) + disagreement(log_likelihoods)
