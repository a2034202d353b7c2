"""Keys of ``[model]`` and ``[train]`` that became options of a component.

Before components owned their options (:mod:`pyro_vae.options`), every option was a field of
the central tables: ``[model] prior_components = 50``, ``[model] num_classes = 10``. Such a
key is now declared by the component that uses it, with ``Option(..., legacy="KEY")``, and
set in that component's own table (``[prior] components = 50``, ``[kind] num_classes = 10``).
Recipes and saved runs written the old way still load: :func:`move_legacy_keys` moves each
old key into the table of the component in use that declares it. A key no component in use
declares is dropped when it holds a declared default (a saved run's ``config.toml`` wrote
every key) and refused otherwise, in one paragraph naming the components that use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry

#: (role, registry, section and key naming the component in use, default name).
Role = tuple[str, Registry, str, str, str]


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
                     fields: Mapping[str, set[str]], source: str) -> dict[str, Any]:
    """``mapping`` (a recipe's tables) with every legacy key of a section in ``fields`` moved
    to the table of the role whose component in use declares it (an explicit legacy key
    wins over the role table's value, as the newer word: the command line's flags)."""
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
                if isinstance(target, dict):
                    target[option] = value
            if in_use:
                continue
            if value is None or any(value == default for *_, default in found):
                continue  # a saved run's record of an option its components do not use
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
