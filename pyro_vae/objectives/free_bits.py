"""Free bits: a floor under each latent dimension's KL (Kingma et al. 2016, "Improved
Variational Inference with Inverse Autoregressive Flow", NeurIPS, §C.8).

The ELBO's KL term Σ_j KL_j, with KL_j = (1/B) Σ_n KL(q(z_nj|x_n) ‖ p(z_j)) averaged over the
minibatch, becomes Σ_j max(λ, KL_j): a dimension whose KL is below λ nats costs λ and feels no
pressure towards the prior, so the encoder can put information there without paying for it,
which counters posterior collapse. Added to any ELBO loss as

    Δ = β N Σ_j max(0, λ − KL_j)        (closed-form KL_j, β the current KL weight)

the total is −(reconstruction) + β N Σ_j max(λ, KL_j) exactly for ``TraceMeanField_ELBO``
(whose KL is the same closed form), and in expectation, gradient included, for ``Trace_ELBO``
(whose Monte Carlo KL has the closed form as its mean). Needs a KL that splits over
dimensions, i.e. a diagonal-Gaussian guide and the standard normal prior.
"""

from __future__ import annotations

import torch
from torch import nn


def free_bits_penalty(vae: nn.Module, x: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Δ above for the minibatch ``x``: zero once every dimension's KL is at least λ."""
    loc, scale = vae.encoder(x)
    kl = vae.kl_per_dim(loc, scale)
    if kl is None:
        raise ValueError("free bits need a prior with a closed-form KL per dimension")
    num_data = vae.num_data or len(x)
    shortfall = torch.relu(free_bits - kl.mean(0)).sum()
    return vae.kl_weight * num_data * shortfall
