"""A VAE with a Bayesian decoder: priors on the decoder's weights, a mean-field guide for them.

Generative model, with W the decoder weights chosen (all layers, or the last)::

    W ~ p(W) = N(0, s² I)                        once, outside the data plate (a global site)
    z_n ~ p(z),  x_n ~ p(x | decoder_W(z_n))    for each datapoint n in the data plate

Guide: q(W) = N(m, diag σ²) (mean-field, learned m and σ) and the amortized q(z_n | x_n). The
ELBO is E_q[log p(x|z, W)] − KL(q(z|x) ‖ p(z)) summed over the data, minus KL(q(W) ‖ p(W))
once: because the weight sites lie outside the ``data`` plate, Pyro scales only the local terms
by N/B, so a minibatch loss estimates this whole-data ELBO (Blundell et al. 2015, "Weight
Uncertainty in Neural Networks"). Objectives that reduce per datapoint (IWAE, DReG, STL, Rényi,
score) have no per-datapoint share of a global site and are refused with a clear error.

The decoder is a ``PyroModule`` whose chosen weights are ``PyroSample`` attributes carrying
their prior: called inside any Pyro program it draws them. The model names the draws
``decoder.<layer>.<weight|bias>`` outside the data plate and hands them to the decoder, which
runs under ``poutine.condition`` with its own sites hidden. :meth:`BayesianVAE.using_weights`
fixes W (a posterior draw, or the posterior mean) so the model and guide become those of a
plain VAE with that decoder, which is how evaluation, pictures and posterior predictive checks
use it. Test log-likelihood is the posterior predictive log p(x | data) ≈
log (1/S) Σ_s p̂(x | W_s), W_s ~ q(W) (see :func:`pyro_vae.evaluate.estimate_log_likelihood`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import Likelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import output_bias_start, output_layer
from pyro_vae.params import register_module
from pyro_vae.priors import Prior

BAYESIAN_LAYERS = ("none", "last", "all")
SITE_PREFIX = "decoder."
#: Initial posterior standard deviation of each weight (small: start near the point estimate).
INITIAL_WEIGHT_SCALE = 1e-3


class WeightPosterior(nn.Module):
    """q(W) = Π_i N(m_i, σ_i²) for named weight tensors, σ = softplus(ρ)."""

    def __init__(self, initial: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(initial)
        self.loc = nn.ParameterList(nn.Parameter(value.detach().clone())
                                    for value in initial.values())
        raw = math.log(math.expm1(INITIAL_WEIGHT_SCALE))
        self.raw_scale = nn.ParameterList(nn.Parameter(torch.full_like(value, raw))
                                          for value in initial.values())

    def distributions(self) -> dict[str, dist.TorchDistribution]:
        return {name: dist.Normal(loc, nn.functional.softplus(raw)).to_event(loc.dim())
                for name, loc, raw in zip(self.names, self.loc, self.raw_scale)}

    def mean(self) -> dict[str, torch.Tensor]:
        return {name: loc.detach() for name, loc in zip(self.names, self.loc)}


def _linear_layers(decoder: nn.Module) -> list[tuple[str, nn.Module]]:
    layers = [(name, module) for name, module in decoder.named_modules()
              if isinstance(module, (nn.Linear, nn.ConvTranspose2d, nn.Conv2d))]
    if not layers:
        raise ConfigError("a Bayesian decoder needs a decoder with linear or convolutional "
                          "layers; this one has none.")
    return layers


class BayesianVAE(VAE):
    """A :class:`~pyro_vae.models.VAE` whose decoder weights (``layers`` = ``"all"`` or
    ``"last"``) have a N(0, ``weight_prior_scale``²) prior and a mean-field Gaussian guide."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior,
                 likelihood: Likelihood, num_data: int | None = None, layers: str = "all",
                 weight_prior_scale: float = 1.0, family: nn.Module | None = None):
        super().__init__(encoder, decoder, prior, likelihood, num_data, family)
        chosen = _linear_layers(decoder)
        if layers == "last":
            chosen = chosen[-1:]
        initial: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, torch.Size] = {}
        to_pyro_module_(self.decoder)
        for layer_name, layer in chosen:
            for attribute in ("weight", "bias"):
                value = getattr(layer, attribute)
                if value is None:
                    continue
                name = f"{layer_name}.{attribute}"
                initial[name] = value.detach().clone()
                self._shapes[name] = value.shape
                delattr(layer, attribute)
                setattr(layer, attribute, PyroSample(self._weight_prior(name)))
        self.weight_prior_scale = weight_prior_scale
        #: Its global weight sites take no particle dimension (the protocol's attribute).
        self.vectorize_particles = False
        self.weight_posterior = WeightPosterior(initial)
        self.fixed_weights: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def start_output_bias(self, x: torch.Tensor) -> torch.Tensor:
        """As :meth:`VAE.start_output_bias`; a Bayesian output bias starts its posterior mean
        there (its prior stays N(0, s² I))."""
        layer = output_layer(self.decoder)
        name = next(name for name, module in self.decoder.named_modules() if module is layer)
        names = self.weight_posterior.names
        if f"{name}.bias" not in names:  # the output layer is not Bayesian
            return super().start_output_bias(x)
        loc = self.weight_posterior.loc[names.index(f"{name}.bias")]
        pixel_mean = self._pixel_mean(x)
        start = self.likelihood.output_start
        value = output_bias_start(start(pixel_mean), loc.shape, pixel_mean, start)
        loc.copy_(value)
        return value

    # -- the prior p(W), attached to the decoder as PyroSample statements ---------------------
    def _weight_prior(self, name: str):
        def prior(_module: nn.Module) -> dist.TorchDistribution:
            return self.weight_prior(name)
        return prior

    def weight_prior(self, name: str) -> dist.TorchDistribution:
        """p(W_name) = N(0, s² I) on the device of the guide's parameters."""
        loc = self.weight_posterior.loc[self.weight_posterior.names.index(name)]
        zeros = torch.zeros(self._shapes[name], device=loc.device, dtype=loc.dtype)
        return dist.Normal(zeros, self.weight_prior_scale).to_event(zeros.dim())

    @property
    def weight_names(self) -> list[str]:
        """The decoder's own names of its Bayesian weights (e.g. ``net.4.weight``)."""
        return list(self.weight_posterior.names)

    # -- model and guide ----------------------------------------------------------------------
    def _decode_with(self, weights: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """The decoder with its PyroSample weights set to ``weights`` (its sites hidden)."""
        with poutine.block(hide=list(weights)), poutine.condition(data=weights):
            return self.decoder(z)

    def _sample_weights(self, guide: bool) -> dict[str, torch.Tensor]:
        if self.fixed_weights is not None:
            return self.fixed_weights
        source = self.weight_posterior.distributions() if guide else \
            {name: self.weight_prior(name) for name in self.weight_names}
        return {name: pyro.sample(SITE_PREFIX + name, fn) for name, fn in source.items()}

    def model(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """p(W) Π_n p(z_n) p(x_n | z_n, W); with ``x=None``, ``num_samples`` new images."""
        register_module("vae", self)
        weights = self._sample_weights(guide=False)
        if x is None:
            with pyro.plate("data", num_samples, dim=-1):
                loc = self.weight_posterior.loc[0]
                z = pyro.sample("z", self.prior(torch.Size([num_samples]), loc.device,
                                                loc.dtype))
                return pyro.sample("x", self.likelihood(self._decode_with(weights, z)))
        with self._data_plate(x):
            with self._kl_scale():
                z = pyro.sample("z", self.prior(x.shape[:1], x.device, x.dtype))
            return pyro.sample("x", self.likelihood(self._decode_with(weights, z)), obs=x)

    def guide(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
              num_samples: int = 1) -> torch.Tensor | None:
        """q(W) Π_n q(z_n | x_n); with ``x=None`` only q(W) (for posterior predictives)."""
        register_module("vae", self)
        self._sample_weights(guide=True)
        if x is None:
            return None
        with self._data_plate(x):
            with self._kl_scale():
                return pyro.sample("z", self.posterior(x))

    # -- fixed weights: evaluation, pictures, posterior draws ---------------------------------
    @contextlib.contextmanager
    def using_weights(self, weights: dict[str, torch.Tensor] | None = None
                      ) -> Iterator["BayesianVAE"]:
        """Model and guide with W fixed to ``weights`` (default: the posterior mean)."""
        saved = self.fixed_weights
        self.fixed_weights = weights if weights is not None else self.weight_posterior.mean()
        try:
            yield self
        finally:
            self.fixed_weights = saved

    @torch.no_grad()
    def sample_weights(self) -> dict[str, torch.Tensor]:
        """One draw W ~ q(W)."""
        return {name: fn.sample() for name, fn in self.weight_posterior.distributions().items()}

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder at the fixed weights, else at the posterior mean."""
        weights = self.fixed_weights or self.weight_posterior.mean()
        return self._decode_with(weights, z)

    def weight_kl(self) -> torch.Tensor:
        """KL(q(W) ‖ p(W)) in closed form (both Gaussian)."""
        return sum(torch.distributions.kl_divergence(q, self.weight_prior(name))
                   for name, q in self.weight_posterior.distributions().items())


@torch.no_grad()
def weight_posterior_draws(vae: BayesianVAE, num_chains: int = 2, num_draws: int = 200,
                           max_entries: int = 1000) -> dict[str, torch.Tensor]:
    """Draws W ~ q(W) as ``{site name: [chain, draw, entry]}`` for ArviZ.

    Each weight tensor is flattened (row-major) and cut to its first ``max_entries`` entries,
    so a 200 × 784 layer does not become gigabytes of netCDF; biases are usually whole.
    """
    draws: dict[str, torch.Tensor] = {}
    for name, q in vae.weight_posterior.distributions().items():
        sample = q.sample((num_chains, num_draws))
        draws[SITE_PREFIX + name] = sample.reshape(num_chains, num_draws, -1)[..., :max_entries]
    return draws
