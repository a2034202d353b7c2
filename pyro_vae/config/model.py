"""The ``[model]`` table of a recipe: the model kind and its prior, guide, likelihood and
networks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from pyro_vae.config.checks import ACTIVATIONS, ENCODER_SCALES, _choice, _positive, _registered
from pyro_vae.errors import ConfigError
from pyro_vae.config.legacy import claimants, move_legacy_keys, section_fields
from pyro_vae.options import resolve_options
from pyro_vae.registry import GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, PRIORS

#: The roles of the ``[model]`` table whose components may own options, with their registries;
#: the key of ``[model]`` naming the component is the role's name.
MODEL_ROLES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS,
               "network": NETWORKS, "kind": MODEL_KINDS}



def _legacy_roles() -> list[tuple]:
    """The model roles as :mod:`pyro_vae.config.legacy` takes them: (role, registry, section,
    key naming the component, its default)."""
    return [(role, registry, "model", role, getattr(ModelConfig, role))
            for role, registry in MODEL_ROLES.items()]


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
    #: ``vae``, ``cvae`` (label-conditional, needs labels), ``m2`` (semi-supervised),
    #: ``discrete``, ``quadrant_baseline`` or ``quadrant_cvae``; plugins may add more. A kind's
    #: own options (``num_classes``, ``stochastic_layers``, ...) go in the ``[kind]`` table.
    kind: str = "vae"
    #: The options of the model's components, by role (``prior``, ``guide``, ``likelihood``,
    #: ``network``, ``kind``), set from the recipe's tables of those names and checked against
    #: what each component declares (:mod:`pyro_vae.options`); not a key of ``[model]``.
    options: dict[str, dict] = field(default_factory=dict, compare=False)

    def options_of(self, role: str) -> dict:
        """The options of the component in ``role`` (``prior``, ``guide``, ``likelihood``,
        ``network`` or ``kind``): those set in the recipe's table of that role, checked
        against what the component declares, with its defaults filled in (``{}`` where it
        declares none). Keys the component does not declare are left out: they belong to
        the component the role had before (``config.prior = "normal"`` after a mixture);
        :meth:`validate` refuses them."""
        registry = MODEL_ROLES[role]
        name = getattr(self, role)
        if name not in registry:
            return dict(self.options.get(role, {}))
        declared = registry.entry(name).options
        given = {key: value for key, value in self.options.get(role, {}).items()
                 if key in declared}
        return resolve_options(declared, given, role, name)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], source: str = "[model]") -> "ModelConfig":
        """A ``[model]`` table as a recipe writes it, the old keys of components' options
        included (``num_classes = 3`` goes to ``options["kind"]``), plus ``options`` by role;
        not validated (``Config.from_dict`` validates a whole recipe)."""
        table = dict(table)
        options = {role: dict(values) for role, values in table.pop("options", {}).items()}
        moved = move_legacy_keys({"model": table, **options}, _legacy_roles(),
                                 {"model": section_fields(cls)}, source)
        return cls(**moved.pop("model"), options=moved)

    @property
    def num_classes(self) -> int:
        """The number of labels 0..C−1 of a labelled kind: its ``[kind] num_classes`` option
        (every built-in kind declaring the capability ``labels`` has one), or 10, the old
        default, for a kind that declares none."""
        return self.options_of("kind").get("num_classes", 10)

    def __getattr__(self, name: str) -> Any:
        """An option that moved from ``[model]`` to its component, read by its old name
        (``config.gaussian_scale``, as plugins written for 0.2 do): the option of the
        component in use that declares it, or the old default where none does. Deprecated:
        read ``config.options_of(ROLE)[OPTION]``."""
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        found = claimants(name, _legacy_roles())
        if not found:
            raise AttributeError(f"'ModelConfig' object has no attribute {name!r}")
        warnings.warn(f"ModelConfig.{name} is deprecated: read the option of its component, "
                      f"config.options_of({found[0][0]!r})[{found[0][2]!r}].",
                      DeprecationWarning, stacklevel=2)
        for role, component, option, _ in found:
            if component == getattr(self, role):
                return self.options_of(role)[option]
        return found[0][3]

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting an option by its old name (``config.gaussian_scale = 0.1``) sets it in the
        table of the component in use that declares it, with a DeprecationWarning; with no
        such component it is refused, where it would otherwise pass silently unused."""
        if name in self.__dataclass_fields__ or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        found = claimants(name, _legacy_roles())
        if not found:
            object.__setattr__(self, name, value)
            return
        in_use = [(role, option) for role, component, option, _ in found
                  if component == getattr(self, role)]
        if not in_use:
            users = " or ".join(dict.fromkeys(f"{role} = \"{component}\""
                                              for role, component, *_ in found))
            raise ConfigError(f"ModelConfig.{name} is the option {found[0][2]!r} of {users}, "
                              "which this configuration does not use.")
        warnings.warn(f"setting ModelConfig.{name} is deprecated: set the option of its "
                      f"component, config.options[{in_use[0][0]!r}][{in_use[0][1]!r}].",
                      DeprecationWarning, stacklevel=2)
        options = {role: dict(values) for role, values in self.options.items()}
        for role, option in in_use:
            options.setdefault(role, {})[option] = value
        object.__setattr__(self, "options", options)

    def validate(self) -> None:
        kind = _registered(MODEL_KINDS, self.kind)
        for role, registry in MODEL_ROLES.items():  # the components' own tables
            name = getattr(self, role)
            if name in registry:
                resolve_options(registry.entry(name).options, self.options.get(role, {}),
                                role, name, source="[model]")
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
