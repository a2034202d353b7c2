"""Run configuration: dataclasses with validation, read from and written to TOML.

A recipe is a TOML file with up to four tables, ``[data]``, ``[model]``, ``[train]`` and
``[evaluate]``, whose keys are the fields below. Anything not given takes the default shown.
Unknown keys, wrong types and out-of-range values raise :class:`~pyro_vae.errors.ConfigError`
with a message that names the key and says what would be accepted.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyro_vae.errors import ConfigError
from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES,
                               PRIORS, Registry, load_plugins, suggestion)

# Priors, guides, likelihoods, networks, objectives, model kinds and datasets are named by
# the registries of pyro_vae.registry (which plugins extend); the settings below are not.
BINARIZATIONS = ("auto", "dynamic", "static", "none")
ACTIVATIONS = ("relu", "tanh", "elu", "softplus", "leaky_relu", "gelu")
ENCODER_SCALES = ("softplus", "logvar")
#: How M2 alternates its labelled and unlabelled batches ([train] m2_schedule).
M2_SCHEDULES = ("paired", "interleaved")
#: Largest number of codes C^K that objective ``enumerate`` sums over.
MAX_ENUMERATED_CODES = 1024
DEVICES = ("cpu", "cuda")
#: The smallest KL weight β accepted: below it β·KL is lost beside the likelihood in float32.
MIN_BETA = 1e-10
#: The recipes shipped with the library (the repository's ``models/``, linked into the package).
RECIPES = Path(__file__).resolve().parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the packaged recipes (``pyro-vae train NAME`` trains one)."""
    return sorted(path.stem for path in RECIPES.glob("*.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` itself if it is a file, else the packaged recipe of that
    name (with or without ``.toml``); a :class:`ConfigError` saying what exists otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    raise ConfigError(f"recipe {name_or_path} is neither a TOML file nor a packaged recipe; "
                      "give the path of a recipe, or one of the names `pyro-vae recipes` lists."
                      + _suggestion(path.stem, recipe_names()))


def _choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"[{section}] {key} = {value!r} is not one of {', '.join(map(repr, choices))}."
            + _suggestion(value, choices)
        )


def _positive(section: str, key: str, value: float, allow_zero: bool = False) -> None:
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        word = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"[{section}] {key} = {value!r} must be a finite {word} number.")


def _suggestion(word: str, options: typing.Iterable[str]) -> str:
    return suggestion(word, options)


def _registered(registry: Registry, value: str) -> frozenset[str]:
    """The capabilities of the registered entry ``value`` (a ConfigError if there is none)."""
    return registry.capabilities(value)


@dataclass
class DataConfig:
    """Which data to train on and how to prepare it."""

    #: ``digits`` (embedded, no download), ``mnist``, ``fashion-mnist``, ``binarized-mnist``
    #: (Larochelle's static binarization) or ``file:PATH.npz`` (array ``x``, optional ``y``).
    dataset: str = "digits"
    #: Folder holding the MNIST-family files; default: $PYRO_VAE_DATA_DIR, else ``./data``.
    data_dir: str | None = None
    #: ``dynamic`` (a fresh Bernoulli draw per epoch), ``static`` (one fixed draw), ``none``,
    #: or ``auto``: ``dynamic`` for a Bernoulli likelihood, ``none`` for the others (which
    #: model intensities or real values and are never binarized).
    binarize: str = "auto"
    #: Fraction of the training split held out for validation (0 disables validation).
    validation_fraction: float = 0.1
    #: Download MNIST / Fashion-MNIST with torchvision when the files are missing.
    download: bool = False
    #: For ``[model] kind = "m2"``: how many training labels are kept (the rest are hidden);
    #: 0 keeps every label.
    num_labels: int = 0

    def validate(self) -> None:
        _positive("data", "num_labels", self.num_labels, allow_zero=True)
        if not self.dataset.startswith("file:"):
            _registered(DATASETS, self.dataset)
        _choice("data", "binarize", self.binarize, BINARIZATIONS)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"[data] validation_fraction = {self.validation_fraction!r} must lie in [0, 1)."
            )


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
    likelihood: str = "bernoulli"
    #: Standard deviation of the Gaussian likelihood: a positive number, or ``"learned"``.
    gaussian_scale: float | str = "learned"
    #: Gaussian likelihood: decode in standardized units (the training split's per-pixel mean
    #: and overall standard deviation, saved with the weights); log p(x) stays in data units.
    standardize: bool = True
    #: 1, or 2 for the hierarchical model z2 → z1 → x of Burda et al. (2016): ``latent_dim``
    #: is then the size of z1 and the two keys below describe z2 and the nets between them.
    stochastic_layers: int = 1
    top_latent_dim: int = 50
    top_hidden_dims: list[int] = field(default_factory=lambda: [50, 50])
    #: p(z): ``normal`` N(0, I), ``mixture`` of Gaussians, ``vamp`` (VampPrior) or ``flow``.
    prior: str = "normal"
    #: Mixture components, or VampPrior pseudo-inputs; absent: 10 (mixture), 500 (vamp).
    prior_components: int | None = None
    #: Affine coupling layers of the flow prior, or autoregressive layers of the IAF guide.
    flow_layers: int = 4
    #: q(z|x): ``diagonal`` Gaussian, ``lowrank`` Gaussian (rank ``guide_rank``) or ``iaf``
    #: (inverse autoregressive flow of ``flow_layers`` layers); plugins may add more.
    guide: str = "diagonal"
    #: Rank r of the low-rank guide's covariance factor.
    guide_rank: int = 2
    #: Priors on decoder weights with a mean-field guide: ``none``, ``last`` layer or ``all``.
    bayesian_decoder: str = "none"
    #: Standard deviation s of the N(0, s²) prior on each Bayesian decoder weight.
    weight_prior_scale: float = 1.0
    #: ``vae``, ``cvae`` (label-conditional, needs labels) or ``m2`` (semi-supervised).
    kind: str = "vae"
    #: Number of labels 0..C−1 of ``cvae`` and ``m2`` models.
    num_classes: int = 10
    #: Quadrants given (1, 2 or 3) to the ``quadrant_*`` models, which predict the others.
    quadrants: int = 1
    #: ``discrete`` models: K categorical latent variables of C ``categories`` each (C = 2:
    #: Bernoulli latents), with a ``uniform`` or ``learned`` prior.
    categorical_latents: int = 20
    categories: int = 10
    discrete_prior: str = "uniform"

    def validate(self) -> None:
        kind = _registered(MODEL_KINDS, self.kind)
        _positive("model", "categorical_latents", self.categorical_latents)
        if self.categories < 2:
            raise ConfigError(f"[model] categories = {self.categories!r}: a categorical "
                              "variable needs at least 2 classes (2 is a Bernoulli latent).")
        _choice("model", "discrete_prior", self.discrete_prior, ("uniform", "learned"))
        if self.quadrants not in (1, 2, 3):
            raise ConfigError(f"[model] quadrants = {self.quadrants!r}: give 1, 2 or 3 "
                              "quadrants; the model predicts the other 4 − quadrants.")
        _positive("model", "num_classes", self.num_classes)
        if "components" not in kind and (self.network != "mlp" or self.stochastic_layers != 1):
            raise ConfigError(f"[model] kind = \"{self.kind}\" is built from one stochastic "
                              "layer of MLPs; set network = \"mlp\" and stochastic_layers = 1.")
        _positive("model", "latent_dim", self.latent_dim)
        _registered(NETWORKS, self.network)
        for size in self.hidden_dims:
            _positive("model", "hidden_dims", size)
        _choice("model", "activation", self.activation, ACTIVATIONS)
        _choice("model", "encoder_scale", self.encoder_scale, ENCODER_SCALES)
        _registered(LIKELIHOODS, self.likelihood)
        _choice("model", "stochastic_layers", str(self.stochastic_layers), ("1", "2"))
        _positive("model", "top_latent_dim", self.top_latent_dim)
        for size in self.top_hidden_dims:
            _positive("model", "top_hidden_dims", size)
        if self.stochastic_layers == 2 and self.network != "mlp":
            raise ConfigError("[model] stochastic_layers = 2 is built from MLPs; set network = "
                              "\"mlp\".")
        prior = _registered(PRIORS, self.prior)
        guide = _registered(GUIDES, self.guide)
        _positive("model", "guide_rank", self.guide_rank)
        if self.prior_components is not None:
            _positive("model", "prior_components", self.prior_components)
        _positive("model", "flow_layers", self.flow_layers)
        _choice("model", "bayesian_decoder", self.bayesian_decoder, ("none", "last", "all"))
        self._check_unused_options()
        _positive("model", "weight_prior_scale", self.weight_prior_scale)
        if self.bayesian_decoder != "none" and self.stochastic_layers != 1:
            raise ConfigError("[model] bayesian_decoder is built for the one-layer model; set "
                              "stochastic_layers = 1 or bayesian_decoder = \"none\".")
        if "min_latent_dim_2" in prior and self.latent_dim < 2:
            raise ConfigError(f"[model] prior = \"{self.prior}\" is built from coupling layers "
                              "that need latent_dim ≥ 2; use prior = \"mixture\" for a 1-d code.")
        if "min_latent_dim_2" in guide and self.latent_dim < 2:
            raise ConfigError(f"[model] guide = \"{self.guide}\" is a flow over the latent "
                              "dimensions and needs latent_dim ≥ 2; use guide = \"diagonal\" for "
                              "a 1-d code.")
        if self.stochastic_layers == 2 and self.guide != "diagonal":
            raise ConfigError(f"[model] guide = \"{self.guide}\" is for the one-layer model; "
                              "with stochastic_layers = 2 the guide is q(z1|x) q(z2|z1) of "
                              "diagonal Gaussians. Set guide = \"diagonal\" or stochastic_layers "
                              "= 1.")
        if self.stochastic_layers == 2 and self.prior != "normal":
            raise ConfigError(
                f"[model] prior = \"{self.prior}\" is for the one-layer model; with "
                "stochastic_layers = 2 the prior is already hierarchical, p(z1|z2) p(z2) with "
                "p(z2) = N(0, I). Set prior = \"normal\" or stochastic_layers = 1.")
        if isinstance(self.gaussian_scale, str):
            _choice("model", "gaussian_scale", self.gaussian_scale, ("learned",))
        else:
            _positive("model", "gaussian_scale", self.gaussian_scale)


    def _check_unused_options(self) -> None:
        """Options of one prior given with another would be ignored: say so instead."""
        unused = []
        users = {key: [f"{what} = \"{name}\"" for what, registry in (("prior", PRIORS),
                                                                     ("guide", GUIDES))
                       for name in registry.choices() if key in registry.capabilities(name)]
                 for key in ("components", "flow_layers")}
        prior, guide = PRIORS.capabilities(self.prior), GUIDES.capabilities(self.guide)
        if self.prior_components is not None and "components" not in prior:
            unused.append(("prior_components", " or ".join(users["components"])))
        if self.flow_layers != 4 and "flow_layers" not in prior | guide:
            unused.append(("flow_layers", " or ".join(users["flow_layers"])))
        if self.guide_rank != 2 and self.guide != "lowrank":
            unused.append(("guide_rank", "guide = \"lowrank\""))
        if self.weight_prior_scale != 1.0 and self.bayesian_decoder == "none":
            unused.append(("weight_prior_scale", "bayesian_decoder = \"last\" or \"all\""))
        if unused:
            key, needs = unused[0]
            raise ConfigError(f"[model] {key} is only used with {needs}, which this recipe does "
                              f"not set; remove {key} or set the option it belongs to.")


@dataclass
class TrainConfig:
    """The objective, the optimizer and the schedule."""

    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    #: ``elbo`` (Pyro's Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO, analytic KL),
    #: ``iwae``, ``dreg``, ``stl``, ``renyi`` or ``score`` (see pyro_vae.objectives).
    objective: str = "elbo"
    #: Number of vectorized particles K per datapoint (IWAE's k).
    particles: int = 1
    #: α of the Rényi bound (objective ``renyi``); α ≠ 1, and α = 0 is IWAE.
    alpha: float = 0.5
    #: Weight of the KL term (β-VAE), positive; 1 is the ELBO.
    beta: float = 1.0
    #: Epochs over which the KL weight rises linearly from 0 to ``beta`` (0: no annealing).
    kl_warmup_epochs: int = 0
    #: Free bits λ (Kingma et al. 2016): nats per latent dimension of batch-averaged KL below
    #: which the KL is not pushed down; 0 disables. Objectives elbo and meanfield, prior normal.
    free_bits: float = 0.0
    seed: int = 0
    device: str = "cpu"
    #: On a NaN/inf loss or gradient: ``stop`` with a message, or ``rollback`` to the last good
    #: state with half the learning rate (up to 3 times).
    on_nan: str = "stop"
    #: M2's weight α on −log q(y|x) per labelled datapoint (Kingma et al. 2014, eq. 9).
    aux_loss_weight: float = 50.0
    #: How M2 alternates labelled and unlabelled data: ``paired`` (a labelled and an
    #: unlabelled batch in every step, the classification term inside the model) or
    #: ``interleaved`` (Pyro's example: unlabelled steps, a labelled batch every
    #: ``labelled_every`` steps with the classification term as its own step; see
    #: pyro_vae/m2_schedule.py).
    m2_schedule: str = "paired"
    #: ``interleaved``: a labelled batch every k unlabelled steps; 0 = each labelled batch
    #: once an epoch, spread evenly (Pyro's example).
    labelled_every: int = 0
    #: torch threads of the command (``pyro-vae --threads``); 0 chooses: $OMP_NUM_THREADS if
    #: set, else 1, the fastest for these models on a machine shared with other jobs.
    threads: int = 0
    #: Objectives ``concrete`` and ``straight_through``: the relaxation's temperature
    #: τ_t = max(temperature_min, temperature · exp(−temperature_decay · t)) at step t.
    temperature: float = 1.0
    temperature_min: float = 0.5
    temperature_decay: float = 0.0

    def validate(self) -> None:
        _choice("train", "on_nan", self.on_nan, ("stop", "rollback"))
        _positive("train", "aux_loss_weight", self.aux_loss_weight, allow_zero=True)
        _choice("train", "m2_schedule", self.m2_schedule, M2_SCHEDULES)
        _positive("train", "labelled_every", self.labelled_every, allow_zero=True)
        _positive("train", "threads", self.threads, allow_zero=True)
        _positive("train", "epochs", self.epochs)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "learning_rate", self.learning_rate)
        _registered(OBJECTIVES, self.objective)
        _positive("train", "particles", self.particles)
        if self.objective == "renyi" and self.alpha == 1.0:
            raise ConfigError("[train] alpha = 1 makes the Rényi bound the ELBO itself; use "
                              "objective = \"elbo\", or an alpha other than 1 (0 is IWAE).")
        if not math.isfinite(self.alpha):
            raise ConfigError(f"[train] alpha = {self.alpha!r} must be a finite number.")
        _positive("train", "beta", self.beta)
        if self.beta < MIN_BETA:
            raise ConfigError(f"[train] beta = {self.beta!r} is below {MIN_BETA:g}: a KL weight "
                              "that small vanishes in float32 arithmetic (the loss is then the "
                              f"reconstruction term alone). Use beta ≥ {MIN_BETA:g}.")
        _positive("train", "kl_warmup_epochs", self.kl_warmup_epochs, allow_zero=True)
        _positive("train", "free_bits", self.free_bits, allow_zero=True)
        _positive("train", "seed", self.seed, allow_zero=True)
        if self.seed >= 2 ** 32:
            raise ConfigError(f"[train] seed = {self.seed} must be below 2**32.")
        _choice("train", "device", self.device, DEVICES)
        _positive("train", "temperature", self.temperature)
        _positive("train", "temperature_min", self.temperature_min)
        _positive("train", "temperature_decay", self.temperature_decay, allow_zero=True)


@dataclass
class EvaluateConfig:
    """The test-set evaluation written to ``summary.json`` at the end of training."""

    #: Importance samples K per datapoint for log p(x).
    num_samples: int = 5000
    #: Largest number of decoded samples held in memory at once (K × datapoints per chunk);
    #: "auto" fills half the free memory of a CUDA device (20,000 on a CPU).
    max_chunk: int | str = 20_000
    #: Labelled models (cvae, m2): conditional samples per label whose label fidelity is
    #: measured at the end of training (pyro_vae.fidelity); 0 skips the measurement.
    label_fidelity_samples: int = 100
    #: The latent map (latent.png) of a code with more than 2 dimensions: ``tsne`` (t-SNE of
    #: 1,000 test encodings, a few seconds) or ``pca`` (first two principal components).
    latent_map: str = "tsne"

    def validate(self) -> None:
        _positive("evaluate", "num_samples", self.num_samples)
        _positive("evaluate", "label_fidelity_samples", self.label_fidelity_samples,
                  allow_zero=True)
        _choice("evaluate", "latent_map", self.latent_map, ("tsne", "pca"))
        if isinstance(self.max_chunk, str):
            _choice("evaluate", "max_chunk", self.max_chunk, ("auto",))
        else:
            _positive("evaluate", "max_chunk", self.max_chunk)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
}


@dataclass
class Config:
    """A whole run: ``[data]``, ``[model]``, ``[train]`` and ``[evaluate]``, and the top-level
    ``plugins`` list of modules that register components of the user's own."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    #: Plugin modules imported before the tables are checked (their names become valid).
    plugins: list[str] = field(default_factory=list)

    @property
    def binarization(self) -> str:
        """``[data] binarize`` with ``auto`` resolved by the likelihood."""
        if self.data.binarize != "auto":
            return self.data.binarize
        binary = "binary_data" in LIKELIHOODS.capabilities(self.model.likelihood)
        return "dynamic" if binary else "none"

    def validate(self) -> "Config":
        load_plugins(self.plugins, "listed under plugins in the run's configuration")
        for name in SECTIONS:
            getattr(self, name).validate()
        binary = "binary_data" in LIKELIHOODS.capabilities(self.model.likelihood)
        if self.data.binarize in ("dynamic", "static") and not binary:
            raise ConfigError(
                f"[data] binarize = \"{self.data.binarize}\" turns the data into coin flips, "
                f"but likelihood = \"{self.model.likelihood}\" models intensities or real "
                "values and would fit those coin flips instead of the data. Leave binarize at "
                "\"auto\" (or \"none\") with this likelihood, or use likelihood = "
                "\"bernoulli\" for binary data.")
        check_compatible(self)
        return self

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source: str = "recipe") -> "Config":
        mapping = dict(mapping)
        plugins = _coerce(mapping.pop("plugins", []), list[str], "plugins", source)
        load_plugins(plugins, f"listed under plugins in {source}")
        unknown = [key for key in mapping if key not in SECTIONS]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"{source}: unknown table [{key}]; the tables are "
                f"{', '.join('[' + s + ']' for s in SECTIONS)} (and the top-level key "
                f"plugins).{_suggestion(key, [*SECTIONS, 'plugins'])}"
            )
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = mapping.get(name, {})
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table of keys, not {values!r}.")
            sections[name] = _section_from_dict(section_cls, name, values, source)
        return cls(**sections, plugins=plugins).validate()

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is allowed
        except FileNotFoundError:
            raise ConfigError(f"recipe {path} does not exist; give the path of a TOML recipe "
                              "(the project's recipes are in models/).") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"recipe {path} cannot be read ({error}).") from None
        try:
            mapping = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"recipe {path} is not valid TOML: {error}. Fix the line it "
                              "names; every value needs a key = value form.") from None
        return cls.from_dict(mapping, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        tables: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name))
                                  for name in SECTIONS}
        if self.plugins:
            tables["plugins"] = list(self.plugins)
        return tables

    def to_toml(self) -> str:
        tables = self.to_dict()
        plugins = tables.pop("plugins", None)
        head = f"plugins = {_toml_value(plugins)}\n\n" if plugins else ""
        return head + dump_toml(tables)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> "Config":
        """A copy with ``{"train": {"epochs": 3}, ...}`` applied and validated."""
        merged = self.to_dict()
        for section, values in overrides.items():
            if section == "plugins":  # plugins given on the command line join the recipe's
                merged["plugins"] = list(dict.fromkeys([*merged.get("plugins", []), *values]))
                continue
            merged.setdefault(section, {}).update(values)
        return Config.from_dict(merged, source="command line")


def check_compatible(config: Config) -> None:
    """The one compatibility check between the model a configuration describes and its
    objective and options, stated with the capabilities that the registered entries declare
    (see ``pyro_vae.objectives.CAPABILITIES`` and the model kinds' registrations)."""
    model, train = config.model, config.train
    kind = MODEL_KINDS.capabilities(model.kind)
    objective = OBJECTIVES.capabilities(train.objective)
    prior = PRIORS.capabilities(model.prior)
    guide = GUIDES.capabilities(model.guide)
    name = f"[train] objective = \"{train.objective}\""
    if "components" not in kind and (model.prior != "normal" or model.guide != "diagonal"
                                     or model.bayesian_decoder != "none"
                                     or train.free_bits > 0):
        raise ConfigError(
            f"[model] kind = \"{model.kind}\" has its own fixed prior, guide and decoder; "
            "prior, guide, bayesian_decoder and free_bits are options of kinds built from "
            "components (kind = \"vae\"). Leave them at their defaults (prior = \"normal\", "
            "guide = \"diagonal\", bayesian_decoder = \"none\", free_bits = 0) or use kind = "
            "\"vae\".")
    if model.stochastic_layers == 2 and "needs_independent_latents" in objective:
        raise ConfigError(
            f"{name} needs a guide whose latent sites do not depend on one another, but the "
            "two-layer model's q(z2|z1) depends on z1. Use an objective without that need "
            f"({_objectives_without('needs_independent_latents')}) with stochastic_layers = 2.")
    if train.free_bits > 0:
        if "separate_kl" not in objective:
            raise ConfigError(
                f"[train] free_bits needs the ELBO's separate KL term, which objective "
                f"\"{train.objective}\" does not have; use objective = "
                f"{_objectives_with('separate_kl')}, or free_bits = 0.")
        if "closed_form_kl" not in prior or "diagonal" not in guide \
                or model.stochastic_layers != 1:
            raise ConfigError(
                "[train] free_bits works per latent dimension, which needs a KL that splits "
                "over dimensions: the one-layer model with prior = \"normal\" and guide = "
                "\"diagonal\". Use beta or kl_warmup_epochs against collapse with other "
                "priors and guides, or free_bits = 0.")
    if model.bayesian_decoder != "none" and "global_latents" not in objective:
        raise ConfigError(
            f"{name} is reduced per datapoint, but this model's Bayesian decoder weights are "
            "one global latent variable shared by all datapoints, with no per-datapoint share "
            f"of its KL. Use objective = {_objectives_with('global_latents')}, or "
            "bayesian_decoder = \"none\".")
    if "discrete_latents" in kind and "enumerates_discrete" not in objective:
        raise ConfigError(
            f"{name}: the {model.kind} model sums its discrete label out with TraceEnum_ELBO; "
            f"use objective = {_objectives_with('enumerates_discrete')}.")
    if "discrete_only" in objective and "categorical_latents" not in kind:
        raise ConfigError(
            f"{name} is for discrete latent variables, and kind = \"{model.kind}\" has "
            f"Gaussian ones. Use it with [model] kind = {_kinds_with('categorical_latents')} "
            f"(--model discrete), or choose {_objectives_without('discrete_only')}.")
    if "categorical_latents" in kind and "discrete_codes" not in objective:
        raise ConfigError(
            f"{name} differentiates through reparameterized samples, which a discrete latent "
            f"code does not have. With kind = \"{model.kind}\" use one of "
            f"{_objectives_with('discrete_codes')}.")
    if train.objective == "vimco" and train.particles < 2:
        raise ConfigError("[train] objective = \"vimco\" leaves one of K samples out for "
                          "each baseline, so it needs particles ≥ 2 (--particles 5, say).")
    codes = model.categories ** model.categorical_latents
    if train.objective == "enumerate" and codes > MAX_ENUMERATED_CODES:
        raise ConfigError(
            f"[train] objective = \"enumerate\" sums over all C^K = "
            f"{model.categories}^{model.categorical_latents} codes, more than "
            f"the {MAX_ENUMERATED_CODES} it allows (each costs a decoder pass per "
            "datapoint). Use fewer categorical_latents or categories, or a sampling "
            "objective (score, vimco, concrete, straight_through).")
    if config.data.num_labels and "semi_supervised" not in kind:
        raise ConfigError("[data] num_labels hides labels for semi-supervised training; "
                          f"it needs [model] kind = {_kinds_with('semi_supervised')}.")


def _names_with(registry: Registry, capability: str, present: bool = True) -> str:
    names = [n for n in registry.choices() if (capability in registry.capabilities(n)) == present]
    return " or ".join(f"\"{n}\"" for n in names) or "none"


def _objectives_with(capability: str) -> str:
    return _names_with(OBJECTIVES, capability)


def _objectives_without(capability: str) -> str:
    return _names_with(OBJECTIVES, capability, present=False).replace("\"", "")


def _kinds_with(capability: str) -> str:
    return _names_with(MODEL_KINDS, capability)


def _section_from_dict(section_cls: type, name: str, values: Mapping[str, Any],
                       source: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    names = [f.name for f in dataclasses.fields(section_cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{source}: [{name}] has no key {key!r}; its keys are {', '.join(names)}."
                + _suggestion(key, names)
            )
        kwargs[key] = _coerce(value, hints[key], f"[{name}] {key}", source)
    return section_cls(**kwargs)


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "absent"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any, where: str, source: str) -> Any:
    """Return ``value`` as type ``hint`` or raise a ConfigError naming ``where``."""
    options = typing.get_args(hint) if (
        isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is list and isinstance(value, (list, tuple)):
            item = typing.get_args(option)[0]
            return [_coerce(v, item, where, source) for v in value]
    raise ConfigError(f"{source}: {where} = {value!r} should be {_type_name(hint)}.")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a mapping of tables of plain values as TOML (``None`` values are left out)."""
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
