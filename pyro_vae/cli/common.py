"""What several commands share: loading a trained run with its data, and the checks
and refusals of their flags, in the user's terms."""

from __future__ import annotations

import os
import sys

from pyro_vae.errors import ConfigError

# torch and the library's heavy modules are imported inside the functions that need them:
# every command's parser imports this module, and `pyro-vae --help` must not import torch.


def load_run(run_dir: str, data_dir: str | None, dataset: str | None = None):
    """(config, VAE with trained weights, data) of a run, with ``dataset`` or ``data_dir``
    in place of the run's own (see :func:`load_run_and_checkpoint`)."""
    return load_run_and_checkpoint(run_dir, data_dir, dataset)[:3]


def load_run_and_checkpoint(run_dir: str, data_dir: str | None, dataset: str | None = None):
    """:func:`load_run`'s (config, VAE, data) and the checkpoint payload the weights came from
    (its ``epoch``: the epochs this model finished, read once with the weights, so that a run
    still training cannot move on between the two). A ``dataset`` named ``shift:NAME`` is the
    run's own dataset with its test images shifted (:mod:`pyro_vae.shifts`)."""
    from pyro_vae.protocol import has
    from pyro_vae.runs import load_trained

    config, vae, checkpoint = load_trained(run_dir)
    note = unfinished_note(run_dir, config, checkpoint)
    if note:
        print(note, file=sys.stderr)
    if has(config, "categorical_latents"):
        raise ConfigError(f"{run_dir} holds a model with a discrete code, and this command works "
                          "in a continuous latent space (encodings, gradients in z). Use it on a "
                          "Gaussian VAE run; for a discrete run use evaluate, sample or compare.")
    config, data = run_data(config, checkpoint, data_dir, dataset)
    return config, vae, data, checkpoint


def run_data(config, checkpoint, data_dir: str | None, dataset: str | None = None):
    """(config, data): the run's data as it was trained on, or ``dataset`` (another dataset of
    the same image shape, or ``shift:NAME``, the run's own test images shifted) from
    ``data_dir``, prepared as the run's own are."""
    from pyro_vae.shifts import shift_name
    from pyro_vae.training import prepare_data

    shift = shift_name(dataset) if dataset else None
    overrides = {k: v for k, v in (("dataset", None if shift is not None else dataset),
                                   ("data_dir", data_dir)) if v}
    if overrides:
        config = config.with_overrides({"data": overrides})
    data = prepare_data(config, shift=shift)
    check_same_shape(config, data, checkpoint)
    return config, data


def unfinished_note(run_dir, config, checkpoint) -> str | None:
    """A note for a run whose checkpoint holds fewer epochs than it was set to train (its
    training was stopped, or still runs): the results are those of an unfinished model."""
    done, planned = checkpoint["epoch"], config.train.epochs
    if done >= planned:
        return None
    return (f"note: {run_dir} is trained for {done} of its {planned} epochs (its training was "
            "stopped, or still runs), so these results are those of an unfinished model; "
            f"continue it with: pyro-vae train --out {run_dir} --resume")


def check_same_shape(config, data, checkpoint) -> None:
    """Refuse to score data whose images differ in shape from the model's training images."""
    if list(data.image_shape) != list(checkpoint["image_shape"]):
        raise ConfigError(f"dataset {config.data.dataset!r} has images of shape "
                          f"{data.image_shape}, but the model was trained on "
                          f"{tuple(checkpoint['image_shape'])}; use data of the same shape.")


def refuse_kind(config, run_dir: str, command: str, capabilities: tuple[str, ...],
                why: str) -> None:
    """Refuse, in the user's terms, a run whose model kind declares any of ``capabilities``
    (those that ``command`` does not work with)."""
    from pyro_vae.protocol import display_name, has

    if any(has(config, capability) for capability in capabilities):
        raise ConfigError(f"{run_dir} holds a {display_name(config)} "
                          f"(--model {config.model.kind}); {why}")


def check_out_folder(out: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that cannot be created or written: a file
    of that name, or a nearest existing folder above it that is not writable (the folder
    itself is created only when the results are written)."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--out {out} cannot be created: {existing} is a file; choose "
                          "another --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written: {existing} is not writable; choose "
                          "another --out (checked before the work, so nothing was computed).")


def positive_flag(name: str, value: int | None) -> None:
    """Refuse a non-positive count given as ``--name``."""
    if value is not None and value <= 0:
        raise ConfigError(f"--{name} must be a positive integer, not {value}.")


def seed_flag(value: int) -> None:
    """Refuse a ``--seed`` outside [0, 2**32), the range of ``[train] seed`` (torch's and
    NumPy's generators take no other)."""
    if not 0 <= value < 2 ** 32:
        raise ConfigError(f"--seed {value} must be an integer in [0, 2**32), as [train] seed "
                          "is.")


#: The most threads pyro-vae asks torch for (torch itself overflows at 2**31, and a pool of
#: millions of threads would exhaust the machine before it computed anything).
MAX_THREADS = 1024


def apply_threads(requested: int | None) -> int:
    """Set torch's thread count: ``requested`` if positive, else $OMP_NUM_THREADS, else 1."""
    import torch

    if requested is not None and requested < 0:
        raise ConfigError(f"--threads {requested}: give a positive number of threads, or 0 "
                          "for the default ($OMP_NUM_THREADS, else 1).")
    if requested is not None and requested > MAX_THREADS:
        raise ConfigError(f"--threads {requested} is more than pyro-vae starts (at most "
                          f"{MAX_THREADS}); give the number of cores to compute on (this "
                          f"machine has {os.cpu_count()}), or 0 for the default.")
    threads = requested or 0
    if not threads:
        value = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(value) if value.isdigit() and 0 < int(value) <= MAX_THREADS else 1
    torch.set_num_threads(threads)
    return threads
