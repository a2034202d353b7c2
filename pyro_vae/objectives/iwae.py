"""The importance-weighted bound (IWAE).

    L_K(x) = E_{z_1..K ~ q(z|x)} [ log (1/K) Σ_k p(x, z_k) / q(z_k|x) ]

L_1 is the ELBO, L_K rises monotonically with K and tends to log p(x) (Burda, Grosse &
Salakhutdinov 2016, "Importance Weighted Autoencoders", ICLR, Theorem 1). That holds for the
true model (KL weight β = 1); with β < 1 on the latent site the weights are
p(x|z)(p(z)/q(z|x))^β and the "bound" can exceed log p(x). The gradient is the
reparameterized gradient of the log-mean-exp, taken separately for every datapoint.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.objectives.particles import PerDatapointObjective, log_mean_exp, log_weights


class IWAE(PerDatapointObjective):
    """IWAE(K) with ``num_particles = K``; usable with ``SVI`` or as a differentiable loss."""

    name = "IWAE"

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs)
        bound = log_mean_exp(log_weights(traces))
        return bound, bound, traces.data_scale
