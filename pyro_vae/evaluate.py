"""Evaluation: the ELBO and the importance-sampled log-likelihood *per datapoint*.

For each datapoint x, with K draws z_k ~ q(z|x) and weights
w_k = p(x, z_k) / q(z_k|x),

    log p̂_K(x) = log (1/K) Σ_k w_k          (importance sampling; Burda et al. 2016, eq. 8)
    ELBO(x)   ≈ (1/K) Σ_k log w_k           (the same draws)

E[log p̂_K(x)] ≤ log p(x), rising to it as K grows; E[ELBO] ≤ E[log p̂_K]. Pyro's ``Importance``
and ``vectorized_importance_weights`` weight a whole batch jointly, which for a batch of B
images makes one weight out of B log-densities and an effective sample size near 1; here the
log-mean-exp is taken over particles separately for every datapoint.

The weights come from the sites of the guide and of the model replayed on it (recorded as
Pyro's traces would have them), under a ``particles`` plate, so any model/guide pair whose
sites all lie in the ``data`` plate is scored without model-specific code. Work is chunked so
that at most ``max_chunk`` decoded images exist at once; ``max_chunk = "auto"`` sizes the
chunks to half the free memory of a CUDA device, measured on a probe chunk (on a CPU it is the
default, 20,000).

Two error bars, for two questions. ``log_likelihood_stderr`` is the spread over the test
points: std_n(log p̂_K(x_n)) / √N, how much the mean would move on another test set of the same
size. ``log_likelihood_mc_stderr`` is the Monte Carlo error of the estimate itself on *these*
points, how much it would move with other draws z_k: for each datapoint the delta method gives
Var[log p̂_K] ≈ (K Σw² / (Σw)² − 1) / (K − 1) (= (K/ESS − 1)/(K − 1)), and the mean's error is
√(Σ_n Var_n) / N. (Like every importance-sampling error bar it is itself an estimate, too
small when q misses mass that no draw found.) For a Bayesian decoder all datapoints share the
weight draws W_s, so the Monte Carlo error is the jackknife over those draws, which carries
both the spread of the shared weights and that of the z draws. E[log p̂_K] ≤ log p(x): the
estimate is also biased low by an amount that shrinks as K grows.

Active units follow Burda et al. (2016, §5.2): dimension u is active if
Cov_x(E_{q(z|x)}[z_u]) > 0.01.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from pyro import poutine

# Annealed importance sampling and BDMC (their own module), re-exported here.
from pyro_vae.ais import AISEstimate, BDMCResult, ais_log_likelihood, bdmc  # noqa: F401
from pyro_vae.objectives.particles import (_sample_sites, guide_log_density, log_weights,
                                           run_particles)

ACTIVE_UNIT_THRESHOLD = 0.01
#: ``max_chunk`` where none is given, and for ``"auto"`` on a CPU.
DEFAULT_MAX_CHUNK = 20_000
#: Share of the free device memory that ``max_chunk = "auto"`` lets one chunk fill.
AUTO_CHUNK_MEMORY_FRACTION = 0.5
#: Decoded images in the probe chunk that measures the memory per decoded image.
PROBE_PARTICLES = 256
#: Importance samples per posterior draw of a Bayesian decoder's weights (at least 10 draws).
SAMPLES_PER_WEIGHT_DRAW = 50


def _is_bayesian(vae: torch.nn.Module) -> bool:
    """A Bayesian decoder whose weights are not fixed: its W is a global latent variable."""
    return getattr(vae, "weight_posterior", None) is not None and vae.fixed_weights is None


def _any_weights(vae: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Fix a Bayesian decoder at its posterior mean (for terms that do not involve W)."""
    return vae.using_weights() if _is_bayesian(vae) else contextlib.nullcontext()


def log_importance_weights(model: Callable, guide: Callable, x: torch.Tensor,
                           num_particles: int, *args, **kwargs) -> torch.Tensor:
    """log w[k, n] = log p(x_n, z_kn) − log q(z_kn | x_n), with z_kn ~ q; shape ``[K, B]``.

    Site scales (β, minibatch scaling) are ignored: this scores the true model.
    """
    traces = run_particles(model, guide, num_particles, (x, *args), kwargs,
                           who="per-datapoint evaluation")
    return log_weights(traces, scaled=False)


@dataclass
class LogLikelihoodEstimate:
    """Per-datapoint estimates in nats: ``log_likelihood`` (log p̂_K) and ``elbo``."""

    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    num_samples: int
    #: Monte Carlo error of the mean of ``log_likelihood`` over these points (see the module
    #: docstring); NaN where it cannot be estimated (one sample).
    mc_stderr: float = float("nan")

    @staticmethod
    def _stderr(values: torch.Tensor) -> float:
        if len(values) < 2:
            return float("nan")
        return float(values.std(unbiased=True) / math.sqrt(len(values)))

    @property
    def mean_log_likelihood(self) -> float:
        return float(self.log_likelihood.mean())

    @property
    def log_likelihood_stderr(self) -> float:
        return self._stderr(self.log_likelihood)

    @property
    def log_likelihood_mc_stderr(self) -> float:
        return self.mc_stderr

    @property
    def mean_elbo(self) -> float:
        return float(self.elbo.mean())

    @property
    def elbo_stderr(self) -> float:
        return self._stderr(self.elbo)


def auto_max_chunk(free_bytes: int, bytes_per_image: float,
                   fraction: float = AUTO_CHUNK_MEMORY_FRACTION,
                   minimum: int = DEFAULT_MAX_CHUNK) -> int:
    """Decoded images per chunk that fill ``fraction`` of ``free_bytes`` (at least
    ``minimum``: the fixed default already fits any device this library runs on)."""
    if bytes_per_image <= 0:
        return minimum
    return max(minimum, int(fraction * free_bytes / bytes_per_image))


def _probe_bytes_per_image(vae: torch.nn.Module, guide: Callable, x: torch.Tensor,
                           labels: tuple) -> float:
    """Peak CUDA memory per decoded image of one chunk of ``PROBE_PARTICLES`` samples."""
    device = x.device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with vae.scoring(), _any_weights(vae):
        log_w = log_importance_weights(vae.model, guide, x[:1], PROBE_PARTICLES,
                                       *(label[:1] for label in labels))
        torch.logsumexp(log_w, dim=0)
    peak = torch.cuda.max_memory_allocated(device)
    return (peak - before) / PROBE_PARTICLES


def resolve_max_chunk(max_chunk: int | str, vae: torch.nn.Module, x: torch.Tensor,
                      guide: Callable | None = None, y: torch.Tensor | None = None) -> int:
    """``max_chunk`` as a number: ``"auto"`` measures the device (see the module docstring)."""
    if max_chunk != "auto":
        return int(max_chunk)
    if x.device.type != "cuda" or not len(x):
        return DEFAULT_MAX_CHUNK
    labels = () if y is None else (y,)
    per_image = _probe_bytes_per_image(vae, vae.guide if guide is None else guide, x, labels)
    free_bytes, _ = torch.cuda.mem_get_info(x.device)
    return auto_max_chunk(free_bytes, per_image)


@torch.no_grad()
def estimate_log_likelihood(vae: torch.nn.Module, x: torch.Tensor, num_samples: int = 5000,
                            max_chunk: int | str = DEFAULT_MAX_CHUNK,
                            progress: Callable[[int], None] | None = None,
                            guide: Callable | None = None,
                            y: torch.Tensor | None = None) -> LogLikelihoodEstimate:
    """Importance-sampled log p(x) and the ELBO for every row of ``x`` (see module docstring).

    ``progress(n)`` is called after each chunk with the number of datapoints finished.
    ``guide`` is the proposal q(z|x) (default ``vae.guide``, the amortized one); another guide
    must take the same ``x`` and run its sites in the ``data`` plate. With labels ``y`` the
    model and guide are called as ``model(x, y)``: for a conditional model the estimate is
    then log p̂_K(x | y).

    For a Bayesian decoder the estimate is of the posterior predictive log p(x | data): the K
    samples are split over S = max(10, K/50) draws W_s ~ q(W) (at most K), K/S each, and
    log p̂ = log (1/K) Σ_s Σ_k p(x, z_sk | W_s) / q(z_sk | x) — importance sampling of
    ∫ p(x|W) q(W) dW with the proposal q(W) q(z|x); the ELBO is averaged over the draws. All
    datapoints share the S draws, so the standard error across datapoints leaves out the
    (shared) spread of the weight draws.

    Any other model whose guide has latent sites outside the ``data`` plate (global latent
    variables G, e.g. a learned hyperprior on the prior's scale) is scored the same way: the
    K samples are split over S draws G_s ~ q(G), and log p̂ = log (1/S) Σ_s p̂(x | G_s), each
    p̂(x | G_s) the per-datapoint estimate of the model and guide conditioned on G_s
    (:func:`global_sites`); its Monte Carlo error is the jackknife over the S draws, as for
    a Bayesian decoder.

    ``max_chunk`` (decoded images held at once) may be ``"auto"``: see :func:`resolve_max_chunk`.
    """
    max_chunk = resolve_max_chunk(max_chunk, vae, x, guide, y)
    if _is_bayesian(vae):
        if guide is not None:
            raise ValueError("a custom proposal is for models with point-estimated weights")
        return _estimate_posterior_predictive(vae, x, num_samples, max_chunk, progress)
    if guide is None and len(x):
        names = global_sites(vae, x, y)
        if names:
            return _estimate_with_global_sites(vae, x, names, num_samples, max_chunk,
                                               progress, y)
    guide = vae.guide if guide is None else guide
    return _score_given(vae, vae.model, guide, x, num_samples, max_chunk, progress, y)


def _delta_method_variance(log_sum_w: torch.Tensor, log_sum_w2: torch.Tensor,
                           num_samples: int) -> torch.Tensor:
    """Var[log p̂_K] per datapoint ≈ (K Σw² / (Σw)² − 1) / (K − 1) (NaN for K = 1)."""
    if num_samples < 2:
        return torch.full_like(log_sum_w, float("nan"))
    ratio = torch.exp(log_sum_w2 - 2 * log_sum_w) * num_samples  # K / ESS, in [1, K]
    return ((ratio - 1) / (num_samples - 1)).clamp_min(0.0)


def _estimate_posterior_predictive(vae: torch.nn.Module, x: torch.Tensor, num_samples: int,
                                   max_chunk: int, progress: Callable[[int], None] | None
                                   ) -> LogLikelihoodEstimate:
    draws = min(num_samples, max(10, num_samples // SAMPLES_PER_WEIGHT_DRAW))
    per_draw = num_samples // draws
    log_likelihoods, elbos = [], []
    for draw in range(draws):
        with vae.using_weights(vae.sample_weights()):
            estimate = estimate_log_likelihood(vae, x, per_draw, max_chunk,
                                               progress if draw == draws - 1 else None)
        log_likelihoods.append(estimate.log_likelihood)
        elbos.append(estimate.elbo)
    per_draw_estimates = torch.stack(log_likelihoods)  # [S, N]
    log_likelihood = torch.logsumexp(per_draw_estimates, 0) - math.log(draws)
    return LogLikelihoodEstimate(log_likelihood, torch.stack(elbos).mean(0),
                                 draws * per_draw, _jackknife_stderr(per_draw_estimates))


def _jackknife_stderr(per_draw: torch.Tensor) -> float:
    """Jackknife standard error over the S shared weight draws of the mean over datapoints of
    log (1/S) Σ_s p̂_s(x_n), from the per-draw estimates log p̂_s(x_n) (``[S, N]``)."""
    draws = per_draw.shape[0]
    if draws < 2 or per_draw.shape[1] == 0:
        return float("nan")
    total = torch.logsumexp(per_draw, 0)
    # Leave draw s out: log Σ_{t≠s} exp(a_t) = total + log(1 − exp(a_s − total)).
    left_out = total + torch.log1p(-torch.exp(per_draw - total).clamp(max=1 - 1e-7))
    means = (left_out - math.log(draws - 1)).mean(1)  # [S]
    return float(math.sqrt((draws - 1) / draws * float((means - means.mean()).pow(2).sum())))


def global_sites(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
                 ) -> list[str]:
    """Names of the guide's latent sites outside the ``data`` plate (global latent variables),
    found by running the guide once on the first datapoint."""
    args = (x[:1],) if y is None else (x[:1], y[:1])
    with torch.no_grad(), vae.scoring():
        trace = poutine.trace(vae.guide).get_trace(*args)
    return [site["name"] for site in _sample_sites(trace) if not site["is_observed"]
            and not any(frame.name == "data" for frame in site["cond_indep_stack"])]


class GlobalsFixed:
    """A model with its global latent sites fixed at ``values`` and hidden from both programs,
    so that every site left lies in the ``data`` plate: what the per-datapoint diagnostics
    (the inference gaps, NUTS of p(z | x, G)) can measure. Every other attribute is the
    model's own; ``kl_weight`` and ``num_data`` are set on it."""

    def __init__(self, vae: torch.nn.Module, values: dict[str, torch.Tensor]):
        object.__setattr__(self, "_vae", vae)
        object.__setattr__(self, "values", values)
        names = list(values)
        object.__setattr__(self, "model", poutine.block(
            poutine.condition(vae.model, data=values), hide=names))
        object.__setattr__(self, "guide", poutine.block(
            poutine.condition(vae.guide, data=values), hide=names))

    def __getattr__(self, name: str):
        return getattr(self._vae, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._vae, name, value)


def fix_global_sites(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
                     ) -> tuple[torch.nn.Module | GlobalsFixed, dict[str, float]]:
    """``vae`` with its global latent sites (:func:`global_sites`) fixed at one draw from the
    guide (the current torch seed), and that draw as numbers (a site with several entries by
    its mean); ``vae`` itself and ``{}`` when it has none."""
    names = global_sites(vae, x, y)
    if not names:
        return vae, {}
    args = (x[:1],) if y is None else (x[:1], y[:1])
    with torch.no_grad(), vae.scoring():
        trace = poutine.trace(vae.guide).get_trace(*args)
    values = {name: trace.nodes[name]["value"].detach() for name in names}
    return GlobalsFixed(vae, values), {name: float(v.float().mean()) for name, v in values.items()}


def _estimate_with_global_sites(vae: torch.nn.Module, x: torch.Tensor, names: list[str],
                                num_samples: int, max_chunk: int,
                                progress: Callable[[int], None] | None,
                                y: torch.Tensor | None) -> LogLikelihoodEstimate:
    """log (1/S) Σ_s p̂(x | G_s) with G_s ~ q(G): see :func:`estimate_log_likelihood`."""
    draws = min(num_samples, max(10, num_samples // SAMPLES_PER_WEIGHT_DRAW))
    per_draw = num_samples // draws
    args = (x[:1],) if y is None else (x[:1], y[:1])
    log_likelihoods, elbos = [], []
    for draw in range(draws):
        with vae.scoring():
            trace = poutine.trace(vae.guide).get_trace(*args)
        values = {name: trace.nodes[name]["value"] for name in names}
        # Both programs see G_s as given, and the per-datapoint scorer does not see G's sites.
        model = poutine.block(poutine.condition(vae.model, data=values), hide=names)
        guide = poutine.block(poutine.condition(vae.guide, data=values), hide=names)
        estimate = _score_given(vae, model, guide, x, per_draw, max_chunk,
                                progress if draw == draws - 1 else None, y)
        log_likelihoods.append(estimate.log_likelihood)
        elbos.append(estimate.elbo)
    per_draw_estimates = torch.stack(log_likelihoods)  # [S, N]
    log_likelihood = torch.logsumexp(per_draw_estimates, 0) - math.log(draws)
    # All datapoints share the S draws G_s: the jackknife over them, as for Bayesian weights.
    return LogLikelihoodEstimate(log_likelihood, torch.stack(elbos).mean(0), draws * per_draw,
                                 _jackknife_stderr(per_draw_estimates))


def _score_given(vae: torch.nn.Module, model: Callable, guide: Callable, x: torch.Tensor,
                 num_samples: int, max_chunk: int, progress: Callable[[int], None] | None,
                 y: torch.Tensor | None) -> LogLikelihoodEstimate:
    """Per-datapoint log p̂_K and ELBO of ``model`` with proposal ``guide`` (both local)."""
    data_chunk = max(1, min(len(x), max_chunk // num_samples))
    particle_chunk = max(1, min(num_samples, max_chunk // data_chunk))
    log_likelihoods, elbos, variances = [], [], []
    with vae.scoring():
        for start in range(0, len(x), data_chunk):
            batch = x[start: start + data_chunk]
            labels = () if y is None else (y[start: start + data_chunk],)
            log_sum_w = torch.full((len(batch),), -math.inf, device=x.device, dtype=x.dtype)
            log_sum_w2 = log_sum_w.clone()
            sum_log_w = torch.zeros(len(batch), device=x.device, dtype=x.dtype)
            for done in range(0, num_samples, particle_chunk):
                k = min(particle_chunk, num_samples - done)
                log_w = log_importance_weights(model, guide, batch, k, *labels)
                log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, dim=0))
                log_sum_w2 = torch.logaddexp(log_sum_w2, torch.logsumexp(2 * log_w, dim=0))
                sum_log_w += log_w.sum(0)
                if progress is not None and k < num_samples:  # a chance to stop mid-datapoint
                    progress(0)
            log_likelihoods.append(log_sum_w - math.log(num_samples))
            elbos.append(sum_log_w / num_samples)
            variances.append(_delta_method_variance(log_sum_w, log_sum_w2, num_samples))
            if progress is not None:
                progress(len(batch))
    variance = torch.cat(variances).cpu()
    return LogLikelihoodEstimate(torch.cat(log_likelihoods).cpu(), torch.cat(elbos).cpu(),
                                 num_samples, float(variance.sum().sqrt() / len(variance))
                                 if len(variance) else float("nan"))


@torch.no_grad()
def encode_means(vae: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000,
                 y: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(m(x), σ(x)) of q(z|x) (of q(z|x, y) given labels ``y``) for every row of ``x``,
    computed ``batch_size`` rows at a time, through the protocol's ``latent_mean(x)`` and
    ``posterior(x)`` (``posterior(x, y)`` given labels, whose mean is then m). σ is the
    standard deviation of a diagonal Gaussian q (``None`` for another family)."""
    locs, scales = [], []
    for start in range(0, len(x), batch_size):
        rows = x[start: start + batch_size]
        if y is None:
            loc, q = vae.latent_mean(rows), vae.posterior(rows)
        else:
            q = vae.posterior(rows, y[start: start + batch_size])
            loc = q.mean
        locs.append(loc)
        scales.append(_diagonal_scale(q))
    scale = None if any(s is None for s in scales) else torch.cat(scales)
    return torch.cat(locs), scale


def has_labelled_encoder(vae: torch.nn.Module) -> bool:
    """Whether the model's encoder takes the label too, ``encoder(x, y)`` (q(z|x, y))."""
    encoder = getattr(vae, "encoder", None)
    forward = getattr(encoder, "forward", None)
    if forward is None:
        return False
    parameters = [p for p in inspect.signature(forward).parameters.values()
                  if p.default is inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(parameters) >= 2


def gaussian_start(vae: torch.nn.Module, x: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The diagonal Gaussian (μ(x), σ(x)) that a per-image refit of q(z|x) starts from: the
    encoder's output for a model built from components (the base of its guide family: the
    low-rank and IAF guides of ``guides.py`` transform it), else q(z|x) itself where it is a
    diagonal Gaussian; ``None`` for any other q."""
    if getattr(vae, "family", None) is not None and hasattr(vae, "encoder"):
        if has_labelled_encoder(vae):  # q(z|x, y) (M2, the CVAE): no start from x alone
            return None
        return vae.encoder(x)
    loc, scale = encode_means(vae, x)
    return None if scale is None else (loc, scale)


def _diagonal_scale(q: torch.distributions.Distribution) -> torch.Tensor | None:
    """The per-dimension scale of a diagonal Gaussian ``Normal(loc, scale).to_event(1)``."""
    base = q.base_dist if isinstance(q, torch.distributions.Independent) else None
    return base.scale if isinstance(base, torch.distributions.Normal) else None


@torch.no_grad()
def monte_carlo_kl(vae: torch.nn.Module, x: torch.Tensor, num_samples: int = 16,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) ‖ p(z)) per row of ``x`` as (1/S) Σ_s [log q(z_s|x) − log p(z_s)], z_s ~ q.

    Works for any prior and for several latent sites (the two-layer model's p(z1|z2) p(z2)).
    For a model with global latent sites G (a hyperprior, Bayesian weights) it is the KL of
    the local code given one draw G ~ q(G): KL(q(z|x, G) ‖ p(z|G)).
    """
    args = (x,) if y is None else (x, y)
    model, guide = vae.model, vae.guide
    with vae.scoring(), _any_weights(vae):
        # inside _any_weights: a Bayesian decoder's weights are fixed there, not global sites
        names = global_sites(vae, x, y) if len(x) else []
        if names:
            model, guide = _given_globals(vae, names, args)
        traces = run_particles(model, guide, num_samples, args, {}, who="the KL")
    shape = (traces.num_particles, traces.batch_size)
    log_prior = sum(site["fn"].log_prob(site["value"]).expand(shape)
                    for site in _sample_sites(traces.model) if not site["is_observed"])
    return (guide_log_density(traces) - log_prior).mean(0)


def _given_globals(vae: torch.nn.Module, names: list[str], args: tuple
                   ) -> tuple[Callable, Callable]:
    """Model and guide with the global sites ``names`` fixed at one draw from the guide and
    hidden, so that what remains is local to the ``data`` plate."""
    first = tuple(a[:1] for a in args)
    trace = poutine.trace(vae.guide).get_trace(*first)
    values = {name: trace.nodes[name]["value"] for name in names}
    return (poutine.block(poutine.condition(vae.model, data=values), hide=names),
            poutine.block(poutine.condition(vae.guide, data=values), hide=names))


@torch.no_grad()
def latent_activity(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
                    ) -> dict[str, object]:
    """Active units (Cov_x(E_q[z_u]) > 0.01), the mean KL(q(z_u|x) ‖ p(z_u)) per dimension
    where the prior splits over dimensions, and the mean total KL(q(z|x) ‖ p(z)) (closed form
    where there is one, else Monte Carlo with 16 draws per point); of q(z|x, y) for an
    encoder that takes labels ``y``."""
    if hasattr(vae, "latent_activity"):  # a model with its own latent code (discrete)
        return vae.latent_activity(x, y)
    loc, scale = encode_means(vae, x, y=y)
    activity = loc.var(dim=0, unbiased=True) if len(x) > 1 else torch.zeros(loc.shape[-1])
    closed_form = getattr(vae, "kl_per_dim", None)  # optional (see pyro_vae.protocol)
    kl = None if scale is None or closed_form is None or global_sites(vae, x[:1], y) \
        else closed_form(loc, scale)
    if kl is not None:
        total = float(kl.sum(-1).mean())
    else:
        total = float(torch.cat([
            monte_carlo_kl(vae, x[start: start + 500],
                           y=None if y is None else y[start: start + 500])
            for start in range(0, len(x), 500)]).mean())
    return {
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
        "activity_per_dim": [round(float(a), 6) for a in activity],
        "kl": round(total, 6),
        "kl_per_dim": None if kl is None else [round(float(k), 6) for k in kl.mean(0)],
    }
