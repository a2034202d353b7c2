"""`pyro-vae components [ROLE] [NAME]`: the registered components of each role (priors,
guides, likelihoods, networks, model kinds, objectives, datasets) with their help line, their
capabilities and the options each declares (:mod:`pyro_vae.options`), as text or, with
``--markdown``, as the Markdown reference of the user guide
(``docs/source/guide/components_reference.md`` is written by
``pyro-vae components --builtin --markdown``).

Plugins given with ``--plugin MODULE`` (or installed through the ``pyro_vae.plugins`` entry
point) are listed with the library's own components, each marked with its module.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable

from pyro_vae.config.recipe import ROLES
from pyro_vae.errors import ConfigError
from pyro_vae.registry import DATASETS, Entry, Registry, declared_builtin_names, suggestion

#: The command that writes the user guide's reference page.
REFERENCE_COMMAND = ("pyro-vae components --builtin --markdown > "
                     "docs/source/guide/components_reference.md")


@dataclass(frozen=True)
class Role:
    """One role of components: its registry, what it is, the setting that names the
    component a run uses and the table of its options (``""``: it has none)."""

    name: str
    registry: Registry
    what: str
    named_by: str
    table: str


#: What each role's components are, in words.
_WHAT = {"prior": "the prior p(z) of the latent code",
         "guide": "the approximate posterior q(z|x), amortized by the encoder",
         "likelihood": "the observation model p(x|z)",
         "network": "the encoder and decoder networks",
         "kind": "the model kind: how prior, guide, likelihood and networks are put together",
         "objective": "the bound or estimator that training optimizes",
         "dataset": "the source of the images"}


def roles() -> dict[str, Role]:
    """The roles, in the order they are listed: those with an options table (the recipe's
    ``[prior]``, ``[guide]``, ...) and the datasets."""
    found = {role: Role(role, registry, _WHAT.get(role, role), f"[{section}] {key}", role)
             for role, (registry, section, key) in ROLES.items()}
    found["dataset"] = Role("dataset", DATASETS, _WHAT["dataset"], "[data] dataset", "")
    return found


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "components", help="list the registered priors, guides, likelihoods, networks, model "
        "kinds, objectives and datasets, with their options",
        description="The components a recipe can name, by role, with each one's help line, "
        "capabilities and options (type, default, meaning and the old [model] or [train] key "
        "it replaces). A component's options go in the recipe table of its role ([prior] "
        "components = 50) or on the command line (--set prior.components=50). Components "
        "registered by plugins are listed with --plugin MODULE.")
    parser.add_argument("role", nargs="?", metavar="ROLE",
                        help="only this role: " + ", ".join(roles()))
    parser.add_argument("name", nargs="?", metavar="NAME", help="only this component")
    parser.add_argument("--markdown", action="store_true",
                        help="write a Markdown reference instead of text")
    parser.add_argument("--builtin", action="store_true",
                        help="only the library's own components, leaving out plugins' (the "
                        "user guide's reference page: " + REFERENCE_COMMAND + ")")


def run(args: argparse.Namespace) -> int:
    selected = select(args.role, args.name, builtin_only=args.builtin)
    print(markdown(selected) if args.markdown else text(selected), end="")
    return 0


def select(role: str | None = None, name: str | None = None,
           builtin_only: bool = False) -> list[tuple[Role, list[Entry]]]:
    """The roles asked for, each with its entries (built-ins first, in the order their
    modules register them, then plugins' in the order they were loaded), or a
    :class:`ConfigError` with "did you mean" for an unknown role or name."""
    every = roles()
    if role is not None and role not in every:
        raise ConfigError(f"{role!r} is not a role of components; the roles are "
                          f"{', '.join(every)}." + suggestion(role.rstrip("s"), every)
                          + _elsewhere(role, every.values())
                          + " Run pyro-vae components to list them all.")
    chosen = [every[role]] if role is not None else list(every.values())
    selected = [(each, entries(each.registry, builtin_only)) for each in chosen]
    if name is None:
        return selected
    (only, listed), = selected
    names = [entry.name for entry in listed]
    if name not in names:
        others = [other for other in every.values() if other is not only]
        raise ConfigError(
            f"{name!r} is not a registered {only.name}; the {only.name} components are "
            f"{', '.join(names)}." + suggestion(name, names) + _elsewhere(name, others)
            + f" A {only.name} of your own is listed once its plugin module is loaded: "
            f"pyro-vae components {only.name} {name} --plugin MODULE.")
    return [(only, [entry for entry in listed if entry.name == name])]


def _elsewhere(name: str, others: Iterable[Role]) -> str:
    """Where ``name`` is registered in another role, the command that lists it."""
    for other in others:
        if name in other.registry.choices():
            return (f" {name!r} is a {other.name}: pyro-vae components {other.name} {name}.")
    return ""


def entries(registry: Registry, builtin_only: bool = False) -> list[Entry]:
    """``registry``'s entries: the library's own in the order of its modules' source (the
    same whichever module a process happened to import first), then the others."""
    registered = registry.choices()
    declared = [name for name in declared_builtin_names().get(registry.kind, ())
                if name in registered]
    builtin = [registry.entry(name) for name in declared]
    if builtin_only:
        return builtin
    return builtin + [registry.entry(name) for name in registered if name not in declared]


def type_words(option: Any) -> str:
    """An option's type as a reader writes it: ``int``, ``float or str``, ``list of int``,
    with the values it must be one of."""
    kinds = option.kind if isinstance(option.kind, tuple) else (option.kind,)
    words = " or ".join(kind.__name__ for kind in kinds)
    if list in kinds and option.items is not None:
        words = words.replace("list", f"list of {option.items.__name__}")
    if option.choices:
        words += ": " + " | ".join(_toml(choice) for choice in option.choices)
    return words


def default_words(option: Any, unset: str) -> str:
    """An option's default as TOML writes it, or ``unset`` where it declares none (the
    component chooses, as its help says)."""
    return unset if option.default is None else _toml(option.default)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


def _origin(entry: Entry) -> str:
    """Where an entry that is not the library's own comes from."""
    if entry.plugin:
        return f"the plugin {entry.plugin}"
    if not (entry.module == "pyro_vae" or entry.module.startswith("pyro_vae.")):
        return entry.module or "your code"
    return ""


# --- text ---------------------------------------------------------------------------------

WIDTH = 96


def text(selected: list[tuple[Role, list[Entry]]]) -> str:
    """The roles and their entries as plain text."""
    blocks = []
    for role, listed in selected:
        head = (f"{role.name}: {role.what}; named by {role.named_by}"
                + (f", options in [{role.table}] or --set {role.table}.OPTION=VALUE"
                   if role.table else ""))
        lines = textwrap.wrap(head, WIDTH, subsequent_indent="    ")
        for entry in listed:
            lines += _text_entry(entry)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _text_entry(entry: Entry) -> list[str]:
    indent = " " * 6
    lines = textwrap.wrap(f"{entry.name}: {entry.help or '(no help line)'}", WIDTH,
                          initial_indent="  ", subsequent_indent=indent)
    if _origin(entry):
        lines.append(f"{indent}from {_origin(entry)}")
    if entry.capabilities:
        lines += textwrap.wrap(", ".join(sorted(entry.capabilities)), WIDTH,
                               initial_indent=f"{indent}capabilities: ",
                               subsequent_indent=indent + "    ")
    for option_name, option in entry.options.items():
        facts = f"{type_words(option)}, default {default_words(option, 'see below')}"
        if option.legacy:
            facts += f"; old key {option.legacy}"
        lines += textwrap.wrap(f"option {option_name} ({facts})", WIDTH,
                               initial_indent=indent, subsequent_indent=indent + "    ")
        lines += textwrap.wrap(option.help or "(no help given)", WIDTH,
                               initial_indent=indent + "    ",
                               subsequent_indent=indent + "    ")
    return lines


# --- Markdown -----------------------------------------------------------------------------

_PLURAL = {"kind": "Model kinds", "prior": "Priors", "guide": "Guides",
           "likelihood": "Likelihoods", "network": "Networks", "objective": "Objectives",
           "dataset": "Datasets"}


def markdown(selected: list[tuple[Role, list[Entry]]]) -> str:
    """The roles and their entries as a Markdown (MyST) reference page."""
    parts = [
        "# Components reference",
        f"<!-- Written by `{REFERENCE_COMMAND}`; do not edit it by hand: run that command "
        "again (tests/test_components_command.py checks that this page is current). -->",
        "Every component a recipe can name, by role: its help line, its capabilities and the "
        "options it declares. A recipe names the component of a role in `[model]` (`[train] "
        "objective`, `[data] dataset`) and sets its options in the table of its role, which "
        "applies to the component the run uses:",
        "```toml\n[model]\nprior = \"mixture\"\n\n[prior]\ncomponents = 50\n```",
        "On the command line, `--set prior.components=50` sets the same option. Unknown "
        "options and values of the wrong type are refused with \"did you mean\", and a run's "
        "`config.toml` records every option of its components, defaults included. The *old "
        "key* of an option is the `[model]` or `[train]` key that set it before components "
        "owned their options; recipes and saved runs that still use it load unchanged (the "
        "value moves to the table of the component in use). `pyro-vae components` prints "
        "this list in the terminal, with the components of your plugins (`--plugin MODULE`).",
    ]
    for role, listed in selected:
        parts.append(f"## {_PLURAL.get(role.name, role.name)}")
        where = f"Named by `{role.named_by} = \"NAME\"`"
        where += (f"; options in the `[{role.table}]` table or `--set "
                  f"{role.table}.OPTION=VALUE`." if role.table else "; it declares no "
                  "options table.")
        parts.append(f"{_escape(role.what[0].upper() + role.what[1:])}. {where}")
        for entry in listed:
            parts += _markdown_entry(role, entry)
    return "\n\n".join(parts) + "\n"


def _markdown_entry(role: Role, entry: Entry) -> list[str]:
    parts = [f"### {entry.name}", _escape(entry.help or "(no help line)")]
    facts = []
    if _origin(entry):
        facts.append(f"From {_escape(_origin(entry))}.")
    if entry.capabilities:
        facts.append("Capabilities: " + ", ".join(f"`{word}`"
                                                   for word in sorted(entry.capabilities)) + ".")
    if not entry.options:
        facts.append("No options.")
    parts.append(" ".join(facts))
    if entry.options:
        rows = ["| Option | Type | Default | Meaning | Old key |",
                "| --- | --- | --- | --- | --- |"]
        rows += [f"| `{name}` | {_escape(type_words(option))} | "
                 f"{_code(default_words(option, '(see meaning)'))} | {_escape(option.help or '')} | "
                 f"{_code(option.legacy) if option.legacy else ''} |"
                 for name, option in entry.options.items()]
        parts.append("\n".join(rows))
    return parts


def _code(words: str) -> str:
    return words if words.startswith("(") else f"`{words}`"


def _escape(words: str) -> str:
    """``words`` as literal Markdown text in a paragraph or a table cell."""
    for special in "\\`*_[]<>|$":
        words = words.replace(special, "\\" + special)
    return words.replace("\n", " ")
