"""The model kind ``vae``: p(z) p(x|z) from the registered networks, likelihood, prior and guide.

Its own module (not :mod:`pyro_vae.models.base`) because it chooses among the VAE classes that
build on :class:`pyro_vae.models.base.VAE` (two stochastic layers, a Bayesian decoder), so
imports go one way: base <- hierarchical, bayesian <- vae.

Its options, in the recipe's ``[kind]`` table (:data:`OPTIONS`): ``stochastic_layers`` (1, or
2 for the hierarchical model z2 → z1 → x of Burda et al. 2016, whose z2 and the nets between
them ``top_latent_dim`` and ``top_hidden_dims`` describe) and ``bayesian_decoder`` (priors on
the decoder's weights with a mean-field guide: ``none``, the ``last`` layer or ``all``, each
weight N(0, ``weight_prior_scale``²)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_vae.models.bayesian import BayesianVAE
from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.guides import build_guide
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import build_networks
from pyro_vae.options import Option, positive
from pyro_vae.priors import build_prior
from pyro_vae.registry import MODEL_KINDS, OBJECTIVES, BuildContext, KindHooks

if TYPE_CHECKING:
    from pyro_vae.config import Config

OPTIONS = {
    "stochastic_layers": Option(1, "1, or 2 for the hierarchical model z2 → z1 → x of Burda "
                                "et al. (2016); latent_dim is then the size of z1",
                                choices=(1, 2), legacy="stochastic_layers"),
    "top_latent_dim": Option(50, "size of z2 (stochastic_layers = 2)", check=positive,
                             legacy="top_latent_dim"),
    "top_hidden_dims": Option([50, 50], "hidden layers of the nets between z1 and z2 "
                              "(stochastic_layers = 2)", items=int, check=positive,
                              legacy="top_hidden_dims"),
    "bayesian_decoder": Option("none", "priors on decoder weights with a mean-field guide: "
                               "none, the last layer or all", choices=("none", "last", "all"),
                               legacy="bayesian_decoder"),
    "weight_prior_scale": Option(1.0, "standard deviation s of the N(0, s²) prior on each "
                                 "Bayesian decoder weight", check=positive,
                                 legacy="weight_prior_scale"),
}


def check(config: "Config") -> None:
    """The kind ``vae``'s own checks: two stochastic layers are built from MLPs with the
    diagonal guide and the N(0, I) top prior, and need an objective for dependent latent
    sites; a Bayesian decoder is built on one layer and needs an objective for global
    latent variables."""
    options = config.model.options_of("kind")
    two_layers, bayesian = options["stochastic_layers"] == 2, options["bayesian_decoder"]
    if not two_layers and (options["top_latent_dim"] != 50
                           or options["top_hidden_dims"] != [50, 50]):
        raise ConfigError("[kind] top_latent_dim and top_hidden_dims describe the second "
                          "stochastic layer; set [kind] stochastic_layers = 2 or remove them.")
    if bayesian == "none" and options["weight_prior_scale"] != 1.0:
        raise ConfigError("[kind] weight_prior_scale is only used with bayesian_decoder = "
                          "\"last\" or \"all\", which this recipe does not set; remove "
                          "weight_prior_scale or set the option it belongs to.")
    if two_layers:
        _check_two_layers(config)
    objective = OBJECTIVES.capabilities(config.train.objective)
    if bayesian != "none" and "global_latents" not in objective:
        raise ConfigError(
            f"[train] objective = \"{config.train.objective}\" is reduced per datapoint, but "
            "this model's Bayesian decoder weights are one global latent variable shared by "
            "all datapoints, with no per-datapoint share of its KL. Use objective = "
            f"{OBJECTIVES.names_with('global_latents')}, or [kind] bayesian_decoder = \"none\".")
    if bayesian != "none" and two_layers:
        raise ConfigError("[kind] bayesian_decoder is built for the one-layer model; set "
                          "stochastic_layers = 1 or bayesian_decoder = \"none\".")


def _check_two_layers(config: "Config") -> None:
    model = config.model
    if model.network != "mlp":
        raise ConfigError("[kind] stochastic_layers = 2 is built from MLPs; set [model] "
                          "network = \"mlp\".")
    if model.guide != "diagonal":
        raise ConfigError(f"[model] guide = \"{model.guide}\" is for the one-layer model; "
                          "with stochastic_layers = 2 the guide is q(z1|x) q(z2|z1) of "
                          "diagonal Gaussians. Set guide = \"diagonal\" or stochastic_layers "
                          "= 1.")
    if model.prior != "normal":
        raise ConfigError(
            f"[model] prior = \"{model.prior}\" is for the one-layer model; with "
            "stochastic_layers = 2 the prior is already hierarchical, p(z1|z2) p(z2) with "
            "p(z2) = N(0, I). Set prior = \"normal\" or stochastic_layers = 1.")
    if config.train.free_bits > 0:
        raise ConfigError("[train] free_bits works per latent dimension of the one-layer "
                          "model; with stochastic_layers = 2 use beta or kl_warmup_epochs "
                          "against collapse, or free_bits = 0.")
    if "needs_independent_latents" in OBJECTIVES.capabilities(config.train.objective):
        raise ConfigError(
            f"[train] objective = \"{config.train.objective}\" needs a guide whose latent "
            "sites do not depend on one another, but the two-layer model's q(z2|z1) depends "
            "on z1. Use an objective without that need ("
            f"{OBJECTIVES.names_with('needs_independent_latents', False)}) with "
            "stochastic_layers = 2.")


@MODEL_KINDS.register("vae", help="p(z) p(x|z) with any registered prior, guide, likelihood",
                      capabilities={"components", "pictures", "latent_means",
                                    "estimator_lab"},
                      hooks=KindHooks(display_name="VAE", check=check), options=OPTIONS)
def build_plain_vae(config: ModelConfig, image_shape: tuple[int, int, int],
                    num_data: int | None = None) -> VAE:
    """The VAE of kind ``vae``: networks, likelihood, prior and guide from the registries
    (two stochastic layers or a Bayesian decoder where ``[kind]`` asks for them)."""
    options = config.options_of("kind")
    encoder, decoder = build_networks(config.network, image_shape, config.latent_dim,
                                      config.hidden_dims, config.activation, config.encoder_scale,
                                      config.options_of("network"))
    context = BuildContext(tuple(image_shape), num_data, encoder)
    likelihood = build_likelihood(config, context)
    if options["stochastic_layers"] == 2:
        return HierarchicalVAE.build(encoder, decoder, likelihood, config, num_data,
                                     options["top_latent_dim"], options["top_hidden_dims"])
    prior = build_prior(config, context)
    family = build_guide(config, context)
    if options["bayesian_decoder"] != "none":
        return BayesianVAE(encoder, decoder, prior, likelihood, num_data,
                           options["bayesian_decoder"], options["weight_prior_scale"],
                           family=family)
    return VAE(encoder, decoder, prior, likelihood, num_data, family)
