"""`pyro-vae probe`: a linear probe of the codes of one or more runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.cli.common import check_out_folder, load_run, refuse_kind
from pyro_vae.errors import ConfigError

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "probe", help="linear-probe accuracy of the latent means, for one or several runs",
        description="Fit a logistic regression on the encoder means of the training images "
        "and report its test accuracy; with several runs (e.g. different latent sizes), plot "
        "accuracy against latent size.")
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="output folder (default FIRST_RUN_DIR/probe)")


def run(args: argparse.Namespace) -> int:
    from pyro_vae.applications import linear_probe_accuracy
    from pyro_vae.plots import save_figure, subplots
    from pyro_vae.protocol import has
    from pyro_vae.runs import make_run_dir, write_json

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "probe"
    check_out_folder(out)  # before the work, not after it
    rows = []
    for run_dir in args.run_dirs:
        config, vae, data = load_run(run_dir, args.data_dir)
        refuse_kind(config, run_dir, "probe", ("labels",),
                    "its encoder q(z|x, y) is given the label, so a probe predicting the label "
                    "from its code would measure nothing. Probe a --model vae run"
                    + (" (M2's own classifier accuracy is test_accuracy in RUN_DIR/summary.json)."
                       if has(config, "classifier") else "."))
        refuse_kind(config, run_dir, "probe", ("no_latents",),
                    "it has no latent code to probe; probe a --model vae or quadrant_cvae run.")
        if data.train_y is None or data.test_y is None:
            raise ConfigError(f"{run_dir} was trained on {config.data.dataset!r}, which has no "
                              "labels; a linear probe needs labelled data.")
        accuracy = linear_probe_accuracy(vae, data.train_x, data.train_y, data.test_x,
                                         data.test_y)
        rows.append({"run_dir": run_dir, "latent_dim": config.model.latent_dim,
                     "test_accuracy": accuracy})
        print(f"{run_dir}: latent size {config.model.latent_dim}, linear-probe test accuracy "
              f"{accuracy:.4f}")
    make_run_dir(out)
    write_json(out / "probe.json", rows)
    if len(rows) > 1:

        rows_sorted = sorted(rows, key=lambda r: r["latent_dim"])
        figure, axis = subplots(figsize=(5, 3.4))
        axis.plot([r["latent_dim"] for r in rows_sorted],
                  [r["test_accuracy"] for r in rows_sorted], marker="o")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("latent size")
        axis.set_ylabel("linear-probe test accuracy")
        axis.grid(alpha=0.3)
        save_figure(figure, out / "probe.png")
    print(f"wrote {out / 'probe.json'}" + (" and probe.png" if len(rows) > 1 else ""))
    return 0
