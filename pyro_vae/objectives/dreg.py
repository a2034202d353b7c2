"""Doubly reparameterized gradients (DReG) for the IWAE bound.

Tucker, Lawson, Gu & Maddison (2019), "Doubly Reparameterized Gradient Estimators for Monte
Carlo Objectives", ICLR. With normalized weights w̃_k = w_k / Σ_j w_j and z_k = z(ε_k, φ):

    ∇_θ L_K = Σ_k w̃_k ∇_θ log w_k
    ∇_φ L_K = Σ_k w̃_k² ∂ log w_k / ∂z_k · ∂z_k / ∂φ       (log q's parameters held fixed)

Same expectation as the IWAE gradient, but the encoder's signal-to-noise ratio no longer
decays as O(1/√K) (Rainforth et al. 2018).

With a KL weight β (β-VAE, or a step of KL warm-up: ``poutine.scale`` on the latent site),
log w_k = log p(x|z_k) + β (log p(z_k) − log q(z_k|x)), and the IWAE gradient's score term
is −β Σ_k w̃_k ∂log q(z_k)/∂φ. The reparameterization identity
E_q[f(z) ∂log q(z)/∂φ] = E_q[∂f/∂z ∂z/∂φ] (applied with f = w̃_k) turns it into
β Σ_k w̃_k (1 − w̃_k) ∂log w_k/∂z_k ∂z_k/∂φ, so the encoder's weights become

    ∇_φ L_K = Σ_k [(1 − β) w̃_k + β w̃_k²] ∂ log w_k / ∂z_k · ∂z_k / ∂φ

which is w̃_k² at β = 1. β is read from the guide site's scale relative to the data plate's
N/B, so a schedule that changes it every step is followed exactly.

Implementation: the surrogate Σ_k w̃_k log w_k^stop, where log w^stop evaluates log q with
its distribution parameters detached, has the right θ-gradient and gives the guide a gradient
only through the samples; a hook multiplies the gradient reaching each sample z_k by
(1 − β) + β w̃_k, turning w̃_k into (1 − β) w̃_k + β w̃_k² for the guide. This is exact for
guides whose latent sites do not feed one another (every VAE here); a guide with several
latent sites is refused.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.particles import (PerDatapointObjective, _relative_scale,
                                           _sample_sites, log_mean_exp, log_weights)


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
            beta = _relative_scale(site, traces.data_scale)  # the KL weight of this step
            if torch.is_tensor(beta):
                beta = beta.detach()
            weight = normalized if isinstance(beta, float) and beta == 1.0 else (
                (1.0 - beta) + beta * normalized)
            event_dims = z.dim() - normalized.dim()
            factor = weight.reshape(weight.shape + (1,) * event_dims)
            z.register_hook(lambda grad: grad * factor)
        surrogate = (normalized * log_w).sum(0)
        return bound, surrogate, traces.data_scale
