"""The Concrete / Gumbel-Softmax relaxation of discrete latent variables, and its
straight-through variant.

A categorical z ~ Cat(softmax ℓ) is drawn exactly by the Gumbel-max trick,
z = one_hot(argmax_c (ℓ_c + g_c)) with g_c ~ Gumbel(0, 1) i.i.d. Replacing the argmax by a
softmax at temperature τ gives the Concrete (Maddison, Mnih & Teh 2017) or Gumbel-Softmax
(Jang, Gu & Poole 2017) sample

    z̃_τ = softmax((ℓ + g) / τ),

a reparameterized point of the simplex that tends to the one-hot z as τ → 0. This objective
swaps every one-hot categorical site of the guide for Pyro's ``RelaxedOneHotCategorical`` (the
model and guide are unchanged) and maximizes the *relaxed* objective, per datapoint,

    L_τ(x) = E_g[ log p(x | z̃_τ) ] − Σ_k KL(q(z_k|x) ‖ p(z_k)),

with the exact categorical KL of Jang et al. (2017, §3; Maddison et al. use Concrete densities
for both terms, which underflow at low τ). Its gradient is the pathwise gradient through z̃_τ:
low variance, but **biased** for the discrete ELBO, the bias vanishing as τ → 0 while the
variance grows (∂z̃/∂ℓ scales as 1/τ). L_τ is not the discrete ELBO (the decoder never sees a
relaxed code at test time), so the value this objective *reports* (its ``loss``) is the
discrete ELBO, estimated on the same noise: the decoder at the hard code one_hot(argmax z̃),
which is exactly distributed as q (Gumbel-max); :attr:`ConcreteELBO.last_relaxed_bound` keeps
the relaxed objective's value of the last call.

``straight_through`` (Jang et al. 2017, §2.2; Bengio et al. 2013) uses Pyro's
``RelaxedOneHotCategoricalStraightThrough``: the decoder sees the hard one-hot code in the
forward pass, the backward pass uses the relaxed sample's gradient. Its value is then an
unbiased estimate of the discrete ELBO; its gradient is biased at every τ.

The temperature follows Jang et al.'s schedule τ_t = max(τ_min, τ_0 · exp(−r t)) over training
steps t (:class:`TemperatureSchedule`), set by the training loop through :meth:`at_step`.
Latent sites that are not one-hot categorical keep their own (reparameterized) samples and a
single-sample log p(z) − log q(z) term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch.distributions import OneHotCategorical, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.particles import (ParticleTraces, PerDatapointObjective,
                                           _relative_scale, _sample_sites, run_particles)
from pyro_vae.objectives.recorder import SiteRecorder


@dataclass
class TemperatureSchedule:
    """τ_t = max(τ_min, τ_0 · exp(−rate · t)) at training step t (Jang et al. 2017, §4.1)."""

    initial: float = 1.0
    minimum: float = 0.5
    rate: float = 0.0

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.minimum > 0 and self.rate >= 0):
            raise ConfigError(f"temperature schedule {self}: temperatures must be positive and "
                              "the decay rate non-negative.")

    def at(self, step: int) -> float:
        if self.rate == 0:
            return self.initial
        return max(self.minimum, self.initial * math.exp(-self.rate * step))


class _Relax(Messenger):
    """Replace each one-hot categorical latent site's distribution by its relaxation."""

    def __init__(self, temperature: float, straight_through: bool):
        super().__init__()
        self.temperature = temperature
        self.cls = (dist.RelaxedOneHotCategoricalStraightThrough if straight_through
                    else dist.RelaxedOneHotCategorical)

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if msg["is_observed"] or not isinstance(fn, OneHotCategorical):
            return
        temperature = torch.tensor(self.temperature, dtype=fn.logits.dtype,
                                   device=fn.logits.device)
        msg["fn"] = self.cls(temperature, logits=fn.logits)


def _is_relaxed(site: dict) -> bool:
    return isinstance(site["fn"], dist.RelaxedOneHotCategorical)


def _log_likelihood(model_sites: list[dict], traces: ParticleTraces) -> torch.Tensor:
    shape = (traces.num_particles, traces.batch_size)
    total: torch.Tensor | float = 0.0
    for site in model_sites:
        if site["is_observed"]:
            log_prob = site["fn"].log_prob(site["value"]).expand(shape)
            total = total + _relative_scale(site, traces.data_scale) * log_prob
    return total


def _latent_terms(traces: ParticleTraces) -> torch.Tensor:
    """Σ_sites [−KL(q ‖ p)] (exact, categorical sites) or log p(z) − log q(z) (others)."""
    shape = (traces.num_particles, traces.batch_size)
    total: torch.Tensor | float = 0.0
    for guide_site in _sample_sites(traces.guide):
        model_site = traces.model.nodes[guide_site["name"]]
        scale = _relative_scale(guide_site, traces.data_scale)
        if _is_relaxed(guide_site):
            q = OneHotCategorical(logits=guide_site["fn"].logits)
            term = -kl_divergence(q, model_site["fn"])
        else:
            term = (model_site["fn"].log_prob(model_site["value"])
                    - guide_site["fn"].log_prob(guide_site["value"]))
        total = total + scale * term.expand(shape)
    return total


class ConcreteELBO(PerDatapointObjective):
    """The relaxed (Concrete / Gumbel-Softmax) objective; reports the discrete ELBO."""

    name = "Concrete relaxation"
    straight_through = False

    def __init__(self, num_particles: int = 1,
                 temperature: TemperatureSchedule | float = 1.0, **kwargs: Any):
        super().__init__(num_particles=num_particles, **kwargs)
        self.schedule = (temperature if isinstance(temperature, TemperatureSchedule)
                         else TemperatureSchedule(temperature, temperature, 0.0))
        self.temperature = self.schedule.at(0)
        #: The relaxed objective L_τ per datapoint (mean over the batch) of the last call.
        self.last_relaxed_bound: float | None = None

    def at_step(self, step: int) -> None:
        """Set the temperature of training step ``step`` from the schedule."""
        self.temperature = self.schedule.at(step)

    def _relaxed_traces(self, model: Callable, guide: Callable, args: tuple,
                        kwargs: dict) -> ParticleTraces:
        relaxed_guide = _Relax(self.temperature, self.straight_through)(guide)
        traces = run_particles(model, relaxed_guide, self.num_particles, args, kwargs,
                               self.max_plate_nesting, who=self.name)
        if not any(_is_relaxed(site) for site in _sample_sites(traces.guide)):
            raise ConfigError(f"the {self.name} relaxes one-hot categorical latent sites, and "
                              "this guide has none; use it with [model] kind = \"discrete\".")
        return traces

    def _hard_log_likelihood(self, model: Callable, traces: ParticleTraces, args: tuple,
                             kwargs: dict) -> torch.Tensor:
        """log p(x | one_hot(argmax z̃)): the decoder at the Gumbel-max code of the same noise."""
        replay = {}
        for name, site in traces.guide.nodes.items():
            site = dict(site)
            if site["type"] == "sample" and _is_relaxed(site):
                value = site["value"].detach()
                site["value"] = F.one_hot(value.argmax(-1), value.shape[-1]).to(value.dtype)
            replay[name] = site
        with torch.no_grad(), SiteRecorder(replay=replay) as recorder:
            with pyro_particles(self.num_particles, self.max_plate_nesting):
                model(*args, **kwargs)
        return _log_likelihood(list(recorder.sites.values()), traces)

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self._relaxed_traces(model, guide, args, kwargs)
        latent = _latent_terms(traces)
        relaxed = (_log_likelihood(list(traces.model.nodes.values()), traces) + latent).mean(0)
        self.last_relaxed_bound = float(relaxed.detach().mean())
        if self.straight_through:  # the decoder already saw the hard code
            return relaxed.detach(), relaxed, traces.data_scale
        discrete = (self._hard_log_likelihood(model, traces, args, kwargs)
                    + latent.detach()).mean(0)
        return discrete, relaxed, traces.data_scale


class StraightThroughELBO(ConcreteELBO):
    """Straight-through Gumbel-Softmax: hard codes forward, relaxed gradient backward."""

    name = "straight-through Gumbel-Softmax"
    straight_through = True


def pyro_particles(num_particles: int, max_plate_nesting: int) -> pyro.plate:
    """The ``particles`` plate that :func:`run_particles` runs model and guide in."""
    return pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1))
