"""VIMCO: the multi-sample score-function gradient of the IWAE bound with per-sample
leave-one-out baselines (Mnih & Rezende 2016, "Variational Inference for Monte Carlo
Objectives", ICML).

With K ≥ 2 samples z_k ~ q(z|x), *not* differentiated through, w_k = p(x, z_k) / q(z_k|x) and
the bound L̂ = log (1/K) Σ_k w_k (IWAE's; Burda et al. 2016),

    ∇ E[L̂] = E[ Σ_k w̃_k ∇ log w_k  +  Σ_k (L̂ − L̂_{−k}) ∇_φ log q_φ(z_k|x) ],

where w̃_k = w_k / Σ_j w_j and the baseline L̂_{−k} is L̂ with log w_k replaced by the mean of
the other K − 1 log-weights (the geometric mean of their weights; Mnih & Rezende, eq. 9).
L̂_{−k} does not depend on z_k, so the baseline leaves the expectation unchanged, and the
learning signal L̂ − L̂_{−k} of each sample says how much that sample, rather than a typical
one, contributed: the credit assignment a single shared signal L̂ lacks. It needs no
reparameterization, so it trains discrete latents (and, for comparison, continuous ones).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.particles import (PerDatapointObjective, guide_log_density,
                                           log_mean_exp, log_weights)


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """L̂_{−k} for every k: log-mean-exp of log w with entry k replaced by the mean of the
    others; ``log_w`` is ``[K, B]``, so is the result."""
    num = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (num - 1)         # [K, B]
    # Row k of the [K, K, B] stack is log w with its k-th entry swapped for others_mean[k].
    stacked = log_w.expand(num, *log_w.shape).clone()
    index = torch.arange(num, device=log_w.device)
    stacked[index, index] = others_mean
    return torch.logsumexp(stacked, dim=1) - math.log(num)


class VIMCO(PerDatapointObjective):
    """IWAE(K) value with the VIMCO score-function gradient (K ≥ 2)."""

    name = "VIMCO"

    def __init__(self, num_particles: int = 2, **kwargs: Any):
        if num_particles < 2:
            raise ConfigError(f"VIMCO's baselines leave one of K samples out, so it needs "
                              f"K ≥ 2 particles, got {num_particles}; use --particles 2 or "
                              "more, or objective \"score\" for one sample.")
        super().__init__(num_particles=num_particles, **kwargs)

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs, detach_samples=True)
        log_w = log_weights(traces)
        bound = log_mean_exp(log_w)
        signal = (bound.unsqueeze(0) - leave_one_out_bounds(log_w)).detach()
        surrogate = bound + (signal * guide_log_density(traces)).sum(0)
        return bound, surrogate, traces.data_scale
