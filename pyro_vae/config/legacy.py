"""Keys of ``[model]`` and ``[train]`` that became options of a component.

Before components owned their options (:mod:`pyro_vae.options`), every option was a field of
the central tables: ``[model] prior_components = 50``, ``[model] num_classes = 10``. Such a
key is now declared by the component that uses it, with ``Option(..., legacy="KEY")``, and
set in that component's own table (``[prior] components = 50``, ``[kind] num_classes = 10``).
Recipes and saved runs written the old way still load: :func:`move_legacy_keys` moves each
old key into the table of the component in use that declares it. A key no component in use
declares is dropped when it holds a declared default (a saved run's ``config.toml`` wrote
every key) and refused otherwise, in one paragraph naming the components that use it; in a
saved run (``saved``) one that version 0.2 ignored unused (:data:`IGNORED_UNUSED`: a run of
the enumeration kept its ``temperature_decay``) is dropped too, so every 0.2 run opens. An old key and the new table giving two
values for one option are refused too, unless the old key is the newer word (a command-line
flag over a saved run's table).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry

#: (role, registry, section and key naming the component in use, default name).
Role = tuple[str, Registry, str, str, str]

#: The old keys that version 0.2 accepted, and ignored, with a component that does not use
#: them (it refused the others: ``prior_components``, ``flow_layers``, ``guide_rank``, ...).
IGNORED_UNUSED = frozenset({
    "alpha", "temperature", "temperature_min", "temperature_decay", "gaussian_scale",
    "standardize", "num_classes", "quadrants", "categorical_latents", "categories",
    "discrete_prior", "top_latent_dim", "top_hidden_dims"})


def claimants(key: str, roles: list[Role]) -> list[tuple[str, str, str, Any]]:
    """Every registered component declaring ``key`` as a legacy key: (role, component name,
    option name, default)."""
    found = []
    for role, registry, *_ in roles:
        for name in registry.choices():
            for option_name, option in registry.entry(name).options.items():
                if getattr(option, "legacy", "") == key:
                    found.append((role, name, option_name, option.default))
    return found


def move_legacy_keys(mapping: Mapping[str, Any], roles: list[Role],
                     fields: Mapping[str, set[str]], source: str,
                     legacy_wins: bool = False, saved: bool = False) -> dict[str, Any]:
    """``mapping`` (a recipe's tables) with every legacy key of a section in ``fields`` moved
    to the table of the role whose component in use declares it. Where the role's table
    gives the option another value, the old key wins with ``legacy_wins`` (it is the newer
    word: a command-line flag over a saved run's tables) and is refused otherwise."""
    mapping = {name: dict(table) if isinstance(table, Mapping) else table
               for name, table in mapping.items()}
    for section, known in fields.items():
        table = mapping.get(section)
        if not isinstance(table, dict):
            continue
        for key in [k for k in table if k not in known]:
            found = claimants(key, roles)
            if not found:
                continue  # not a legacy key: the section's own check names it
            value = table.pop(key)
            in_use = [(role, option) for role, name, option, _ in found
                      if name == _component_in_use(mapping, roles, role)]
            for role, option in in_use:  # flow_layers: the flow prior's and the IAF's layers
                target = mapping.setdefault(role, {})
                if not isinstance(target, dict):
                    continue  # resolving the options names the table that is not one
                if target.get(option, value) != value and not legacy_wins:
                    raise ConfigError(
                        f"{source}: [{section}] {key} = {value!r} and [{role}] {option} = "
                        f"{target[option]!r} set one option twice; keep [{role}] {option} "
                        f"(the old key {key} is its former name).")
                target[option] = value
            if in_use:
                continue
            if value is None or saved and key in IGNORED_UNUSED \
                    or any(value == default for *_, default in found):
                continue  # as 0.2: a record of an option its components do not use
            users = " or ".join(dict.fromkeys(f"{role} = \"{name}\"" for role, name, *_ in found))
            role, _, option, _ = found[0]
            raise ConfigError(
                f"{source}: [{section}] {key} is the option {option!r} of {users}, which this "
                f"recipe does not use; remove {key}, or choose that {role} (its options go in "
                f"its own table: [{role}] {option} = {value!r}).")
    return mapping


def _component_in_use(mapping: Mapping[str, Any], roles: list[Role], role: str) -> str:
    for name, _, section, key, default in roles:
        if name == role:
            table = mapping.get(section, {})
            return table.get(key, default) if isinstance(table, Mapping) else default
    return ""


def section_fields(section_cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(section_cls)}
