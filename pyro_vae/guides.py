"""Variational families q(z|x): each is one class that turns the encoder's output into a
distribution over the latent code, registered by name like priors and likelihoods.

The encoder maps x to (μ(x), σ(x)); the guide component builds q(z|x) from them:

============  ==========================================================================
``diagonal``  q(z|x) = N(μ, diag σ²), z = μ + σ ⊙ ε (the classic VAE; closed-form KL per
              dimension against N(0, I), so free bits and the analytic KL apply)
``lowrank``   q(z|x) = N(μ, diag σ² + F Fᵀ), F = F(μ, log σ) a D × r factor from a small
              network (``[guide] rank`` r, default 2); ``dist.LowRankMultivariateNormal``
``iaf``       an inverse autoregressive flow (Kingma et al. 2016): ε ~ N(μ, diag σ²), then
              ``[guide] layers`` affine autoregressive layers z ← m(z; h) + s(z; h) ⊙ z whose
              networks see the context h = (μ, log σ); ``pyro.distributions.transforms.
              conditional_affine_autoregressive``, with the coordinates reversed between
              layers (and back), each layer starting at the identity
============  ==========================================================================

Every guide is reparameterized, so every objective trains it. DReG and STL evaluate log q with
the guide's parameters held fixed (``pyro.distributions.util.detach`` copies the distribution,
the flow's networks included, with detached tensors), so the gradient reaches the guide only
through z; for the flow this evaluates log q(z) at a value that is not the flow's cached
output, which inverts the flow (one network pass per latent dimension).

``latent_mean(loc, scale)`` is the point that pictures, latent maps and active units use: the
mean μ for the Gaussian families, the flow applied to μ for the IAF (its mean has no closed
form).
"""

from __future__ import annotations

import dataclasses

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.options import Option, positive
from pyro_vae.registry import GUIDES, BuildContext


class Guide(nn.Module):
    """Base class: ``forward(loc, scale)`` gives q(z|x) ``[B]`` with one event dimension."""

    #: Whether q factorizes over latent dimensions as N(μ, diag σ²) (closed-form KL per
    #: dimension, free bits).
    diagonal = False

    def forward(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def latent_mean(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """A representative point of q(z|x) (its mean where that has a closed form)."""
        return loc


class DiagonalGaussianGuide(Guide):
    """q(z|x) = N(μ, diag σ²)."""

    diagonal = True

    def forward(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, scale, validate_args=False).to_event(1)


def _context(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.cat([loc, scale.log()], -1)


class LowRankGaussianGuide(Guide):
    """q(z|x) = N(μ, diag σ² + F Fᵀ) with a D × r factor F computed from (μ, log σ).

    The factor network's last layer starts near zero (small random weights, zero bias), so
    training starts close to the diagonal guide; exactly zero would be a stationary point of
    log q in F, which a score-function gradient would never leave.
    """

    def __init__(self, latent_dim: int, rank: int = 2, hidden_dim: int | None = None):
        super().__init__()
        self.latent_dim, self.rank = latent_dim, rank
        hidden = hidden_dim or max(32, 4 * latent_dim)
        self.factor = nn.Sequential(nn.Linear(2 * latent_dim, hidden), nn.Tanh(),
                                    nn.Linear(hidden, latent_dim * rank))
        nn.init.normal_(self.factor[-1].weight, std=1e-2)
        nn.init.zeros_(self.factor[-1].bias)

    def forward(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        factor = self.factor(_context(loc, scale)).reshape(*loc.shape, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, scale.pow(2), validate_args=False)


class IAFGuide(Guide):
    """ε ~ N(μ, diag σ²) pushed through ``layers`` conditional affine autoregressive layers."""

    def __init__(self, latent_dim: int, layers: int = 2, hidden_dims: list[int] | None = None):
        super().__init__()
        if latent_dim < 2:
            raise ConfigError("guide = \"iaf\" is an autoregressive flow over the latent "
                              "dimensions and needs latent_dim ≥ 2; use guide = \"diagonal\" "
                              "for a one-dimensional code.")
        hidden = list(hidden_dims or [max(32, 4 * latent_dim)])
        self.layers = nn.ModuleList(
            T.conditional_affine_autoregressive(latent_dim, 2 * latent_dim, hidden_dims=hidden)
            for _ in range(layers))
        for layer in self.layers:  # start at the identity: q = N(μ, diag σ²)
            last = layer.nn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def transforms(self, loc: torch.Tensor, scale: torch.Tensor
                   ) -> list[dist.transforms.Transform]:
        context = _context(loc, scale)
        flow: list[dist.transforms.Transform] = []
        for i, layer in enumerate(self.layers):
            if i:
                flow.append(T.Permute(self.reverse))
            flow.append(layer.condition(context))
        if len(self.layers) % 2 == 0:  # reverse back: an identity start is N(μ, diag σ²)
            flow.append(T.Permute(self.reverse))
        return flow

    def forward(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, self.transforms(loc, scale),
                                            validate_args=False)

    def latent_mean(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        z = loc
        for transform in self.transforms(loc, scale):
            z = transform(z)
        return z


@GUIDES.register("diagonal", help="N(mu, diag sigma^2)", capabilities={"diagonal"})
def _diagonal(config: ModelConfig, context: BuildContext) -> Guide:
    return DiagonalGaussianGuide()


@GUIDES.register("lowrank", help="N(mu, diag sigma^2 + F F^T), rank [guide] rank (default 2)",
                 options={"rank": Option(2, "rank r of the covariance factor F",
                                         check=positive, legacy="guide_rank")})
def _lowrank(config: ModelConfig, context: BuildContext) -> Guide:
    return LowRankGaussianGuide(config.latent_dim, context.options.get("rank", 2))


@GUIDES.register("iaf", help="inverse autoregressive flow of [guide] layers (default 4)",
                 capabilities={"flow_layers", "min_latent_dim_2"},
                 options={"layers": Option(4, "autoregressive layers", check=positive,
                                           legacy="flow_layers")})
def _iaf(config: ModelConfig, context: BuildContext) -> Guide:
    return IAFGuide(config.latent_dim, context.options.get("layers", 4))


def build_guide(config: ModelConfig, context: BuildContext) -> Guide:
    """The guide component that ``config.guide`` names (any registered one), given its
    options in ``context.options``."""
    context = dataclasses.replace(context, options=config.options_of("guide"))
    return GUIDES.get(config.guide)(config, context)
