"""Training objectives: Pyro ELBO estimators, one file each, chosen by name.

``elbo`` is Pyro's ``Trace_ELBO`` and ``meanfield`` its ``TraceMeanField_ELBO`` (the KL term in
closed form where one exists). Both are vectorized over ``particles`` and used through
:class:`ObjectiveModule`, an ``nn.Module`` whose ``forward`` is the differentiable loss, so a
plain ``torch.optim`` optimizer (or ``DistributedDataParallel``) drives them.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae.errors import ConfigError

#: Plates the library's models nest: ``data`` at dim -1. Particles go at dim -2.
MAX_PLATE_NESTING = 1


def make_objective(name: str, particles: int = 1) -> ELBO:
    """The Pyro ELBO called ``name`` (``elbo`` or ``meanfield``) with ``particles`` samples."""
    options = dict(num_particles=particles, vectorize_particles=particles > 1,
                   max_plate_nesting=MAX_PLATE_NESTING)
    if name == "elbo":
        return Trace_ELBO(**options)
    if name == "meanfield":
        return TraceMeanField_ELBO(**options)
    raise ConfigError(f"unknown objective {name!r}; use elbo or meanfield.")


class ObjectiveModule(nn.Module):
    """``forward(x)`` = the objective's differentiable loss (negative ELBO) of ``vae`` on x.

    Unlike ``elbo(vae.model, vae.guide)``, this module owns the VAE's parameters, so optimizers
    and ``DistributedDataParallel`` see them.
    """

    def __init__(self, vae: nn.Module, objective: ELBO):
        super().__init__()
        self.vae = vae
        self.objective = objective

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, y)
