"""The ELBO with discrete latent variables summed out exactly: Pyro's ``TraceEnum_ELBO``.

For a guide whose latent sites are all discrete and mean-field, q(z|x) = Π_k q(z_k|x), the ELBO

    ELBO(x) = Σ_z q(z|x) [ log p(x, z) − log q(z|x) ]

is a finite sum. Marking each guide site ``infer={"enumerate": "parallel"}`` (what
``config_enumerate`` does; the model and guide themselves stay unmarked) makes Pyro evaluate it
at every value at once, each variable in a tensor dimension of its own to the left of the
plates, so the model's decoder runs on a broadcast grid of all C^K codes; ``TraceEnum_ELBO``
then contracts the grid weighted by q (Pyro's tutorials "Inference with Discrete Latent
Variables"; Obermeyer et al. 2019, "Tensor Variable Elimination for Plated Factor Graphs").

There is no sampling: the value is the ELBO itself and its gradient is the exact gradient, with
zero variance — the reference the sampling estimators are measured against. The cost is C^K
decoder evaluations per datapoint, so it is for small codes only. ``num_particles`` is accepted
for a uniform interface and ignored.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_vae.objectives.particles import MAX_PLATE_NESTING


class EnumeratedELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` with the guide's discrete sites enumerated in parallel."""

    name = "exact enumeration"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = MAX_PLATE_NESTING):
        super().__init__(num_particles=1, max_plate_nesting=max_plate_nesting,
                         strict_enumeration_warning=False)

    @staticmethod
    def _enumerated(guide: Callable) -> Callable:
        return config_enumerate(guide, default="parallel")

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        return super().loss(model, self._enumerated(guide), *args, **kwargs)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        return super().differentiable_loss(model, self._enumerated(guide), *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                       ) -> float:
        return super().loss_and_grads(model, self._enumerated(guide), *args, **kwargs)
