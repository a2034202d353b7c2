"""The ``[data]`` table of a recipe: which dataset, where it lives, how it is binarized and
split."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae.config.checks import BINARIZATIONS, _choice, _positive, _registered
from pyro_vae.errors import ConfigError
from pyro_vae.registry import DATASETS


@dataclass
class DataConfig:
    """Which data to train on and how to prepare it."""

    #: ``digits`` (embedded, no download), ``mnist``, ``fashion-mnist``, ``binarized-mnist``
    #: (Larochelle's static binarization) or ``file:PATH.npz`` (array ``x``, optional ``y``).
    dataset: str = "digits"
    #: Folder holding the MNIST-family files; default: $PYRO_VAE_DATA_DIR, else ``./data``.
    data_dir: str | None = None
    #: ``dynamic`` (a fresh Bernoulli draw per epoch), ``static`` (one fixed draw), ``none``,
    #: or ``auto``: ``dynamic`` for a Bernoulli likelihood, ``none`` for the others (which
    #: model intensities or real values and are never binarized). ``grey`` (Bernoulli
    #: likelihood only): the grey levels in [0, 1] themselves are the Bernoulli targets, the
    #: cross-entropy Pyro's examples train on (not a normalized density of grey images).
    binarize: str = "auto"
    #: Fraction of the training split held out for validation (0 disables validation).
    validation_fraction: float = 0.1
    #: Download MNIST / Fashion-MNIST with torchvision when the files are missing.
    download: bool = False
    #: For ``[model] kind = "m2"``: how many training labels are kept (the rest are hidden);
    #: 0 keeps every label.
    num_labels: int = 0

    def validate(self) -> None:
        _positive("data", "num_labels", self.num_labels, allow_zero=True)
        for key in ("dataset", "data_dir"):  # a run's config.toml records them as UTF-8 text
            value = getattr(self, key)
            if value is not None and not _is_utf8(value):
                raise ConfigError(
                    f"[data] {key} = {value!r} is a path whose name is not valid UTF-8 text, "
                    "which the run's config.toml (UTF-8, as TOML requires) cannot record. "
                    "Rename the folder or file, or give a link to it with a UTF-8 name.")
        if not self.dataset.startswith("file:"):
            _registered(DATASETS, self.dataset)
        _choice("data", "binarize", self.binarize, BINARIZATIONS)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"[data] validation_fraction = {self.validation_fraction!r} must lie in [0, 1)."
            )


def _is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a path's undecodable bytes arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
