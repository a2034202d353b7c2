"""The ``pyro-vae`` command line: one module per command, each with ``add_parser`` and
``run``; :mod:`~pyro_vae.cli.main` builds the parser and dispatches (the console script
``pyro-vae`` and ``python -m pyro_vae`` call :func:`main`)."""

from pyro_vae.cli.main import apply_threads, build_parser, main

__all__ = ["apply_threads", "build_parser", "main"]
