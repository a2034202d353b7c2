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
vimco       IWAE bound, VIMCO score-function gradient (K ≥ 2)  ``vimco.py``
concrete    Concrete/Gumbel-Softmax relaxation (discrete z)     ``concrete.py``
straight_through  straight-through Gumbel-Softmax (discrete z)  ``concrete.py``
enumerate   ELBO, discrete z summed out (``TraceEnum_ELBO``)    ``enumerate.py``
=========== =================================================== ==========================

Which are lower bounds on log p(x): with the KL weight β = 1, every one except Rényi with
α < 0, which lies *above* IWAE and can exceed log p(x) (Li & Turner 2016): it is an
objective, not a bound. With β ≠ 1 (β-VAE, or a step of KL warm-up) every objective bounds
E log (1/K) Σ_k p(x|z_k) (p(z_k)/q(z_k|x))^β instead: below log p(x) for β > 1, but it can
exceed it for β < 1. :func:`is_lower_bound` says which; ``compare`` and the README mark the
others. What *does* hold, in expectation, for β = 1: ELBO ≤ IWAE_K ≤ IWAE_{K+1} ≤ log p(x), and
Rényi_α with 0 ≤ α < 1 between the ELBO and IWAE_K at the same K.

All are Pyro ``ELBO`` objects with ``loss``, ``loss_and_grads`` and ``differentiable_loss``,
vectorized over ``particles``; the ones of this library reduce per datapoint inside the
``data`` plate (``particles.py``). ``elbo`` and ``meanfield`` are Pyro's classes that, after
checking a model/guide pair on Pyro traces once, record its sites with one light handler
(``fast_elbo.py``): the same numbers for less time per step. Training uses them through
:class:`ObjectiveModule`, an ``nn.Module`` whose ``forward`` is the differentiable loss, so a
plain ``torch.optim`` optimizer (or ``DistributedDataParallel``) drives any of them.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer import ELBO
from torch import nn

from pyro_vae.objectives.concrete import ConcreteELBO, StraightThroughELBO, TemperatureSchedule
from pyro_vae.objectives.dreg import DReG
from pyro_vae.objectives.enumerate import EnumeratedELBO
from pyro_vae.objectives.fast_elbo import FastTrace_ELBO, FastTraceMeanField_ELBO
from pyro_vae.objectives.free_bits import free_bits_penalty
from pyro_vae.objectives.iwae import IWAE
from pyro_vae.objectives.particles import MAX_PLATE_NESTING, PerDatapointObjective
from pyro_vae.objectives.renyi import RenyiBound
from pyro_vae.objectives.score import ScoreFunctionELBO
from pyro_vae.objectives.stl import STL
from pyro_vae.objectives.vimco import VIMCO
from pyro_vae.options import Option, positive
from pyro_vae.params import parameters_owned
from pyro_vae.registry import OBJECTIVES as REGISTRY

#: Capability flags an objective declares when it registers (read by the one compatibility
#: check of ``config/recipe.py`` and by the parametrized tests):
#:
#: ``per_datapoint``            reduced per datapoint in the ``data`` plate (needs every latent
#:                              site inside that plate)
#: ``global_latents``           trains models with latent sites outside the ``data`` plate
#: ``separate_kl``              has the ELBO's separate KL term (what free bits floor)
#: ``needs_independent_latents`` needs a guide whose latent sites do not feed one another
#:                              (mean-field analytic KL; DReG/STL's stop-gradient on one site)
#: ``closed_form_kl``           uses the closed-form KL where the prior/guide pair has one
#: ``stateful``                 keeps state across steps (cannot be split between processes)
#: ``enumerates_discrete``      can sum a discrete latent out (the M2 model's label)
#: ``discrete_codes``           trains categorical latent codes (no reparameterized sample)
#: ``discrete_only``            only for categorical latent codes (relaxations, enumeration)
CAPABILITIES = ("per_datapoint", "global_latents", "separate_kl", "needs_independent_latents",
                "closed_form_kl", "stateful", "enumerates_discrete", "discrete_codes",
                "discrete_only")


@REGISTRY.register("elbo", help="Trace_ELBO, reparameterized",
                   capabilities={"global_latents", "separate_kl", "enumerates_discrete"})
def _elbo(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return FastTrace_ELBO(num_particles=particles,
                          vectorize_particles=vectorize and particles > 1,
                          max_plate_nesting=MAX_PLATE_NESTING)


@REGISTRY.register("meanfield", help="TraceMeanField_ELBO: analytic KL where there is one",
                   capabilities={"global_latents", "separate_kl", "needs_independent_latents",
                                 "closed_form_kl"})
def _meanfield(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return FastTraceMeanField_ELBO(num_particles=particles,
                                   vectorize_particles=vectorize and particles > 1,
                                   max_plate_nesting=MAX_PLATE_NESTING)


@REGISTRY.register("iwae", help="importance-weighted bound", capabilities={"per_datapoint"})
def _iwae(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return IWAE(num_particles=particles)


@REGISTRY.register("dreg", help="IWAE with doubly reparameterized gradients",
                   capabilities={"per_datapoint", "needs_independent_latents"})
def _dreg(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return DReG(num_particles=particles)


@REGISTRY.register("stl", help="ELBO, sticking-the-landing gradient",
                   capabilities={"per_datapoint", "needs_independent_latents"})
def _stl(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return STL(num_particles=particles)


def _renyi_alpha(alpha: float) -> str | None:
    if alpha == 1.0:
        return ("α = 1 makes the Rényi bound the ELBO itself; use objective = \"elbo\", or an "
                "alpha other than 1 (0 is IWAE).")
    return None


@REGISTRY.register("renyi", help="Renyi / VR-alpha bound ([objective] alpha)",
                   capabilities={"per_datapoint"},
                   options={"alpha": Option(0.5, "α of the bound; α ≠ 1, and α = 0 is IWAE",
                                            check=_renyi_alpha, legacy="alpha")})
def _renyi(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return RenyiBound(alpha=alpha, num_particles=particles)


@REGISTRY.register("score", help="score-function ELBO with a running baseline",
                   capabilities={"per_datapoint", "stateful", "discrete_codes"})
def _score(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
        temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return ScoreFunctionELBO(num_particles=particles)


@REGISTRY.register("vimco", help="VIMCO: IWAE with leave-one-out baselines",
                   capabilities={"per_datapoint", "discrete_codes"})
def _vimco(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
           temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return VIMCO(num_particles=particles)


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be non-negative."


#: The relaxations' temperature τ_t = max(temperature_min, temperature · exp(−temperature_decay
#: · t)) at training step t (Jang et al. 2017), in the ``[objective]`` table.
RELAXATION_OPTIONS = {
    "temperature": Option(1.0, "the relaxation's temperature τ_0 at the first step",
                          check=positive, legacy="temperature"),
    "temperature_min": Option(0.5, "the floor τ_min of the temperature", check=positive,
                              legacy="temperature_min"),
    "temperature_decay": Option(0.0, "r in τ_t = max(τ_min, τ_0 exp(−r t)) over steps t "
                                "(0: constant)", check=_non_negative, legacy="temperature_decay"),
}


def _schedule(temperature: TemperatureSchedule | float, temperature_min: float | None,
              temperature_decay: float) -> TemperatureSchedule | float:
    if isinstance(temperature, TemperatureSchedule) or temperature_min is None:
        return temperature
    return TemperatureSchedule(temperature, temperature_min, temperature_decay)


@REGISTRY.register("concrete", help="Concrete / Gumbel-softmax relaxation ([objective] "
                   "temperature)",
                   capabilities={"per_datapoint", "discrete_codes", "discrete_only"},
                   options=RELAXATION_OPTIONS)
def _concrete(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
              temperature: TemperatureSchedule | float = 1.0,
              temperature_min: float | None = None, temperature_decay: float = 0.0) -> ELBO:
    return ConcreteELBO(num_particles=particles,
                        temperature=_schedule(temperature, temperature_min, temperature_decay))


@REGISTRY.register("straight_through", help="straight-through Gumbel-softmax",
                   capabilities={"per_datapoint", "discrete_codes", "discrete_only"},
                   options=RELAXATION_OPTIONS)
def _straight_through(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
                      temperature: TemperatureSchedule | float = 1.0,
                      temperature_min: float | None = None,
                      temperature_decay: float = 0.0) -> ELBO:
    return StraightThroughELBO(num_particles=particles,
                               temperature=_schedule(temperature, temperature_min,
                                                     temperature_decay))


@REGISTRY.register("enumerate", help="exact sum over every discrete code",
                   capabilities={"per_datapoint", "discrete_codes", "discrete_only"})
def _enumerate(particles: int = 1, alpha: float = 0.5, vectorize: bool = True,
               temperature: TemperatureSchedule | float = 1.0) -> ELBO:
    return EnumeratedELBO(num_particles=particles)


#: Objectives for models with discrete latent sites (``[model] kind = "discrete"``).
DISCRETE_OBJECTIVES = tuple(n for n, e in REGISTRY._entries.items()
                            if "discrete_codes" in e.capabilities)
#: The built-in objectives' names (plugins add theirs to the registry: see ``REGISTRY``).
OBJECTIVES = REGISTRY.registered_names()

__all__ = ["CAPABILITIES", "DReG", "FastTraceMeanField_ELBO", "FastTrace_ELBO", "IWAE", "MAX_PLATE_NESTING",
           "OBJECTIVES", "ObjectiveModule", "PerDatapointObjective", "RenyiBound", "STL",
           "ScoreFunctionELBO", "free_bits_penalty", "is_lower_bound", "make_objective"]
__all__ += ["ConcreteELBO", "DISCRETE_OBJECTIVES", "EnumeratedELBO", "StraightThroughELBO",
            "TemperatureSchedule", "VIMCO"]


def is_lower_bound(name: str, alpha: float = 0.5, beta: float = 1.0) -> bool:
    """Whether objective ``name`` (with Rényi's ``alpha`` and KL weight ``beta``) is, in
    expectation, a lower bound on log p(x) (see the module docstring)."""
    if beta != 1.0:
        return False
    return not (name == "renyi" and alpha < 0)


def make_objective(name: str, particles: int = 1, alpha: float = 0.5,
                   vectorize: bool = True,
                   temperature: TemperatureSchedule | float = 1.0,
                   options: dict | None = None) -> ELBO:
    """The objective registered as ``name`` (see the table above) with ``particles`` samples.

    ``vectorize=False`` draws the particles of ``elbo``/``meanfield`` one after another (for
    models whose global sites cannot take a particle dimension, like a Bayesian decoder).
    ``options`` are those the objective declares (the recipe's ``[objective]`` table,
    :mod:`pyro_vae.options`: ``renyi``'s ``alpha``, the relaxations' ``temperature``,
    ``temperature_min`` and ``temperature_decay``); they take the place of the ``alpha`` and
    ``temperature`` arguments, which the estimator lab sweeps (``temperature`` a number or a
    :class:`TemperatureSchedule`). An objective factory takes these same keyword arguments.
    """
    arguments: dict[str, Any] = {"particles": particles, "alpha": alpha,
                                 "vectorize": vectorize, "temperature": temperature}
    arguments.update(options or {})
    return REGISTRY.get(name)(**arguments)


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
