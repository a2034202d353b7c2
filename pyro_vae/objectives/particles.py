"""Per-datapoint importance weights from the sites of a Pyro run, and the base class of the
objectives that are reduced per datapoint (IWAE, DReG, STL, Rényi-α, score function).

For K particles and a minibatch of B datapoints the guide runs once under a ``particles`` plate
(to the left of the ``data`` plate) and the model is replayed on its samples, giving

    log w[k, n] = Σ_{model sites} log p(·) − Σ_{guide sites} log q(·)      shape [K, B]

with every site's log-density weighted by its own scale relative to the data plate's N/B (so a
β from ``poutine.scale`` on the latent site enters as β·(log p(z) − log q(z))). With β ≠ 1 the
bounds built on these weights are of E log (1/K) Σ_k p(x|z_k) (p(z_k)/q(z_k|x))^β, not of
log p(x): below it for β > 1, but for β < 1 they can exceed it (+1.09 nats measured at
β = 0.3 with K large). Evaluation uses ``scaled=False`` (the true model). Each objective
reduces over k separately for every datapoint n, then sums over n and multiplies by N/B.

Pyro's ``RenyiELBO`` instead sums every site over the whole batch before its log-mean-exp, and
with a global site turns into a joint-over-batch bound without saying so (pyro-ppl issue
#3104); here a site outside the ``data`` plate is refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro.distributions.util import detach
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.recorder import RecordedTrace, SiteRecorder
from pyro_vae.plates import MAX_PLATE_NESTING  # ``data`` at dim -1; particles at dim -2


class ParticleTraces(NamedTuple):
    """The sample sites of the guide and of the model replayed on it (``.nodes`` by name, in
    order, as a Pyro ``Trace`` holds them)."""

    model: RecordedTrace
    guide: RecordedTrace
    num_particles: int
    batch_size: int
    data_scale: float


def _sample_sites(trace: Trace | RecordedTrace) -> list[dict]:
    return [site for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site)]


def _data_frame(site: dict, who: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == "data":
            return frame
    plates = [frame.name for frame in site["cond_indep_stack"] if frame.name != "particles"]
    if plates:
        raise ConfigError(
            f"site {site['name']!r} lies outside the 'data' plate, in plate(s) {plates}: "
            f"{who} is reduced per datapoint and finds the datapoints by the plate named "
            "'data'. Name the model's and guide's plate over datapoints \"data\".")
    raise ConfigError(
        f"site {site['name']!r} lies outside the 'data' plate: this model has a global latent "
        f"variable shared by all datapoints (a hyperprior, Bayesian weights, ...), and {who} "
        "is reduced per datapoint, so it has no per-datapoint share of that site's prior and "
        "guide terms. Train the model with an objective that handles global latent "
        "variables (\"elbo\" or \"meanfield\"); evaluation scores it by the posterior "
        "predictive p(x | data) over draws of the global site."
    )


class _DetachSamples(Messenger):
    """Detach every latent sample as it is drawn, so that the rest of the guide (e.g. q(z2|z1)
    in a hierarchical guide) sees a value with no pathwise gradient either."""

    def _pyro_post_sample(self, msg: dict) -> None:
        if not msg["is_observed"] and not site_is_subsample(msg):
            msg["value"] = msg["value"].detach()


def run_particles(model: Callable, guide: Callable, num_particles: int, args: tuple,
                  kwargs: dict, max_plate_nesting: int = MAX_PLATE_NESTING,
                  detach_samples: bool = False, who: str = "this objective") -> ParticleTraces:
    """Run the guide under a ``particles`` plate and replay the model on its samples.

    The sites are recorded by :class:`~pyro_vae.objectives.recorder.SiteRecorder` (what
    ``poutine.trace`` and ``poutine.replay`` would give, without building Pyro traces).

    ``detach_samples`` cuts the pathwise dependence of the samples on the guide's parameters
    before the model sees them (for score-function estimators).
    """

    def in_particle_plate(fn: Callable) -> Callable:
        def wrapped(*a: Any, **k: Any) -> Any:
            with pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1)):
                return fn(*a, **k)
        return wrapped

    if detach_samples:
        guide = _DetachSamples()(guide)
    with SiteRecorder() as guide_recorder:
        in_particle_plate(guide)(*args, **kwargs)
    guide_trace = RecordedTrace(guide_recorder.sites)
    if detach_samples:  # the recorder copied each value before the inner handler detached it
        for site in _sample_sites(guide_trace):
            site["value"] = site["value"].detach()
    for site in _sample_sites(guide_trace):  # refuse global sites before the model runs
        _data_frame(site, who)
    with SiteRecorder(replay=guide_recorder.sites) as model_recorder:
        in_particle_plate(model)(*args, **kwargs)
    model_trace = RecordedTrace(model_recorder.sites)
    frames = [_data_frame(site, who) for trace in (model_trace, guide_trace)
              for site in _sample_sites(trace)]
    frame = frames[0]
    data_scale = (frame.full_size or frame.size) / frame.size
    return ParticleTraces(model_trace, guide_trace, num_particles, frame.size, data_scale)


def _relative_scale(site: dict, data_scale: float) -> float | torch.Tensor:
    scale = site["scale"] / data_scale
    return 1.0 if isinstance(scale, float) and scale == 1.0 else scale


def log_weights(traces: ParticleTraces, stop_guide_parameters: bool = False,
                scaled: bool = True) -> torch.Tensor:
    """log w[k, n] = log p(x_n, z_kn) − log q(z_kn | x_n), shape ``[K, B]``.

    ``stop_guide_parameters`` evaluates log q with the guide's distribution parameters detached
    (the "sticking the landing" surrogate: gradients reach the guide only through z).
    ``scaled=False`` ignores β-style site scales (the true model, as evaluation needs).
    """
    shape = (traces.num_particles, traces.batch_size)
    log_w = 0.0
    for trace, sign in ((traces.model, 1.0), (traces.guide, -1.0)):
        for site in _sample_sites(trace):
            fn = detach(site["fn"]) if (stop_guide_parameters and sign < 0) else site["fn"]
            log_prob = fn.log_prob(site["value"]).expand(shape)
            if scaled:
                log_prob = _relative_scale(site, traces.data_scale) * log_prob
            log_w = log_w + sign * log_prob
    return log_w


def guide_log_density(traces: ParticleTraces) -> torch.Tensor:
    """Σ_{guide sites} log q(z_kn | x_n), shape ``[K, B]`` (for score-function terms)."""
    shape = (traces.num_particles, traces.batch_size)
    return sum(site["fn"].log_prob(site["value"]).expand(shape)
               for site in _sample_sites(traces.guide))


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


class PerDatapointObjective(ELBO):
    """Base class: a bound L(x_n) per datapoint, summed over the batch and scaled by N/B.

    Subclasses implement :meth:`per_datapoint`, returning the bound's value and a surrogate
    (both ``[B]``) whose gradient is the estimator's gradient. The loss is
    −(N/B) Σ_n value_n, and its gradient is −(N/B) Σ_n ∇ surrogate_n.
    """

    name = "per-datapoint objective"

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = MAX_PLATE_NESTING):
        if num_particles < 1:
            raise ConfigError(f"{self.name} needs at least one particle, got {num_particles}.")
        # Particles are vectorized by our own plate, so Pyro's flag stays off (it would add a
        # dimension for a plate of its own to max_plate_nesting).
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=False)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        raise NotImplementedError("per-datapoint objectives trace all particles at once; "
                                  "see run_particles")

    def traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict,
               detach_samples: bool = False) -> ParticleTraces:
        return run_particles(model, guide, self.num_particles, args, kwargs,
                             self.max_plate_nesting, detach_samples, who=self.name)

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(value ``[B]``, surrogate ``[B]``, N/B).

        The value is for reporting only: it may be built from stop-gradient terms, so
        differentiate the surrogate (as :meth:`differentiable_loss` does), never the value.
        """
        raise NotImplementedError

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        value, surrogate, data_scale = self.per_datapoint(model, guide, *args, **kwargs)
        total, surrogate_total = value.sum(), surrogate.sum()
        # Value of the bound, gradient of the surrogate.
        return -data_scale * (total.detach() + surrogate_total - surrogate_total.detach())

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            value, _, data_scale = self.per_datapoint(model, guide, *args, **kwargs)
            return -data_scale * float(value.sum())

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                       ) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())
