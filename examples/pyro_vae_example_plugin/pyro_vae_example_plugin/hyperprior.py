"""A hierarchical prior with a global hyperprior: the scale of p(z) is itself a latent variable.

    s ~ LogNormal(0, 1)                       (one scale shared by every datapoint: global)
    z_n | s ~ N(0, s² I)                      (in the ``data`` plate)
    x_n | z_n ~ p(x | decoder(z_n))

Guide: q(s) = LogNormal(m, τ) with learned m and τ (outside the plate), and the amortized
q(z_n | x_n) of the VAE. The site ``s`` lies outside the ``data`` plate, so only the objectives
that handle global latent variables train it (``elbo``, ``meanfield``): its KL term is counted
once per dataset, not once per datapoint. Nothing else is needed: the scores average over draws
of s, and active units and the collapse check measure the local code z given a draw of s.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.guides import build_guide
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models import VAE, data_plate, kl_scale
from pyro_vae.networks import build_networks
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.registry import MODEL_KINDS, BuildContext, KindHooks


class HyperpriorVAE(VAE):
    """The VAE above: ``prior`` is N(0, I), scaled by the global draw of s."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale_loc = nn.Parameter(torch.tensor(0.0))
        self.raw_scale_spread = nn.Parameter(torch.tensor(-2.0))

    def scale_posterior(self) -> dist.TorchDistribution:
        """q(s) = LogNormal(m, τ)."""
        return dist.LogNormal(self.scale_loc, nn.functional.softplus(self.raw_scale_spread))

    def model(self, x, y=None):
        pyro.module("hyperprior_vae", self)
        s = pyro.sample("s", dist.LogNormal(torch.zeros((), device=x.device), 1.0))
        # s[..., None] broadcasts against [B, D]: with vectorized particles (iwae-style
        # estimators, the lab's K) a draw of s carries a particle dimension on its left.
        loc = torch.zeros(len(x), self.latent_dim, device=x.device)
        with data_plate(x, self.num_data):
            with kl_scale(self.kl_weight):
                z = pyro.sample("z", dist.Normal(loc, s[..., None]).to_event(1))
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x, y=None):
        pyro.module("hyperprior_vae", self)
        pyro.sample("s", self.scale_posterior())
        with data_plate(x, self.num_data):
            with kl_scale(self.kl_weight):
                return pyro.sample("z", self.posterior(x))

    def generate(self, num_samples, device="cpu"):
        """(z, decoder output) for z ~ p(z | s), s at the median of q(s)."""
        s = self.scale_loc.exp()  # the median of q(s)
        z = s * torch.randn(num_samples, self.latent_dim, device=device)
        return z, self.decoder_output(z)

    def kl_per_dim(self, loc, scale):
        """None: p(z) depends on the global s, so the KL is estimated given draws of s."""
        return None


@MODEL_KINDS.register("hyperprior_vae", help="z ~ N(0, s^2 I) with a global LogNormal s",
                      capabilities={"pictures", "latent_means", "estimator_lab"},
                      hooks=KindHooks(display_name="VAE with a hyperprior on the prior's scale"))
def build(config, image_shape, num_data=None):
    encoder, decoder = build_networks(config.network, image_shape, config.latent_dim,
                                      config.hidden_dims, config.activation,
                                      config.encoder_scale)
    likelihood = build_likelihood(config, BuildContext(tuple(image_shape), num_data))
    family = build_guide(config, BuildContext(tuple(image_shape), num_data, encoder))
    return HyperpriorVAE(encoder, decoder, StandardNormalPrior(config.latent_dim), likelihood,
                         num_data, family)
