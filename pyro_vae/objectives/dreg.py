"""Doubly reparameterized gradients (DReG) for the IWAE bound.

Tucker, Lawson, Gu & Maddison (2019), "Doubly Reparameterized Gradient Estimators for Monte
Carlo Objectives", ICLR. With normalized weights w̃_k = w_k / Σ_j w_j and z_k = z(ε_k, φ):

    ∇_θ L_K = Σ_k w̃_k ∇_θ log w_k
    ∇_φ L_K = Σ_k w̃_k² ∂ log w_k / ∂z_k · ∂z_k / ∂φ       (log q's parameters held fixed)

Same expectation as the IWAE gradient, but the encoder's signal-to-noise ratio no longer
decays as O(1/√K) (Rainforth et al. 2018).

Implementation: the surrogate Σ_k w̃_k log w_k^stop, where log w^stop evaluates log q with
its distribution parameters detached, has the right θ-gradient and gives the guide a gradient
only through the samples; a hook multiplies the gradient reaching each sample z_k by w̃_k,
turning w̃_k into w̃_k² for the guide. This is exact for guides whose latent sites do not feed
one another (every VAE here); a guide with several latent sites is refused.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.particles import (PerDatapointObjective, _sample_sites, log_mean_exp,
                                           log_weights)


def single_latent_site(traces, who: str) -> dict:
    sites = _sample_sites(traces.guide)
    if len(sites) != 1:
        raise ConfigError(f"{who} supports guides with one latent site; this guide has "
                          f"{[s['name'] for s in sites]}. Use objective \"iwae\" instead.")
    return sites[0]


class DReG(PerDatapointObjective):
    """IWAE(K) value with the doubly reparameterized gradient."""

    name = "DReG"

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs)
        site = single_latent_site(traces, self.name)
        log_w = log_weights(traces, stop_guide_parameters=True)
        # The value of log w does not depend on the detaching: it is the IWAE bound.
        bound = log_mean_exp(log_w)
        normalized = torch.softmax(log_w.detach(), dim=0)  # w̃[k, n]
        z = site["value"]
        if z.requires_grad:
            event_dims = z.dim() - normalized.dim()
            factor = normalized.reshape(normalized.shape + (1,) * event_dims)
            z.register_hook(lambda grad: grad * factor)
        surrogate = (normalized * log_w).sum(0)
        return bound, surrogate, traces.data_scale
