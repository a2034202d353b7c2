"""`pyro-vae recipes`: the recipes packaged with the library."""

from __future__ import annotations

import argparse

from pyro_vae.config import RECIPES, recipe_names


def add_parser(commands) -> None:
    commands.add_parser("recipes", help="list the recipes packaged with pyro-vae",
                        description="The recipes shipped with the library (the repository's "
                        "models/): `pyro-vae train NAME` trains one, and `--path` shows "
                        "where they are to copy and edit.").add_argument(
        "--path", action="store_true", help="print the folder that holds them")


def run(args: argparse.Namespace) -> int:
    if args.path:
        print(RECIPES.resolve())
        return 0
    for name in recipe_names():
        comment = (RECIPES / f"{name}.toml").read_text(encoding="utf-8").split("\n", 1)[0]
        about = comment.lstrip("# ").strip() if comment.startswith("#") else ""
        print(f"{name:<28} {about}".rstrip())
    return 0
