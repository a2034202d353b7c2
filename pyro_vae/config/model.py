"""The ``[model]`` table of a recipe: the model kind and its prior, guide, likelihood and
networks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyro_vae.config.checks import (ACTIVATIONS, ENCODER_SCALES, MAX_CODE_UNITS, _choice,
                                    _positive, _registered)
from pyro_vae.errors import ConfigError
from pyro_vae.options import resolve_options
from pyro_vae.registry import GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, PRIORS

#: The roles of the ``[model]`` table whose components may own options, with their registries;
#: the key of ``[model]`` naming the component is the role's name.
MODEL_ROLES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS,
               "network": NETWORKS, "kind": MODEL_KINDS}


@dataclass
class ModelConfig:
    """The networks, the latent space and the likelihood."""

    latent_dim: int = 8
    #: ``mlp`` or ``conv`` (a small convolutional pair for square images, side divisible by 4).
    network: str = "mlp"
    hidden_dims: list[int] = field(default_factory=lambda: [128, 128])
    activation: str = "relu"
    #: How the encoder's second head becomes a standard deviation: ``softplus`` or ``logvar``.
    encoder_scale: str = "softplus"
    #: p(x|z): ``bernoulli``, ``continuous_bernoulli`` or ``gaussian`` (whose options,
    #: ``scale`` and ``standardize``, go in the ``[likelihood]`` table); plugins may add more.
    likelihood: str = "bernoulli"
    #: p(z): ``normal`` N(0, I), ``mixture`` of Gaussians, ``vamp`` (VampPrior) or ``flow``;
    #: their options (``components``, ``layers``) go in the ``[prior]`` table.
    prior: str = "normal"
    #: q(z|x): ``diagonal`` Gaussian, ``lowrank`` Gaussian (``[guide] rank``) or ``iaf``
    #: (inverse autoregressive flow of ``[guide] layers`` layers); plugins may add more.
    guide: str = "diagonal"
    #: ``vae``, ``cvae`` (label-conditional, needs labels) or ``m2`` (semi-supervised).
    kind: str = "vae"
    #: Number of labels 0..C−1 of ``cvae`` and ``m2`` models.
    num_classes: int = 10
    #: Quadrants given (1, 2 or 3) to the ``quadrant_*`` models, which predict the others.
    quadrants: int = 1
    #: ``quadrant_cvae``: what the generation network p(y|x, z) reads: ``given_and_z`` (the
    #: given pixels and z) or ``z`` (z only, as Pyro's tutorial).
    quadrant_generation: str = "given_and_z"
    #: ``quadrant_cvae``: a trained ``quadrant_baseline`` run whose prediction ŷ(x) fills the
    #: missing pixels of the prior network's input (Pyro's tutorial); "" for none.
    baseline_run: str = ""
    #: ``discrete`` models: K categorical latent variables of C ``categories`` each (C = 2:
    #: Bernoulli latents), with a ``uniform`` or ``learned`` prior.
    categorical_latents: int = 20
    categories: int = 10
    discrete_prior: str = "uniform"
    #: ``cvae``: ``"mmd"`` adds to the training objective λ · N · Σ_c (B_c/B) MMD²(q(z|y=c),
    #: p(z)), which pulls every class's aggregate posterior to the prior so that prior draws
    #: decode to the requested label (pyro_vae/objectives/label_independence.py); ``"none"``.
    label_independence: str = "none"
    #: λ of that penalty, per datapoint (used with ``label_independence = "mmd"``).
    label_independence_weight: float = 500.0
    #: ``cvae`` and ``m2`` MLP decoders: ``every_layer`` feeds one_hot(y) to every layer
    #: (a class template at the output); ``input`` only to the first, with z (Pyro's SS-VAE).
    decoder_label: str = "every_layer"
    #: The options of the model's components, by role (``prior``, ``guide``, ``likelihood``,
    #: ``network``, ``kind``), set from the recipe's tables of those names and checked against
    #: what each component declares (:mod:`pyro_vae.options`); not a key of ``[model]``.
    options: dict[str, dict] = field(default_factory=dict, compare=False)

    def options_of(self, role: str) -> dict:
        """The options of the component in ``role`` (``prior``, ``guide``, ``likelihood``,
        ``network`` or ``kind``): those set in the recipe's table of that role, checked
        against what the component declares, with its defaults filled in (``{}`` where it
        declares none)."""
        registry = MODEL_ROLES[role]
        name = getattr(self, role)
        if name not in registry:
            return dict(self.options.get(role, {}))
        return resolve_options(registry.entry(name).options, self.options.get(role, {}), role,
                               name)

    def validate(self) -> None:
        kind = _registered(MODEL_KINDS, self.kind)
        _choice("model", "decoder_label", self.decoder_label, ("every_layer", "input"))
        self._check_label_independence()
        self._check_quadrant_options()
        _positive("model", "categorical_latents", self.categorical_latents)
        if self.categories < 2:
            raise ConfigError(f"[model] categories = {self.categories!r}: a categorical "
                              "variable needs at least 2 classes (2 is a Bernoulli latent).")
        units = self.categorical_latents * self.categories
        if "categorical_latents" in kind and units > MAX_CODE_UNITS:
            raise ConfigError(
                f"[model] categorical_latents × categories = {self.categorical_latents} × "
                f"{self.categories} = {units} one-hot units, more than the {MAX_CODE_UNITS} "
                "a discrete model is built for: its encoder outputs every unit and its decoder "
                "reads them, with a weight per unit and hidden unit each. Use fewer latents or "
                "categories.")
        _choice("model", "discrete_prior", self.discrete_prior, ("uniform", "learned"))
        if self.quadrants not in (1, 2, 3):
            raise ConfigError(f"[model] quadrants = {self.quadrants!r}: give 1, 2 or 3 "
                              "quadrants; the model predicts the other 4 − quadrants.")
        _positive("model", "num_classes", self.num_classes)
        if "components" not in kind and self.network != "mlp":
            raise ConfigError(f"[model] kind = \"{self.kind}\" is built from MLPs; set network "
                              "= \"mlp\".")
        _positive("model", "latent_dim", self.latent_dim)
        _registered(NETWORKS, self.network)
        for size in self.hidden_dims:
            _positive("model", "hidden_dims", size)
        _choice("model", "activation", self.activation, ACTIVATIONS)
        _choice("model", "encoder_scale", self.encoder_scale, ENCODER_SCALES)
        _registered(LIKELIHOODS, self.likelihood)
        prior = _registered(PRIORS, self.prior)
        guide = _registered(GUIDES, self.guide)
        if "min_latent_dim_2" in prior and self.latent_dim < 2:
            raise ConfigError(f"[model] prior = \"{self.prior}\" is built from coupling layers "
                              "that need latent_dim ≥ 2; use prior = \"mixture\" for a 1-d code.")
        if "min_latent_dim_2" in guide and self.latent_dim < 2:
            raise ConfigError(f"[model] guide = \"{self.guide}\" is a flow over the latent "
                              "dimensions and needs latent_dim ≥ 2; use guide = \"diagonal\" for "
                              "a 1-d code.")


    def _check_quadrant_options(self) -> None:
        _choice("model", "quadrant_generation", self.quadrant_generation, ("given_and_z", "z"))
        if self.kind != "quadrant_cvae" and (self.quadrant_generation != "given_and_z"
                                             or self.baseline_run):
            key = "baseline_run" if self.baseline_run else "quadrant_generation"
            raise ConfigError(f"[model] {key} describes the quadrant-completion CVAE (kind = "
                              f"\"quadrant_cvae\"); kind = \"{self.kind}\" has no use for it. "
                              "Remove the key or set kind = \"quadrant_cvae\".")

    def _check_label_independence(self) -> None:
        _choice("model", "label_independence", self.label_independence, ("none", "mmd"))
        _positive("model", "label_independence_weight", self.label_independence_weight,
                  allow_zero=True)
        if self.label_independence != "none" and self.kind != "cvae":
            raise ConfigError(f"[model] label_independence = \"{self.label_independence}\" is a "
                              "penalty of the label-conditional VAE (kind = \"cvae\"), whose "
                              f"labels are all observed; kind = \"{self.kind}\" has no use for "
                              "it. Remove the key or set label_independence = \"none\".")
        if self.label_independence == "none" and self.label_independence_weight != 500.0:
            raise ConfigError("[model] label_independence_weight is only used with "
                              "label_independence = \"mmd\", which this recipe does not set; "
                              "remove the weight or set label_independence = \"mmd\".")
