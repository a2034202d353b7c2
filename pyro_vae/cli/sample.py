"""`pyro-vae sample`: draw images from a trained model (a picture or an .npz)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from pyro_vae.cli.common import positive_flag, seed_flag
from pyro_vae.errors import ConfigError, PyroVAEError

# torch and the library's heavy modules are imported inside the functions that use them,
# so that `pyro-vae --help` parses without importing torch (see cli/main.py).


def add_parser(commands) -> None:
    parser = commands.add_parser("sample", help="draw images from a trained model",
                                 description="Draw x ~ p(x): a grid picture (.png) or the raw "
                                 "samples in data space as array x (.npz, with their means).")
    parser.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    parser.add_argument("--n", type=int, default=64,
                        help="how many images (default 64); a cvae/m2 picture without --label "
                        "shows every label in turn, --n rounded down to a multiple of the "
                        "number of labels")
    parser.add_argument("--out", help="FILE.png or FILE.npz (default RUN_DIR/samples-N.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", type=int, help="cvae/m2: draw x ~ p(x|y) for this label "
                        "(default: a grid of every label x several z)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from pyro_vae.data import data_shape, is_vector_shape
    from pyro_vae.faults import check_memory, decoded_bytes
    from pyro_vae.plots import save_image_grid, save_vector_scatter
    from pyro_vae.protocol import has
    from pyro_vae.runs import atomic_write_bytes, load_trained

    positive_flag("n", args.n)
    seed_flag(args.seed)
    out = Path(args.out) if args.out else Path(args.run_dir) / f"samples-{args.n}.png"
    if out.suffix not in (".png", ".npz"):
        raise ConfigError(f"--out {out} must end in .png (a picture) or .npz (raw samples).")
    config, vae, checkpoint = load_trained(args.run_dir)
    shape = tuple(checkpoint["image_shape"])
    # z, the decoder's output, its mean and a draw: four arrays of n images.
    check_memory(f"sample --n {args.n}", 4 * decoded_bytes(args.n, shape,
                                                            config.model.latent_dim),
                 "cpu", "draw fewer samples at a time (a smaller --n, several files).")
    torch.manual_seed(args.seed)
    title = f"E[x|z], z ~ p(z) ({config.data.dataset})"
    labels = _sample_labels(args, config, vae)
    with torch.no_grad():
        z, output = vae.generate(args.n) if labels is None else vae.generate(args.n,
                                                                             labels=labels)
        means = _means(vae, z, output, labels)
        draws = vae.likelihood(output).sample()
    columns = min(args.n, 8 if args.n <= 64 else 16)
    if labels is not None:
        title = f"E[x|z, y={args.label}], z ~ {_prior_of(vae)} ({config.data.dataset})"
    elif has(config, "labels") and out.suffix == ".png":
        # Every label in turn: with --n of at least the number of labels C, a grid of one row
        # per label and n // C draws of z shared by the rows (n rounded down to a multiple of
        # C); with fewer, one image each of labels 0, 1, …, n − 1.
        if args.n >= config.model.num_classes:
            columns = args.n // config.model.num_classes
            with torch.no_grad():
                means = vae.label_grid(columns)
            title = f"E[x|z, y]: one row per label, {columns} z ~ {_prior_of(vae)} per row"
        else:
            columns = args.n
            title = f"E[x|z, y] for labels 0 … {args.n - 1}, z ~ {_prior_of(vae)}"
    if out.suffix == ".png" and is_vector_shape(shape):  # vectors: a scatter, not a picture
        save_vector_scatter(out, draws, None, f"draws x ~ p(x) ({config.data.dataset})")
    elif out.suffix == ".png":
        save_image_grid(out, means, shape, columns, title)
    else:
        buffer = io.BytesIO()  # the data's own layout: (N, D) for vectors, (N, C, H, W) else
        arrays = {"x": draws.reshape(args.n, *data_shape(shape)).numpy(),
                  "mean": means.reshape(args.n, *data_shape(shape)).numpy(), "z": z.numpy()}
        if has(config, "labels"):  # the label each sample was drawn for (default: cycling)
            arrays["y"] = (vae.cycle_labels(args.n) if labels is None else labels).numpy()
        np.savez(buffer, **arrays)
        atomic_write_bytes(out, buffer.getvalue())
    rounded = len(means) != args.n
    print(f"wrote {len(means)} samples to {out}" + (
        f" ({columns} per label: --n {args.n} rounded down to a multiple of the "
        f"{config.model.num_classes} labels)" if rounded else ""))
    if labels is not None:
        print(_label_fidelity_report(args.run_dir, config, labels, means, draws))
    return 0


def _means(vae, z, output, labels):
    """E[x|z] of the draws: from the decoder output where the model is built from components
    (its likelihood component's ``mean``, the same decoder pass as the draws), else the
    protocol's ``decode(z)`` (``decode(z, y)`` for a model that takes labels)."""
    component = getattr(vae, "likelihood", None)
    if callable(getattr(component, "mean", None)):
        return component.mean(output)
    return vae.decode(z) if labels is None else vae.decode(z, labels)


def _prior_of(vae) -> str:
    """How a picture's title names the prior its z's were drawn from."""
    return "p(z|y)" if getattr(getattr(vae, "prior", None), "label_conditional", False) \
        else "p(z)"


def _label_fidelity_report(run_dir: str, config, labels, means, draws) -> str:
    """How many of the ``--label`` samples the run's classifier recognises as that label."""
    from pyro_vae import fidelity
    from pyro_vae.training import prepare_data

    path = Path(run_dir) / fidelity.CLASSIFIER_FILE
    if path.exists():
        try:
            classifier = fidelity.load_label_classifier(path)
        except PyroVAEError as error:  # the samples are written: report, do not fail
            return f"label fidelity not measured: {error}"
    else:  # a run trained before the classifier was kept: fit it again
        try:
            data = prepare_data(config, check=False)
        except PyroVAEError as error:
            return f"label fidelity not measured (no {path.name} in the run, and {error})"
        classifier = fidelity.fit_label_classifier(
            data.train_x, data.train_y, config.model.num_classes, data.test_x, data.test_y,
            seed=config.train.seed)
    pixels = means[0].numel()
    if (classifier.num_pixels, classifier.num_classes) != (pixels, config.model.num_classes):
        return (f"label fidelity not measured: {path} was fitted to {classifier.num_pixels} "
                f"values and {classifier.num_classes} labels, but this run's images have "
                f"{pixels} and its model {config.model.num_classes} labels (a file of another "
                "run?); delete it and it will be fitted again from the training data.")
    label = int(labels[0])
    if classifier.classes_seen is not None and label not in classifier.classes_seen:
        return (f"label fidelity not measured: the training split has no images of label "
                f"{label}, so the run's classifier cannot recognise it")
    return "\n".join(fidelity.describe(fidelity.fidelity_of(images, labels, classifier, what))
                     for images, what in ((means, "means"), (draws, "draws")))


def _sample_labels(args: argparse.Namespace, config, vae):
    """The labels ``--label`` asks for (``None`` without it); checked against the model."""
    import torch
    from pyro_vae.models.conditional import check_label_flag
    from pyro_vae.protocol import has

    if has(config, "completions"):
        raise ConfigError(f"{args.run_dir} holds a {config.model.kind} model, which completes "
                          "given quadrants rather than drawing images from nothing; its "
                          f"completions are in {Path(args.run_dir) / 'completions.png'}.")
    if not has(config, "pictures"):
        raise ConfigError(f"{args.run_dir} holds a model whose kind ({config.model.kind}) does "
                          "not declare the capability \"pictures\" (generate, decode and "
                          "likelihood; see pyro_vae.protocol), so there is nothing to draw "
                          "images with. Add those methods and the capability to the model, or "
                          "score it with evaluate.")
    if args.label is None:
        return None
    if not has(config, "labels"):
        raise ConfigError(f"--label {args.label}: {args.run_dir} holds an unconditional VAE, "
                          "which draws x ~ p(x) with no label. Train one with --model cvae to "
                          "draw from p(x|y), or leave out --label.")

    check_label_flag(args.label, config.model.num_classes)
    return torch.full((args.n,), args.label, dtype=torch.long)
