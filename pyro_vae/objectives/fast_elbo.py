"""Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO``, traced once and then recorded lightly.

Both estimate the negative ELBO of a model/guide pair from one draw z ~ q(z|x) per particle,
every site weighted by its scale s (N/B minibatch scaling times any ``poutine.scale``, e.g. β
or KL annealing on the latent site):

    Trace_ELBO:           −[s_x log p(x|z) + s_z (log p(z) − log q(z|x))]
    TraceMeanField_ELBO:  −[s_x log p(x|z) − s_z KL(q(z|x) ‖ p(z))]

(the KL in closed form where torch registers one, else the Monte Carlo log q(z) − log p(z)).
With a fully reparameterized guide the surrogate loss *is* this estimate, and its gradient is
the reparameterization gradient.

The classes here are the same estimators, drop-in subclasses of Pyro's. On the first
``differentiable_loss`` call for a model/guide pair they run Pyro's own code on Pyro traces and
check the pair's structure on those traces (:func:`structure`): every guide site
reparameterized and not enumerated, the model's latent sites exactly the guide's, every site
inside the ``data`` plate. Later calls run the pair under one light messenger
(:func:`~pyro_vae.objectives.recorder.record`) and sum the same terms in the same order, so
loss and gradients are those of Pyro's class at the same random state (the loss value to float
rounding: Pyro adds it up in Python floats). A pair with another structure (a Bayesian decoder's
global weight sites, M2's enumerated label), a call with Pyro's validation enabled, or a later
call whose sites differ from the first (in names, number, order, observed status or
enumeration) goes through Pyro's own code unchanged; a site name used twice in one run raises
Pyro's own error, as Pyro's traces do. ``loss`` and
``loss_and_grads`` (what ``SVI`` calls) are Pyro's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from torch.distributions import kl_divergence

from pyro_vae.objectives.recorder import Sites, record, scaled_log_prob

_UNSEEN = object()


#: What Pyro's ELBOs check of one sample site: its name, whether it is observed, and how (if
#: at all) it is enumerated.
SiteKey = tuple[str, bool, Any]


def _site_key(site: dict) -> SiteKey:
    return site["name"], bool(site["is_observed"]), site["infer"].get("enumerate")


class Structure(NamedTuple):
    """The sample sites of a model/guide pair that the recorded path has been checked for:
    every site's name, observed status and enumeration, in order (so counts too)."""

    model_sites: tuple[SiteKey, ...]
    guide_sites: tuple[SiteKey, ...]

    def matches(self, model_sites: Sites, guide_sites: Sites) -> bool:
        return (tuple(map(_site_key, model_sites.values())) == self.model_sites
                and tuple(map(_site_key, guide_sites.values())) == self.guide_sites
                and all(site["fn"].has_rsample for site in guide_sites.values()))


def _in_data_plate(site: dict) -> bool:
    return any(frame.name == "data" for frame in site["cond_indep_stack"])


def structure(model_trace: Trace, guide_trace: Trace) -> Structure | None:
    """The pair's :class:`Structure` if the recorded path handles it, else ``None``.

    Takes the traces as Pyro's ELBOs see them (subsample sites pruned).
    """
    model_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    guide_sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
    latent = [s["name"] for s in model_sites if not s["is_observed"]]
    if sorted(latent) != sorted(s["name"] for s in guide_sites):
        return None
    for site in guide_sites:
        if site["is_observed"] or not site["fn"].has_rsample or site["infer"].get("enumerate"):
            return None
    if not all(_in_data_plate(site) for site in model_sites + guide_sites):
        return None
    return Structure(tuple(map(_site_key, model_sites)), tuple(map(_site_key, guide_sites)))


class _TracedOnce:
    """Mixin for a Pyro ELBO: Pyro's ``differentiable_loss`` on the first call per pair (and
    whenever the recorded path does not apply), the recorded one afterwards."""

    num_particles: int
    vectorize_particles: bool

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._structures: dict[tuple[Callable, Callable], Structure | None] = {}
        # The structures of the traces of a first call (None outside one).
        self._seen: list[Structure | None] | None = None

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        for model_trace, guide_trace in super()._get_traces(model, guide, args, kwargs):
            if self._seen is not None:
                self._seen.append(structure(model_trace, guide_trace))
            yield model_trace, guide_trace

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        key = (model, guide)
        known = self._structures.get(key, _UNSEEN)
        if known is not _UNSEEN and known is not None and not is_validation_enabled():
            loss = self._recorded_loss(known, model, guide, args, kwargs)
            if loss is not None:
                return loss
            known = self._structures[key] = None  # the structure changed: Pyro's path
        if known is not _UNSEEN:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        self._seen = []
        try:
            loss = super().differentiable_loss(model, guide, *args, **kwargs)
            seen = self._seen
        finally:
            self._seen = None
        first = seen[0] if seen else None
        self._structures[key] = first if all(s == first for s in seen) else None
        return loss

    def _recorded_loss(self, known: Structure, model: Callable, guide: Callable, args: tuple,
                       kwargs: dict) -> torch.Tensor | None:
        """The surrogate loss from recorded sites, or ``None`` if a run differs from ``known``."""
        draws = self.num_particles
        if self.vectorize_particles:
            model = self._vectorized_num_particles(model)
            guide = self._vectorized_num_particles(guide)
            draws = 1
        loss = 0.0
        for _ in range(draws):
            model_sites, guide_sites = record(model, guide, args, kwargs)
            if not known.matches(model_sites, guide_sites):
                return None
            loss = loss + self._particle_loss(model_sites, guide_sites) / self.num_particles
        return loss

    def _particle_loss(self, model_sites: Sites, guide_sites: Sites) -> torch.Tensor:
        raise NotImplementedError


class FastTrace_ELBO(_TracedOnce, Trace_ELBO):
    """``Trace_ELBO`` (reparameterized guides), recorded after the first call (see above)."""

    def _particle_loss(self, model_sites: Sites, guide_sites: Sites) -> torch.Tensor:
        # The terms and their order are Trace_ELBO's: model sites, then guide sites.
        elbo = 0
        for site in model_sites.values():
            elbo = elbo + scaled_log_prob(site).sum()
        for site in guide_sites.values():
            elbo = elbo - scaled_log_prob(site).sum()
        return -elbo


class FastTraceMeanField_ELBO(_TracedOnce, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO``, recorded after the first call (see above)."""

    def _particle_loss(self, model_sites: Sites, guide_sites: Sites) -> torch.Tensor:
        # The terms and their order are TraceMeanField_ELBO's, which scales the KL by the
        # guide site's scale.
        elbo = 0
        for name, model_site in model_sites.items():
            if model_site["is_observed"]:
                elbo = elbo + scaled_log_prob(model_site).sum()
                continue
            guide_site = guide_sites[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:  # no closed form: the Monte Carlo estimate
                elbo = elbo + scaled_log_prob(model_site).sum() - scaled_log_prob(guide_site).sum()
                continue
            kl = scale_and_mask(kl, guide_site["scale"], guide_site["mask"])
            if torch.is_tensor(kl):
                elbo = elbo - kl.sum()
            else:
                elbo = elbo - kl * guide_site["fn"].batch_shape.numel()
        return -elbo
