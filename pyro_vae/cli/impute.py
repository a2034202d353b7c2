"""`pyro-vae impute`: fill masked pixels from p(x)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.cli.common import load_run, positive_flag, refuse_kind
from pyro_vae.errors import ConfigError

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "impute", help="fill missing pixels of test images, against a mean-image baseline",
        description="Hide part of each test image (a centred box, random pixels or the "
        "bottom rows), fill it with E[missing | observed] by self-normalized importance "
        "sampling of p(z | observed), and report the mean squared error on the hidden pixels "
        "for the VAE and for the mean training image.")
    parser.add_argument("run_dir")
    parser.add_argument("--mask", choices=["box", "random", "bottom"], default="box")
    parser.add_argument("--fraction", type=float, default=0.25,
                        help="fraction of pixels hidden (default 0.25)")
    parser.add_argument("--num-samples", type=int, default=1000, help="K (default 1000)")
    parser.add_argument("--limit", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", help="output folder (default RUN_DIR/impute)")


def run(args: argparse.Namespace) -> int:
    import torch
    from pyro_vae.applications import imputation_error, impute, make_mask, save_imputation_picture
    from pyro_vae.runs import make_run_dir, write_json

    positive_flag("num-samples", args.num_samples)
    positive_flag("limit", args.limit)
    config, vae, data = load_run(args.run_dir, args.data_dir)
    refuse_kind(config, args.run_dir, "impute", ("labels",),
                "imputation fills pixels from p(x) of an unconditional VAE, but this model's "
                "decoder needs each image's label. Impute with a --model vae run.")
    refuse_kind(config, args.run_dir, "impute", ("completions",),
                "it already completes images from their given quadrants (its completions are "
                f"in {Path(args.run_dir) / 'completions.png'}); impute with box, random or "
                "bottom masks needs a "
                "--model vae run.")
    x = data.test_x[: args.limit]
    observed = make_mask(len(x), data.image_shape, args.mask, args.fraction)
    if observed.all():
        smallest = next((i / observed.shape[1] for i in range(1, observed.shape[1])
                         if not make_mask(len(x), data.image_shape, args.mask,
                                          i / observed.shape[1]).all()), None)
        raise ConfigError(
            f"--fraction {args.fraction} hides no pixel of the {len(x)} test images of shape "
            f"{tuple(data.image_shape)} with the {args.mask} mask, so there is nothing to "
            "impute" + (f"; the smallest fraction that hides a pixel is about {smallest:.3g}."
                        if smallest else "; give a larger --fraction."))
    mean_image = data.train_x.mean(0)
    torch.manual_seed(0)
    imputed = impute(vae, x, observed, mean_image, args.num_samples)
    report = imputation_error(x, observed, imputed, mean_image)
    out = Path(args.out) if args.out else Path(args.run_dir) / "impute"
    make_run_dir(out)
    write_json(out / "imputation.json", {"run_dir": args.run_dir, "mask": args.mask,
                                         "fraction": args.fraction,
                                         "num_samples": args.num_samples, **vars(report)})
    save_imputation_picture(out / "imputation.png", x, observed, imputed, data.image_shape)
    print(f"mean squared error on the {report.missing_fraction:.0%} hidden pixels of "
          f"{report.num_images} test images ({args.mask} mask): VAE {report.model_mse:.4f}, "
          f"mean image {report.baseline_mse:.4f}")
    print(f"wrote {out / 'imputation.json'} and {out / 'imputation.png'}")
    return 0
