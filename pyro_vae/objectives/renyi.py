"""The Rényi (variational Rényi, VR-α) bound, reduced per datapoint.

Li & Turner (2016), "Rényi Divergence Variational Inference", NeurIPS:

    L_α(x) = 1/(1−α) · log (1/K) Σ_k w_k^(1−α),     w_k = p(x, z_k) / q(z_k|x)

α = 0 is the IWAE bound; α → 1 tends to the ELBO; for 0 ≤ α < 1 it lies between them in
expectation (a lower bound on log p(x)). **For α < 0 it is not a lower bound**: it lies above
IWAE and can exceed log p(x) (Li & Turner 2016, §3; measured here: +0.49 nats at α = −1,
K = 2000 on the linear-Gaussian model). A KL weight β ≠ 1 on the latent site changes every
w_k to p(x|z_k) (p(z_k)/q(z_k|x))^β, which for β < 1 can also exceed log p(x). α = 1 itself
is the ELBO's limit and is refused (use ``elbo``).
Unlike Pyro's ``RenyiELBO`` the log-mean-exp is per datapoint, and the loss is differentiable.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.particles import PerDatapointObjective, log_mean_exp, log_weights


class RenyiBound(PerDatapointObjective):
    """VR-α with ``num_particles = K`` (α ≠ 1)."""

    name = "Rényi-α"

    def __init__(self, alpha: float = 0.5, num_particles: int = 2, **kwargs: Any):
        if alpha == 1.0:
            raise ConfigError("Rényi α = 1 is the ELBO itself (the bound's limit); use "
                              "objective \"elbo\", or choose α ≠ 1 (α = 0 is IWAE).")
        super().__init__(num_particles=num_particles, **kwargs)
        self.alpha = alpha

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs)
        one_minus_alpha = 1.0 - self.alpha
        bound = log_mean_exp(one_minus_alpha * log_weights(traces)) / one_minus_alpha
        return bound, bound, traces.data_scale
