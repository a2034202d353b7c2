"""Sticking the landing (STL): the ELBO's path-derivative gradient.

Roeder, Wu & Duvenaud (2017), "Sticking the Landing: Simple, Lower-Variance Gradient
Estimators for Variational Inference", NeurIPS. The reparameterized ELBO gradient contains the
score term −∇_φ log q_φ(z)|_{z fixed}, whose expectation is zero; STL drops it:

    ∇_φ ELBO ≈ (1/K) Σ_k ∇_z [log p(x, z_k) − log q_φ(z_k|x)] · ∂z_k/∂φ

evaluated with log q's parameters held fixed. When q equals the exact posterior the bracket is
constant in z, so the guide's gradient is exactly zero for every draw (zero variance).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.objectives.dreg import single_latent_site
from pyro_vae.objectives.particles import PerDatapointObjective, log_weights


class STL(PerDatapointObjective):
    """The K-particle ELBO with the sticking-the-landing gradient."""

    name = "STL"

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs)
        single_latent_site(traces, self.name)
        elbo = log_weights(traces, stop_guide_parameters=True).mean(0)
        return elbo, elbo, traces.data_scale
