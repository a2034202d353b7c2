"""What the sections of a recipe share: the settings that no registry names, and the checks
that turn a bad value into one paragraph naming the key and what would be accepted."""

from __future__ import annotations

import math
import typing

from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry, suggestion

# Priors, guides, likelihoods, networks, objectives, model kinds and datasets are named by
# the registries of pyro_vae.registry (which plugins extend); the settings below are not.
BINARIZATIONS = ("auto", "dynamic", "static", "none", "grey")
ACTIVATIONS = ("relu", "tanh", "elu", "softplus", "leaky_relu", "gelu")
ENCODER_SCALES = ("softplus", "logvar")
#: Largest number of codes C^K that objective ``enumerate`` sums over.
MAX_ENUMERATED_CODES = 1024
#: Largest K·C one-hot units of a discrete code: the encoder outputs them and the decoder reads
#: them, hidden × K·C weights each (100,000 units at 512 hidden: 400 MB of float32 weights).
MAX_CODE_UNITS = 100_000
DEVICES = ("cpu", "cuda")
#: The smallest KL weight β accepted: below it β·KL is lost beside the likelihood in float32.
MIN_BETA = 1e-10


def _choice(section: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"[{section}] {key} = {value!r} is not one of {', '.join(map(repr, choices))}."
            + _suggestion(value, choices)
        )


def _positive(section: str, key: str, value: float, allow_zero: bool = False) -> None:
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        word = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"[{section}] {key} = {value!r} must be a finite {word} number.")


def _suggestion(word: str, options: typing.Iterable[str]) -> str:
    return suggestion(word, options)


def _registered(registry: Registry, value: str) -> frozenset[str]:
    """The capabilities of the registered entry ``value`` (a ConfigError if there is none)."""
    return registry.capabilities(value)
