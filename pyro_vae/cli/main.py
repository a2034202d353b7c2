"""The ``pyro-vae`` command line: builds the parser from one module per command and runs the
command, turning the library's errors into one paragraph and exit status 2."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
from typing import Sequence

from pyro_vae.cli.common import apply_threads
from pyro_vae.errors import PyroVAEError
from pyro_vae.registry import load_plugins

EPILOG = """examples:
  pyro-vae train                                   # embedded 8x8 digits, no download
  pyro-vae train models/mnist_vae_burda.toml --data-dir ../shared/data --epochs 10
  pyro-vae recipes                                 # the packaged recipes; train one by name:
  pyro-vae train mnist_vae_burda --data-dir ../shared/data --epochs 10
  pyro-vae components prior                        # the priors and their options
  pyro-vae evaluate runs/digits-... --num-samples 5000
  pyro-vae sample runs/digits-... --n 64 --out samples.png
  pyro-vae compare runs/digits-... --particles 1,5,50
  pyro-vae anomaly RUN_DIR --against fashion-mnist --data-dir ../shared/data
  pyro-vae impute RUN_DIR --mask box ; pyro-vae probe RUN_A RUN_B ; pyro-vae traverse RUN_DIR
  pyro-vae gaps RUN_DIR --n 100         # approximation/amortization gaps, NUTS vs q(z|x)
  pyro-vae explore RUN_DIR --out explorer.html     # interactive latent map: one offline page
"""

#: The commands, in the order of ``pyro-vae --help``: name -> the module that defines
#: ``add_parser(commands)`` and ``run(args) -> exit status``. Adding a command is one entry.
#: A command module imports only light modules at its top (argparse, the standard library,
#: pyro_vae.errors, .config, .registry, .cli.common) and imports torch, Pyro and the library's
#: heavy modules inside ``run``, so that ``pyro-vae --help`` and ``pyro-vae COMMAND --help``
#: parse without importing torch (tests/test_cli_speed.py holds them under 0.5 CPU-seconds).
COMMANDS = {"train": "pyro_vae.cli.train", "recipes": "pyro_vae.cli.recipes",
            "components": "pyro_vae.cli.components",
            "evaluate": "pyro_vae.cli.evaluate", "sample": "pyro_vae.cli.sample",
            "compare": "pyro_vae.cli.compare", "anomaly": "pyro_vae.cli.anomaly",
            "impute": "pyro_vae.cli.impute", "probe": "pyro_vae.cli.probe",
            "traverse": "pyro_vae.cli.traverse", "gaps": "pyro_vae.cli.gaps",
            "explore": "pyro_vae.cli.explore"}


def command_module(name: str):
    """The module of the command ``name`` (imported by name: the dispatcher's one lazy
    import, of a command module, never of the library)."""
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders written the Pyro way.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name in COMMANDS:
        command_module(name).add_parser(commands)
    for command in commands.choices.values():
        command.add_argument("--threads", type=int, metavar="N",
                             help="torch threads (default: $OMP_NUM_THREADS, else 1: fastest "
                             "for these models on a shared machine; see the README)")
        command.add_argument("--plugin", action="append", metavar="MODULE",
                             help="import MODULE first, so the priors, guides, likelihoods, "
                             "objectives, models and datasets it registers can be named "
                             "(repeatable; also the recipe key plugins = [...] and the "
                             "pyro_vae.plugins entry-point group)")
    return parser


def _early_plugins(argv: Sequence[str]) -> list[str]:
    """The --plugin modules of ``argv``, read before the parser is built (its help and the
    names it accepts include what they register)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    known, _ = early.parse_known_args(list(argv))
    return known.plugin


def _trust_command(error: PyroVAEError, argv: Sequence[str]) -> str:
    """For a run that names plugins not trusted yet: the command line that trusts them."""
    modules = [m for m in getattr(error, "modules", ()) if m not in _early_plugins(argv)]
    if not modules:
        return ""
    flags = [flag for module in modules for flag in ("--plugin", module)]
    return f" The command that trusts it: pyro-vae {shlex.join([*argv, *flags])}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins(_early_plugins(argv), "given with --plugin")
        args = build_parser().parse_args(argv)
        if args.command != "recipes":  # train applies its recipe's value once it has read it
            apply_threads(args.threads)
        return command_module(args.command).run(args)
    except PyroVAEError as error:
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        # Under torchrun every process meets the same error; the first one of each node says it.
        if rank == "0" or os.environ.get("LOCAL_RANK") == "0":
            who = "pyro-vae" if rank == "0" else f"pyro-vae (process {rank})"
            print(f"{who}: error: {error}{_trust_command(error, argv)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\npyro-vae: interrupted; nothing was left half-written.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`pyro-vae evaluate --json | head -1`): stop quietly, and keep
        # Python's final flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (RuntimeError, MemoryError) as error:
        # Imported here: it imports torch, which a command raising this has loaded already.
        from pyro_vae.faults import is_out_of_memory, out_of_memory_error

        if not is_out_of_memory(error):
            raise
        print(f"pyro-vae: error: {out_of_memory_error(error, args.command)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
