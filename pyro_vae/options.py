"""Options that a component owns: declared at registration, set in the component's own table.

A registered prior, guide, likelihood, network, objective or model kind may declare typed
options (the way pythae's per-model config classes and Pyro's ``RenyiELBO(alpha=...)`` own
theirs)::

    @PRIORS.register("student_t", options={"df": Option(3.0, "degrees of freedom ν")})
    def build(config, context):
        return StudentTPrior(config.latent_dim, df=context.options["df"])

A recipe sets them in the table named by the component's role, which applies to the
component the run uses (``[model] prior = "student_t"``)::

    [prior]
    df = 5.0

and the command line sets them generically: ``pyro-vae train --set prior.df=5``. Unknown
keys and values of the wrong type are refused with "did you mean"; a run's ``config.toml``
records every option of its components, defaults included. Factories read their options from
``context.options`` (priors and guides, whose factories take a
:class:`~pyro_vae.registry.BuildContext`) or from ``config.options[ROLE]`` (any factory given
the ``[model]`` table); an objective factory receives them as keyword arguments.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pyro_vae.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One option: its ``default`` (whose type is the option's type unless ``type`` is
    given: ``bool``, ``int``, ``float``, ``str``, ``list`` or a tuple of these for either),
    a one-line ``help`` and, optionally, the ``choices`` it must be one of, a
    ``check(value)`` returning an error text or None, the type of a list's ``items``, and
    the ``legacy`` key of ``[model]`` that set it before components owned their options
    (a recipe or a saved run that still writes ``[model] prior_components = 50`` sets the
    option ``components`` of the prior in use)."""

    default: Any
    help: str = ""
    type: type | tuple[type, ...] | None = None
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], str | None] | None = None
    items: type | None = None
    legacy: str = ""

    @property
    def kind(self) -> type | tuple[type, ...]:
        return self.type or type(self.default)

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` as this option's type, or a :class:`ConfigError` naming ``where``."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if list in kinds and isinstance(value, tuple):
            value = list(value)
        matched = next((kind for kind in kinds if _is(value, kind)), None)
        if matched is None:
            raise ConfigError(f"{where} = {value!r} should be "
                              f"{' or '.join(_type_words(kind) for kind in kinds)} (default "
                              f"{self.default!r}: {self.help or 'no help given'}).")
        value = float(value) if matched is float else value
        if matched is float and not math.isfinite(value):
            raise ConfigError(f"{where} = {value!r} must be a finite number.")
        if matched is list:
            value = [Option(None, self.help, type=self.items).coerce(item, f"{where}[{i}]")
                     if self.items is not None else item for i, item in enumerate(value)]
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where} = {value!r} is not one of "
                              f"{', '.join(map(repr, self.choices))}."
                              + did_you_mean(str(value), map(str, self.choices)))
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ConfigError(f"{where} = {value!r}: {problem}")
        return value


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def positive(value: Any) -> str | None:
    """An option ``check``: the value (or every item of a list) must be above zero."""
    values = value if isinstance(value, list) else [value]
    return None if all(v > 0 for v in values) else "must be positive."


def _type_words(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string", list: "a list"}.get(kind, kind.__name__)


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def resolve_options(declared: Mapping[str, Option], given: Mapping[str, Any], role: str,
                    name: str, source: str = "recipe") -> dict[str, Any]:
    """The options of the ``role`` component ``name``: ``given`` checked against what it
    ``declared``, with the defaults filled in."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{source}: [{role}] must be a table of the {role} {name!r}'s "
                          f"options, not {given!r}.")
    for key in given:
        if key not in declared and given[key] is not None:  # None: an unset option
            has = (f"its options are {', '.join(declared)}" if declared else
                   "it declares no options")
            raise ConfigError(
                f"{source}: [{role}] {key} is not an option of the {role} {name!r} ({has})."
                + did_you_mean(key, declared)
                + f" The [{role}] table sets options of the {role} the run uses.")
    return {key: option.coerce(given[key], f"[{role}] {key}")
            if given.get(key) is not None else option.default
            for key, option in declared.items()}


def parse_assignment(text: str) -> tuple[str, str, Any]:
    """``"prior.df=5"`` -> ``("prior", "df", 5)``: a table (a section such as ``model`` or a
    role such as ``prior``), a key and a TOML value (a bare word is a string)."""
    import tomllib

    name, equals, raw = text.partition("=")
    table, dot, key = name.strip().partition(".")
    if not (equals and dot and table and key.strip()):
        raise ConfigError(f"--set {text!r}: write TABLE.KEY=VALUE, e.g. --set prior.df=5 or "
                          "--set model.latent_dim=2.")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return table.strip(), key.strip(), value


def assignments(texts: list[str] | None) -> dict[str, dict[str, Any]]:
    """The tables of ``--set`` assignments (see :func:`parse_assignment`)."""
    tables: dict[str, dict[str, Any]] = {}
    for text in texts or ():
        table, key, value = parse_assignment(text)
        tables.setdefault(table, {})[key] = value
    return tables
