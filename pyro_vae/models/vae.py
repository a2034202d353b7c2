"""The model kind ``vae``: p(z) p(x|z) from the registered networks, likelihood, prior and guide.

Its own module (not :mod:`pyro_vae.models.base`) because it chooses among the VAE classes that
build on :class:`pyro_vae.models.base.VAE` (two stochastic layers, a Bayesian decoder), so
imports go one way: base <- hierarchical, bayesian <- vae.
"""

from __future__ import annotations

from pyro_vae.models.bayesian import BayesianVAE
from pyro_vae.config import ModelConfig
from pyro_vae.guides import build_guide
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import build_networks
from pyro_vae.priors import build_prior
from pyro_vae.registry import MODEL_KINDS, BuildContext, KindHooks


@MODEL_KINDS.register("vae", help="p(z) p(x|z) with any registered prior, guide, likelihood",
                      capabilities={"components", "pictures", "latent_means",
                                    "estimator_lab"},
                      hooks=KindHooks(display_name="VAE"))
def build_plain_vae(config: ModelConfig, image_shape: tuple[int, int, int],
                    num_data: int | None = None) -> VAE:
    """The VAE of kind ``vae``: networks, likelihood, prior and guide from the registries
    (two stochastic layers or a Bayesian decoder where the configuration asks for them)."""
    encoder, decoder = build_networks(config.network, image_shape, config.latent_dim,
                                      config.hidden_dims, config.activation, config.encoder_scale,
                                      config.options_of("network"))
    likelihood = build_likelihood(config.likelihood, config.gaussian_scale,
                                  config.options_of("likelihood"))
    if config.stochastic_layers == 2:
        return HierarchicalVAE.build(encoder, decoder, likelihood, config, num_data)
    context = BuildContext(tuple(image_shape), num_data, encoder)
    prior = build_prior(config, context)
    family = build_guide(config, context)
    if config.bayesian_decoder != "none":
        return BayesianVAE(encoder, decoder, prior, likelihood, num_data,
                           config.bayesian_decoder, config.weight_prior_scale, family=family)
    return VAE(encoder, decoder, prior, likelihood, num_data, family)
