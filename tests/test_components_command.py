"""`pyro-vae components [ROLE] [NAME]` lists the registered components of each role with their
help line, capabilities and options (type, default, help, old key); ``--markdown`` writes the
user guide's reference page, which must stay equal to the command's output."""

import re
from pathlib import Path

import pytest

from helpers import run_cli
from pyro_vae.cli.components import REFERENCE_COMMAND, roles
from pyro_vae.registry import load_builtins

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "source" / "guide" / "components_reference.md"
EXAMPLES = ROOT / "examples" / "pyro_vae_example_plugin"


def builtin_entries():
    """(role, entry) of every component the library itself registers."""
    load_builtins()
    return [(role, role.registry.entry(name)) for role in roles().values()
            for name in role.registry.choices()
            if role.registry.entry(name).module.startswith("pyro_vae.")
            and not role.registry.entry(name).plugin]


def test_the_reference_page_is_the_commands_output(capsys):
    code, out, err = run_cli(capsys, "components", "--builtin", "--markdown")
    assert code == 0, err
    assert PAGE.read_text(encoding="utf-8") == out, (
        f"{PAGE.relative_to(ROOT)} is not what the command writes now (a component, its help "
        f"or its options changed); regenerate it from the repository root: {REFERENCE_COMMAND}")


def test_the_listing_names_every_role_component_and_option(capsys):
    code, out, _ = run_cli(capsys, "components")
    assert code == 0
    for role in roles():
        assert re.search(rf"^{role}: ", out, re.M), role
    flat = " ".join(out.split())
    for role, entry in builtin_entries():
        assert re.search(rf"^  {re.escape(entry.name)}: ", out, re.M), (role.name, entry.name)
        for name, option in entry.options.items():
            assert f"option {name} (" in flat, (entry.name, name)
            if option.legacy:
                assert f"old key {option.legacy}" in flat, (entry.name, name)


def test_one_component_shows_its_options_types_defaults_and_old_keys(capsys):
    code, out, _ = run_cli(capsys, "components", "kind", "vae")
    assert code == 0
    assert out.startswith("kind: ") and "\n  vae: " in out
    assert "\n  cvae: " not in out and "prior:" not in out  # only what was asked for
    flat = " ".join(out.split())
    assert "option stochastic_layers (int: 1 | 2, default 1; old key stochastic_layers)" in flat
    assert "option top_hidden_dims (list of int, default [50, 50]" in flat
    assert 'option bayesian_decoder (str: "none" | "last" | "all", default "none"' in flat
    assert "capabilities: components, estimator_lab, latent_means, pictures" in flat


def test_a_role_lists_its_components_only(capsys):
    code, out, _ = run_cli(capsys, "components", "guide")
    assert code == 0
    assert [line.split(":")[0].strip() for line in out.splitlines()
            if re.match(r"^  \w+: ", line)] == ["diagonal", "lowrank", "iaf"]
    assert "option rank (int, default 2; old key guide_rank)" in out


@pytest.mark.parametrize("argv, words", [
    (["priors"], ["'priors' is not a role", "Did you mean 'prior'?"]),
    (["mixture"], ["'mixture' is a prior: pyro-vae components prior mixture"]),
    (["prior", "mixtur"], ["'mixtur' is not a registered prior", "Did you mean 'mixture'?",
                           "--plugin MODULE"]),
    (["guide", "vamp"], ["'vamp' is a prior: pyro-vae components prior vamp"]),
])
def test_an_unknown_role_or_name_is_one_paragraph_with_exit_2(capsys, argv, words):
    code, out, err = run_cli(capsys, "components", *argv)
    assert code == 2 and out == ""
    assert err.startswith("pyro-vae: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


def test_a_plugins_components_are_listed_with_their_options(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    code, out, _ = run_cli(capsys, "components", "prior", "--plugin",
                           "pyro_vae_example_plugin")
    assert code == 0
    flat = " ".join(out.split())
    assert "student_t: " in flat and "from the plugin pyro_vae_example_plugin" in flat
    assert "option df (float, default 3.0)" in flat
    code, out, _ = run_cli(capsys, "components", "prior", "--builtin", "--plugin",
                           "pyro_vae_example_plugin")
    assert code == 0 and "student_t" not in out and "\n  mixture: " in out
    code, out, _ = run_cli(capsys, "components", "prior", "student_t", "--markdown",
                           "--plugin", "pyro_vae_example_plugin")
    assert code == 0
    assert "### student_t" in out and "From the plugin pyro\\_vae\\_example\\_plugin." in out
    assert "| `df` | float | `3.0` |" in out


def test_the_markdown_has_a_row_of_five_cells_for_every_option(capsys):
    code, out, _ = run_cli(capsys, "components", "--builtin", "--markdown")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    # A "|" in a help text must be escaped, or the row would gain cells.
    assert all(len(re.split(r"(?<!\\)\|", row)) == 7 for row in rows), rows
    expected = [(entry.name, name) for _, entry in builtin_entries() for name in entry.options]
    assert len(rows) == len(expected) > 20
    for entry_name, name in expected:
        section = out.split(f"\n### {entry_name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"| `{name}` |" in section, (entry_name, name)
