"""Run configuration: a recipe, read from and written to TOML, and the packaged recipes.

A recipe is a TOML file with up to four tables, ``[data]``, ``[model]``, ``[train]`` and
``[evaluate]``, whose keys are the fields of :class:`~pyro_vae.config.data.DataConfig`,
:class:`~pyro_vae.config.model.ModelConfig`, :class:`~pyro_vae.config.train.TrainConfig` and
:class:`~pyro_vae.config.evaluate.EvaluateConfig` (one module each). Anything not given
takes the default shown. Unknown keys, wrong types and out-of-range values raise
:class:`~pyro_vae.errors.ConfigError` with a message that names the key and says what would be
accepted.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyro_vae.config.checks import _suggestion
from pyro_vae.config.data import DataConfig
from pyro_vae.config.evaluate import EvaluateConfig
from pyro_vae.config.legacy import move_legacy_keys, section_fields
from pyro_vae.config.model import ModelConfig
from pyro_vae.config.train import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.options import resolve_options
from pyro_vae.files import read_regular_bytes
from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS,
                               OBJECTIVES, PRIORS, Registry, load_plugins, plugins_providing)

#: The recipes shipped with the library (the repository's ``models/``, linked into the package).
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


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


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
}

#: The tables of component options: role -> (its registry, the section and key naming the
#: component the run uses). ``[prior] df = 5`` sets the option ``df`` of ``[model] prior``.
ROLES: dict[str, tuple[Registry, str, str]] = {
    "prior": (PRIORS, "model", "prior"),
    "guide": (GUIDES, "model", "guide"),
    "likelihood": (LIKELIHOODS, "model", "likelihood"),
    "network": (NETWORKS, "model", "network"),
    "kind": (MODEL_KINDS, "model", "kind"),
    "objective": (OBJECTIVES, "train", "objective"),
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
    #: The options of the components the run uses, by role (the recipe's ``[prior]``,
    #: ``[guide]``, ``[likelihood]``, ``[network]``, ``[kind]`` and ``[objective]`` tables),
    #: checked against what each declares and completed with the defaults by ``validate``.
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def binarization(self) -> str:
        """``[data] binarize`` with ``auto`` resolved by the likelihood."""
        if self.data.binarize != "auto":
            return self.data.binarize
        binary = "binary_data" in LIKELIHOODS.capabilities(self.model.likelihood)
        return "dynamic" if binary else "none"

    def with_plugins_recorded(self) -> "Config":
        """This configuration with ``plugins`` listing every plugin module that registered a
        component it names (including those an installed package's entry point loaded), so
        that a run's ``config.toml`` says what to install to rebuild it."""
        used = [(PRIORS, self.model.prior), (LIKELIHOODS, self.model.likelihood),
                (GUIDES, self.model.guide), (NETWORKS, self.model.network),
                (MODEL_KINDS, self.model.kind), (OBJECTIVES, self.train.objective),
                (DATASETS, self.data.dataset)]
        extra = [m for m in plugins_providing(used) if m not in self.plugins]
        return dataclasses.replace(self, plugins=[*self.plugins, *extra]) if extra else self

    def validate(self, source: str = "recipe") -> "Config":
        load_plugins(self.plugins, "listed under plugins in the run's configuration")
        for name in SECTIONS:
            getattr(self, name).validate()
        self._resolve_options(source)
        binary = "binary_data" in LIKELIHOODS.capabilities(self.model.likelihood)
        if self.data.binarize in ("dynamic", "static") and not binary:
            raise ConfigError(
                f"[data] binarize = \"{self.data.binarize}\" turns the data into coin flips, "
                f"but likelihood = \"{self.model.likelihood}\" models intensities or real "
                "values and would fit those coin flips instead of the data. Leave binarize at "
                "\"auto\" (or \"none\") with this likelihood, or use likelihood = "
                "\"bernoulli\" for binary data.")
        if self.data.binarize == "grey" and self.model.likelihood != "bernoulli":
            raise ConfigError(
                f"[data] binarize = \"grey\" scores the grey levels as Bernoulli targets, but "
                f"likelihood = \"{self.model.likelihood}\" is not the Bernoulli. Use binarize = "
                "\"none\" (or \"auto\") with this likelihood, which already models grey levels, "
                "or likelihood = \"bernoulli\".")
        check_compatible(self)
        return self

    def _resolve_options(self, source: str) -> None:
        """Check every role's table against the options its component declares, fill the
        defaults in, and hand the model's to ``[model]`` (where factories read them)."""
        unused = [role for role in self.options if role not in ROLES]
        if unused:
            raise ConfigError(f"{source}: [{unused[0]}] is not a table of component options; "
                              f"those are {', '.join('[' + r + ']' for r in ROLES)}.")
        resolved = {}
        for role, (registry, section, key) in ROLES.items():
            name = getattr(getattr(self, section), key)
            declared = registry.entry(name).options
            values = resolve_options(declared, self.options.get(role, {}), role, name, source)
            if values:
                resolved[role] = values
        self.options = resolved
        self.model.options = {role: dict(values) for role, values in resolved.items()
                              if ROLES[role][1] == "model"}

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source: str = "recipe",
                  saved: bool = False, legacy_wins: bool = False) -> "Config":
        """The configuration ``mapping`` describes, checked. ``saved``: a saved run's (old
        keys that version 0.2 ignored are dropped, see :mod:`pyro_vae.config.legacy`);
        ``legacy_wins``: an old key overrides its component's table (command-line flags)."""
        mapping = dict(mapping)
        plugins = _coerce(mapping.pop("plugins", []), list[str], "plugins", source)
        load_plugins(plugins, f"listed under plugins in {source}")
        mapping = _with_kind_defaults(mapping)
        mapping = move_legacy_keys(mapping, _legacy_roles(), {
            "model": section_fields(ModelConfig), "train": section_fields(TrainConfig)}, source,
            legacy_wins=legacy_wins, saved=saved)
        options = {role: mapping.pop(role) for role in list(mapping) if role in ROLES}
        unknown = [key for key in mapping if key not in SECTIONS]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"{source}: unknown table [{key}]; the tables are "
                f"{', '.join('[' + s + ']' for s in SECTIONS)}, the tables of component "
                f"options {', '.join('[' + r + ']' for r in ROLES)} (and the top-level key "
                f"plugins).{_suggestion(key, [*SECTIONS, *ROLES, 'plugins'])}"
            )
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = mapping.get(name, {})
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table of keys, not {values!r}.")
            sections[name] = _section_from_dict(section_cls, name, values, source)
        return cls(**sections, plugins=plugins, options=options).validate(source)

    @classmethod
    def from_toml(cls, path: str | Path, saved: bool = False) -> "Config":
        path = Path(path)
        try:  # a regular file only: a pipe or a device would block or never end
            text = read_regular_bytes(path, ConfigError).decode("utf-8-sig")  # BOM allowed
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
        return cls.from_dict(mapping, source=str(path), saved=saved)

    def to_dict(self) -> dict[str, Any]:
        tables: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name))
                                  for name in SECTIONS}
        tables["model"].pop("options", None)  # written as the tables of their roles
        tables.update({role: dict(values) for role, values in self.options.items()})
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
        kind = overrides.get("model", {}).get("kind", self.model.kind)
        if kind != self.model.kind:
            # Another kind: [model] keys still at the ModelConfig defaults, or at the old kind's
            # own defaults (e.g. the cvae's per-label prior), are left out, so the new kind's
            # defaults (its ``model_defaults`` hook) apply to them.
            fresh = ModelConfig()
            old_defaults = MODEL_KINDS.hooks(self.model.kind).model_defaults
            inherited = old_defaults(_model_table(merged)) if old_defaults else {}
            merged["model"] = {key: value for key, value in merged["model"].items()
                               if value != getattr(fresh, key)
                               and not (key in inherited and inherited[key] == value)}
        for section, values in overrides.items():
            if section == "plugins":  # plugins given on the command line join the recipe's
                merged["plugins"] = list(dict.fromkeys([*merged.get("plugins", []), *values]))
                continue
            merged.setdefault(section, {}).update(values)
        named = _with_kind_defaults(merged)
        for role, (registry, section, key) in ROLES.items():
            # Another component in a role: of the old one's options, those the new one also
            # declares carry over (mixture -> vamp keeps components; cvae -> m2 num_classes),
            # and the options given now apply on top.
            old = getattr(getattr(self, section), key)
            new = named.get(section, {}).get(key, getattr(SECTIONS[section](), key))
            if new != old:
                declared = registry.entry(new).options if new in registry else {}
                kept = {name: value for name, value in self.options.get(role, {}).items()
                        if name in declared}
                merged[role] = {**kept, **dict(overrides.get(role, {}))}
                if not merged[role]:
                    merged.pop(role)
        return Config.from_dict(merged, source="command line", legacy_wins=True)


def _legacy_roles() -> list[tuple[str, Registry, str, str, str]]:
    return [(role, registry, section, key, getattr(SECTIONS[section](), key))
            for role, (registry, section, key) in ROLES.items()]


def _with_kind_defaults(mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` with the model kind's own defaults (its ``model_defaults`` hook) filled
    into the keys of ``[model]`` it leaves out; unchanged for an unknown kind, which
    validation then names."""
    model = mapping.get("model", {})
    if not isinstance(model, Mapping):
        return mapping
    kind = model.get("kind", ModelConfig.kind)
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        return mapping
    defaults = MODEL_KINDS.hooks(kind).model_defaults
    if defaults is None:
        return mapping
    return {**mapping, "model": {**defaults(_model_table(mapping)), **model}}


def _model_table(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """What a kind's ``model_defaults`` hook is given: the ``[model]`` table as written, with
    the kind's own options (``[kind]``) beside its keys, as version 0.2 wrote them."""
    model, kind = mapping.get("model", {}), mapping.get("kind", {})
    return {**(kind if isinstance(kind, Mapping) else {}),
            **(model if isinstance(model, Mapping) else {})}


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
    if "label_priors" in kind and model.prior != "normal" and "label_conditional" not in prior:
        raise ConfigError(
            f"[model] prior = \"{model.prior}\" has no label-conditional form p(z|y), which a "
            f"{model.kind} model needs of a prior other than N(0, I). Use prior = \"normal\" or "
            f"{_priors_with('label_conditional')}.")
    own_prior = model.prior != "normal" and "label_priors" not in kind
    if "components" not in kind and (own_prior or model.guide != "diagonal"
                                     or train.free_bits > 0):
        raise ConfigError(
            f"[model] kind = \"{model.kind}\" has its own fixed prior, guide and decoder; "
            "prior, guide and free_bits are options of kinds built from components (kind = "
            "\"vae\"). Leave them at their defaults (prior = \"normal\", guide = "
            "\"diagonal\", free_bits = 0) or use kind = \"vae\".")
    if train.free_bits > 0:
        if "separate_kl" not in objective:
            raise ConfigError(
                f"[train] free_bits needs the ELBO's separate KL term, which objective "
                f"\"{train.objective}\" does not have; use objective = "
                f"{_objectives_with('separate_kl')}, or free_bits = 0.")
        if "closed_form_kl" not in prior or "diagonal" not in guide:
            raise ConfigError(
                "[train] free_bits works per latent dimension, which needs a KL that splits "
                "over dimensions: the one-layer model with prior = \"normal\" and guide = "
                "\"diagonal\". Use beta or kl_warmup_epochs against collapse with other "
                "priors and guides, or free_bits = 0.")
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
    if config.data.num_labels and "partial_labels" not in kind:
        raise ConfigError("[data] num_labels hides labels for semi-supervised training; "
                          f"it needs [model] kind = {_kinds_with('partial_labels')}.")
    _check_unused_kind_options(config, kind)
    own_check = MODEL_KINDS.hooks(model.kind).check
    if own_check is not None:
        own_check(config)


def _check_unused_kind_options(config: Config, kind: frozenset[str]) -> None:
    """An evaluation option of labelled kinds given with another would be ignored: say so
    instead (a kind's own options are checked against what it declares)."""
    if config.evaluate.label_fidelity_samples not in (0, EvaluateConfig.label_fidelity_samples) \
            and "labels" not in kind:
        raise ConfigError(f"[evaluate] label_fidelity_samples is only used with kind = "
                          f"{_kinds_with('labels')}, which this recipe does not set; remove "
                          "label_fidelity_samples or set the option it belongs to.")


def _names_with(registry: Registry, capability: str, present: bool = True) -> str:
    return registry.names_with(capability, present)


def _objectives_with(capability: str) -> str:
    return _names_with(OBJECTIVES, capability)


def _objectives_without(capability: str) -> str:
    return _names_with(OBJECTIVES, capability, present=False).replace("\"", "")


def _kinds_with(capability: str) -> str:
    return _names_with(MODEL_KINDS, capability)


def _priors_with(capability: str) -> str:
    return _names_with(PRIORS, capability)


def _section_from_dict(section_cls: type, name: str, values: Mapping[str, Any],
                       source: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    names = [f.name for f in dataclasses.fields(section_cls) if f.name != "options"]
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
            if not -2 ** 63 <= value < 2 ** 63:  # TOML's integers are 64-bit
                raise ConfigError(f"{source}: {where} = {value} is beyond the 64-bit integers "
                                  "a TOML file can hold (|value| < 2**63); give a smaller "
                                  "number.")
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
