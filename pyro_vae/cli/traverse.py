"""`pyro-vae traverse`: latent traversals of a test image."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.cli.common import load_run, refuse_kind
from pyro_vae.errors import ConfigError

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "traverse", help="latent traversals: decode one coordinate swept across the prior",
        description="Decode the encoding of a test image with one latent coordinate swept "
        "from -3 to 3, one row per latent dimension, the most active first.")
    parser.add_argument("run_dir")
    parser.add_argument("--index", type=int, default=0, help="which test image (default 0)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="FILE.png (default RUN_DIR/traversals.png)")


def run(args: argparse.Namespace) -> int:
    from pyro_vae.applications import save_traversals
    from pyro_vae.protocol import display_name, has

    out = Path(args.out) if args.out else Path(args.run_dir) / "traversals.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: traversals are a PNG picture; give a file name "
                          "ending in .png.")
    config, vae, data = load_run(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "traverse", ("completions",),
                "it completes the missing quadrants of an image from the given ones and has no "
                "code of a whole image to sweep; its completions are in "
                f"{Path(args.run_dir) / 'completions.png'}. "
                "Traverse a --model vae, cvae or m2 run.")
    if not (has(config, "pictures") and has(config, "latent_means")):
        raise ConfigError(f"{args.run_dir} holds a model whose kind ({config.model.kind}) does "
                          "not declare both capabilities \"latent_means\" and \"pictures\" "
                          "(posterior, latent_mean and decode; see pyro_vae.protocol), which a "
                          "traversal encodes and decodes with.")
    if not 0 <= args.index < len(data.test_x):
        raise ConfigError(f"--index {args.index} is outside the {len(data.test_x)} test images.")
    x = data.test_x[args.index: args.index + 1]
    labels = None
    if has(config, "labels"):  # q(z|x, y) and p(x|z, y) take the image's label
        if data.test_y is not None:
            labels = torch_cat_first(data.test_y[args.index: args.index + 1], data.test_y)
        elif has(config, "classifier"):  # its classifier's guess q(y|x)
            labels = vae.classify(torch_cat_first(x, data.test_x))
        else:
            raise ConfigError(f"{args.run_dir} holds a {display_name(config)}, whose codes need "
                              f"each image's label, but {config.data.dataset!r} has no test "
                              "labels; use the dataset it was trained on.")
    dims = save_traversals(out, vae, torch_cat_first(x, data.test_x), data.image_shape,
                           y=labels)
    print(f"wrote {out} (dimensions {dims}"
          + (f", label {int(labels[0])})" if labels is not None else ")"))
    return 0


def torch_cat_first(first, rest):
    """The chosen image first, then the test set (whose spread ranks the dimensions)."""
    import torch

    return torch.cat([first, rest[:2000]])
