"""Training objectives, one file each, chosen by name.

=========== =================================================== ==========================
name        objective                                           file
=========== =================================================== ==========================
elbo        ELBO, reparameterized (Pyro's ``Trace_ELBO``)       ``fast_elbo.py`` (Pyro's)
meanfield   ELBO with closed-form KL (``TraceMeanField_ELBO``)  ``fast_elbo.py`` (Pyro's)
iwae        IWAE bound L_K (Burda et al. 2016)                  ``iwae.py``
dreg        IWAE bound, doubly reparameterized gradient         ``dreg.py``
stl         ELBO, sticking-the-landing gradient                 ``stl.py``
renyi       Rényi / VR-α bound (Li & Turner 2016)               ``renyi.py``
score       ELBO, score-function gradient with a baseline       ``score.py``
=========== =================================================== ==========================

All are Pyro ``ELBO`` objects with ``loss``, ``loss_and_grads`` and ``differentiable_loss``,
vectorized over ``particles``; the ones of this library reduce per datapoint inside the
``data`` plate (``particles.py``). ``elbo`` and ``meanfield`` are Pyro's classes that, after
checking a model/guide pair on Pyro traces once, record its sites with one light handler
(``fast_elbo.py``): the same numbers for less time per step. Training uses them through
:class:`ObjectiveModule`, an ``nn.Module`` whose ``forward`` is the differentiable loss, so a
plain ``torch.optim`` optimizer (or ``DistributedDataParallel``) drives any of them.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.dreg import DReG
from pyro_vae.objectives.fast_elbo import FastTrace_ELBO, FastTraceMeanField_ELBO
from pyro_vae.objectives.free_bits import free_bits_penalty
from pyro_vae.objectives.iwae import IWAE
from pyro_vae.objectives.particles import MAX_PLATE_NESTING, PerDatapointObjective
from pyro_vae.objectives.renyi import RenyiBound
from pyro_vae.objectives.score import ScoreFunctionELBO
from pyro_vae.objectives.stl import STL
from pyro_vae.params import parameters_owned

OBJECTIVES = ("elbo", "meanfield", "iwae", "dreg", "stl", "renyi", "score")

__all__ = ["DReG", "FastTraceMeanField_ELBO", "FastTrace_ELBO", "IWAE", "MAX_PLATE_NESTING",
           "OBJECTIVES", "ObjectiveModule", "PerDatapointObjective", "RenyiBound", "STL",
           "ScoreFunctionELBO", "free_bits_penalty", "make_objective"]


def make_objective(name: str, particles: int = 1, alpha: float = 0.5,
                   vectorize: bool = True) -> ELBO:
    """The objective called ``name`` (see the table above) with ``particles`` samples each.

    ``vectorize=False`` draws the particles of ``elbo``/``meanfield`` one after another (for
    models whose global sites cannot take a particle dimension, like a Bayesian decoder).
    """
    if name in ("elbo", "meanfield"):
        cls = FastTrace_ELBO if name == "elbo" else FastTraceMeanField_ELBO
        return cls(num_particles=particles, vectorize_particles=vectorize and particles > 1,
                   max_plate_nesting=MAX_PLATE_NESTING)
    if name == "renyi":
        return RenyiBound(alpha=alpha, num_particles=particles)
    classes = {"iwae": IWAE, "dreg": DReG, "stl": STL, "score": ScoreFunctionELBO}
    if name not in classes:
        raise ConfigError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}.")
    return classes[name](num_particles=particles)


class ObjectiveModule(nn.Module):
    """``forward(x)`` = the objective's differentiable loss (negative bound) of ``vae`` on x.

    Unlike ``elbo(vae.model, vae.guide)``, this module owns the VAE's parameters, so optimizers
    and ``DistributedDataParallel`` see them. ``free_bits`` > 0 adds the free-bits term of
    ``free_bits.py`` (for the ELBO objectives).
    """

    def __init__(self, vae: nn.Module, objective: ELBO, free_bits: float = 0.0):
        super().__init__()
        self.vae = vae
        self.objective = objective
        self.free_bits = free_bits

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None,
                **kwargs: torch.Tensor) -> torch.Tensor:
        """``kwargs`` go to model and guide as they are (e.g. M2's ``classifier_x``)."""
        # This module's optimizer owns the parameters: no re-registration on every step.
        with parameters_owned():
            loss = self.objective.differentiable_loss(self.vae.model, self.vae.guide, x, y,
                                                      **kwargs)
        if self.free_bits > 0:
            loss = loss + free_bits_penalty(self.vae, x, self.free_bits)
        return loss
