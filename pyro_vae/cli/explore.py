"""`pyro-vae explore`: write the interactive latent-space explorer of a run as one HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.cli.common import positive_flag
from pyro_vae.errors import ConfigError

# The library (torch, the model) is imported inside run(), so that `pyro-vae --help` parses
# without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "explore", help="an interactive latent-space explorer: one HTML page that works offline",
        description="Write one self-contained HTML page (it loads nothing, so it works "
        "offline): the test encodings on a map coloured by label; point at or drag a point to "
        "see its decoded image; a slider per latent dimension; interpolation between two "
        "chosen points; a label selector for label-conditional runs. An MLP decoder runs in "
        "the page from its weights; any other decoder is shown on a precomputed grid.")
    parser.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    parser.add_argument("--out", help="FILE.html (default RUN_DIR/explorer.html)")
    parser.add_argument("--points", type=int, default=2000,
                        help="how many test images to encode and map (default 2000)")
    parser.add_argument("--grid", type=int, metavar="N",
                        help="for a decoder the page cannot run: N x N precomputed images over "
                        "the map's plane (default 24; 16 per label for a labelled model)")
    parser.add_argument("--data-dir")


def run(args: argparse.Namespace) -> int:
    from pyro_vae.explorer import explore

    out = Path(args.out) if args.out else Path(args.run_dir) / "explorer.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the explorer is one HTML page; give a file name "
                          "ending in .html.")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the file to write, e.g. "
                          f"{out / 'explorer.html'}.")
    positive_flag("points", args.points)
    positive_flag("grid", args.grid)
    explorer = explore(args.run_dir, args.data_dir, args.points, args.grid)
    explorer.save(out)
    how = ("decoded live in the page" if explorer.decoder_kind == "mlp" else
           "precomputed on a grid (this decoder does not run in the page)")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; {explorer.data['points']['count']} "
          f"test encodings; images {how}). Open it in a browser; it loads nothing.")
    return 0
