"""Small helpers shared by the test modules (the fixtures built from them are in conftest.py):
``run_cli`` and ``cli_process`` run the command line in-process or as a process, and the small
recipes and flags below train in seconds on the embedded digits."""

import os
import subprocess
import sys

import numpy as np

import pyro_vae.networks as networks
from pyro_vae.cli import main
from pyro_vae.config import Config


def run_cli(capsys, *argv):
    """Run ``pyro-vae ARGV`` in-process; return (exit code, stdout, stderr), and require that
    stderr holds no traceback (every failure must be one clear paragraph)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


#: Flags of a quick `pyro-vae train` on the digits: one epoch, two importance samples, and
#: the latent map by principal components (t-SNE costs seconds; tests of the map ask for it).
QUICK_TRAIN = ["--epochs", "1", "--eval-samples", "2", "--batch-size", "256", "--latent-map",
               "pca"]
#: The same at the default batch size.
QUICK_TRAIN_PCA = ["--epochs", "1", "--eval-samples", "2", "--latent-map", "pca"]


def three_epoch_config(**train_options):
    """A small VAE on the digits (hidden 32, latent 4) for three epochs, K = 16 at the end (and
    the latent map by principal components: t-SNE would cost most of the run's time)."""
    return Config().with_overrides({
        "model": {"hidden_dims": [32], "latent_dim": 4},
        "train": {"epochs": 3, "batch_size": 128, **train_options},
        "evaluate": {"num_samples": 16, "latent_map": "pca"}})


def one_epoch_config(kind="vae", **model):
    """A tiny model of ``kind`` on the digits (hidden 16, latent 2) for one epoch, K = 2."""
    return Config().with_overrides({
        "model": {"hidden_dims": [16], "latent_dim": 2, "kind": kind, **model},
        "train": {"epochs": 1, "batch_size": 128},
        "evaluate": {"num_samples": 2}})


def cli_process(*argv, env=None):
    """``python -m pyro_vae ARGV`` started as a separate process (pipes for its output)."""
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def digits_npz(path, keep=lambda y: np.ones(len(y), bool), relabel=lambda y: y):
    """The embedded digits as a user's .npz, with some images left out or relabelled."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    chosen = keep(y)
    np.savez(path, x=x[chosen], y=relabel(y[chosen]))
    return f"file:{path}"


def poison_decoder(monkeypatch, at_call, times=None):
    """Make the decoder output NaN from its ``at_call``-th call on (``times`` calls only)."""
    original = networks.MLPDecoder.forward
    calls = {"n": 0}

    def forward(self, z):
        calls["n"] += 1
        out = original(self, z)
        poisoned = calls["n"] >= at_call and (times is None or calls["n"] < at_call + times)
        return out * float("nan") if poisoned else out

    monkeypatch.setattr(networks.MLPDecoder, "forward", forward)


def model_config(**model):
    """A ``[model]`` table from keys written the way a recipe writes them, the old ``[model]``
    keys of a component's options included (``stochastic_layers = 2`` goes to the kind's own
    table): ``ModelConfig.from_table(model)``."""
    from pyro_vae.config import ModelConfig

    return ModelConfig.from_table(model)
