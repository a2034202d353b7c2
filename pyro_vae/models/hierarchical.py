"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016, §5).

Generative model, per datapoint in the ``data`` plate::

    z2 ~ N(0, I)
    z1 ~ N(μ_p(z2), diag σ_p(z2)²)
    x  ~ p(x | decoder(z1))

Guide, in the opposite direction::

    z1 ~ q(z1 | x)  = N(μ(x), diag σ(x)²)
    z2 ~ q(z2 | z1) = N(μ_q(z1), diag σ_q(z1)²)

The paper's MNIST model: x–z1 nets 784-100-100 (z1: 100), z1–z2 nets 100-50-50 (z2: 50), tanh.
Because q(z2|z1) depends on z1, this guide is not mean-field: objectives that need independent
guide sites (``meanfield``, ``dreg``, ``stl``) are refused when the recipe is read.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.likelihoods import Likelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import MLPEncoder
from pyro_vae.params import register_module
from pyro_vae.priors import StandardNormalPrior


class HierarchicalVAE(VAE):
    """Two latent sites, ``z1`` (next to x) and ``z2`` (the top), with a N(0, I) prior on z2.

    ``encoder`` gives q(z1|x), ``decoder`` p(x|z1); ``upper_encoder`` gives q(z2|z1) and
    ``upper_decoder`` p(z1|z2), both as (loc, scale).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, upper_encoder: nn.Module,
                 upper_decoder: nn.Module, top_latent_dim: int, likelihood: Likelihood,
                 num_data: int | None = None):
        super().__init__(encoder, decoder, StandardNormalPrior(top_latent_dim), likelihood,
                         num_data)
        self.upper_encoder = upper_encoder
        self.upper_decoder = upper_decoder

    @classmethod
    def build(cls, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood,
              config: ModelConfig, num_data: int | None = None, top_latent_dim: int = 50,
              top_hidden_dims: list[int] | None = None) -> "HierarchicalVAE":
        """The z1–z2 nets of ``top_hidden_dims`` ([50, 50]) around a z2 of
        ``top_latent_dim``, with ``config``'s activation and encoder scale."""
        hidden = list(top_hidden_dims if top_hidden_dims is not None else [50, 50])
        upper_encoder = MLPEncoder(config.latent_dim, top_latent_dim, hidden,
                                   config.activation, config.encoder_scale)
        upper_decoder = MLPEncoder(top_latent_dim, config.latent_dim, list(reversed(hidden)),
                                   config.activation, config.encoder_scale)
        return cls(encoder, decoder, upper_encoder, upper_decoder, top_latent_dim,
                   likelihood, num_data)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                z2 = pyro.sample("z2", self.prior(x.shape[:1], x.device, x.dtype))
                loc, scale = self.upper_decoder(z2)
                z1 = pyro.sample("z1", dist.Normal(loc, scale, validate_args=False).to_event(1))
            return pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                z1 = pyro.sample("z1", self.posterior(x))
                loc, scale = self.upper_encoder(z1)
                return pyro.sample("z2", dist.Normal(loc, scale,
                                                     validate_args=False).to_event(1))

    def generate(self, num_samples: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z1, decoder output) for z2 ~ p(z2), z1 ~ p(z1|z2)."""
        prior = self.prior(torch.Size([num_samples]), torch.device(device), torch.float32)
        loc, scale = self.upper_decoder(prior.sample())
        z1 = dist.Normal(loc, scale).sample()
        return z1, self.decoder(z1)

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """No closed form: p(z1) is a continuous mixture over z2."""
        return None
