"""The command line answers ``--help`` without importing torch: ``pyro-vae --help`` and every
``pyro-vae COMMAND --help`` cost under half a CPU-second (user + system time of the process),
because the parsers are built from light modules and each command imports torch, Pyro and the
library's heavy modules inside its ``run`` (pyro_vae/cli/main.py).

This is a bound on what gets imported, measured as CPU time of a child process (robust to a
loaded machine, unlike wall time), the least of three runs.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from pyro_vae.cli.main import COMMANDS

#: The most CPU-seconds (user + system) that ``--help`` may cost; importing torch alone costs
#: about 1.5 s on the 2-core test machine, Pyro and matplotlib more.
HELP_CPU_SECONDS = 0.5
RUNS = 3


def cpu_seconds_of(argv: list[str]) -> float:
    """User + system CPU time of one child process running ``argv`` (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_costs_under_half_a_cpu_second(command):
    argv = [sys.executable, "-m", "pyro_vae", *([command] if command else []), "--help"]
    # The least of up to RUNS runs (it is under the bound as soon as one run is).
    least = float("inf")
    for _ in range(RUNS):
        least = min(least, cpu_seconds_of(argv))
        if least < HELP_CPU_SECONDS:
            break
    assert least < HELP_CPU_SECONDS, (
        f"`pyro-vae {command or ''} --help` cost {least:.2f} CPU-s (least of {RUNS}); something "
        "heavy is imported before parsing: run `python -X importtime -m pyro_vae "
        f"{command or ''} --help` to see what, and import it inside the command's run()")


def test_building_the_parser_imports_no_torch():
    code = ("import sys\n"
            "from pyro_vae.cli.main import build_parser\n"
            "parser = build_parser()\n"
            "try:\n"
            "    parser.parse_args(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "heavy = sorted(m for m in ('torch', 'pyro', 'matplotlib', 'sklearn', 'arviz')\n"
            "               if m in sys.modules)\n"
            "print('imported:', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout, result.stdout[-500:]


def test_the_help_lists_the_same_names_as_the_loaded_registries():
    """``train --help`` names the built-in priors, guides, ... read from the built-in modules'
    source without importing them; loading them registers exactly those names (their order is
    the order the modules happen to be imported in, so only the sets are compared)."""
    from pyro_vae import registry

    declared = registry.declared_builtin_names()
    registry.load_builtins()
    for kind_registry in (registry.PRIORS, registry.LIKELIHOODS, registry.GUIDES,
                          registry.NETWORKS, registry.OBJECTIVES, registry.MODEL_KINDS,
                          registry.DATASETS):
        # What the built-in modules registered (not what tests or plugins added since).
        builtin = tuple(name for name in kind_registry.choices()
                        if kind_registry.entry(name).module in registry.BUILTIN_MODULES)
        assert len(set(declared[kind_registry.kind])) == len(declared[kind_registry.kind])
        assert set(declared[kind_registry.kind]) == set(builtin), kind_registry.kind


def test_every_command_is_one_entry_that_names_its_module():
    import importlib

    for name, module in COMMANDS.items():
        loaded = importlib.import_module(module)
        assert callable(loaded.add_parser) and callable(loaded.run), name
