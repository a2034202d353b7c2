"""Grey-level targets: a Bernoulli model scored on the images' intensities, not binary draws.

Pyro's CVAE tutorial (quadrant completion, Sohn et al. 2015) trains and scores on grey MNIST:
its "negative conditional log-likelihood" is the binary cross-entropy of the grey targets t ∈
[0, 1] for the baseline network and ``Trace_ELBO``'s loss for the CVAE, both with
``Bernoulli(p).log_prob(t) = t log p + (1 − t) log(1 − p)`` on grey values. That is not a
likelihood (a Bernoulli has no density on grey values); because it is linear in t it is the
expected log-likelihood of targets binarized as Bernoulli(t) (exactly so for the deterministic
baseline; for the CVAE the guide still reads the grey image), the ``E_t`` of the dynamic
binarization this project trains with. The library's own figures score binary test images
(binarized once with a fixed seed); this module gives the tutorial's measure for comparison:

    score_t(y | x) = E_q(z|x,t)[ log Bernoulli(t | g(x, z)) + log p(z|x) − log q(z|x, t) ]

for the CVAE, and log Bernoulli(t | ŷ(x)) for the baseline, with the given pixels of the grey
image as the networks' input, as in the tutorial. ``pyro-vae evaluate RUN --targets grey``
reports it as ``test_elbo`` (the negative of the tutorial's figure).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from pyro_vae.config import Config
from pyro_vae.data import ImageData, binarize_fixed
from pyro_vae.errors import ConfigError

#: What ``pyro-vae evaluate --targets grey`` calls its score.
GREY_SCORE_NAME = "grey-level Bernoulli score (Pyro's CVAE tutorial's measure; not a likelihood)"


def grey_score_name(score_name: str) -> str:
    """What a run trained with ``binarize = "grey"`` reports in place of ``score_name``
    (``log p(x)``, ``log p(x|y)``, ...): its test images are scored on their grey levels, so the
    estimate is the same importance-sampled bound, but of a score that is not a likelihood."""
    return f"{score_name} on grey levels (a Bernoulli score, not a likelihood)"


def grey_targets(config: Config, data: ImageData, split: str) -> torch.Tensor:
    """The grey images of ``split`` as targets for a run with a Bernoulli likelihood.

    Raises :class:`ConfigError` for a run whose data were not binarized (its targets already
    are the images as loaded) or whose likelihood is not the Bernoulli.
    """
    if config.model.likelihood != "bernoulli" or config.binarization in ("none", "grey"):
        grey_run = config.model.likelihood == "bernoulli" and config.binarization == "grey"
        raise ConfigError(
            f"--targets grey scores a Bernoulli model on the grey images its binary training "
            f"data were drawn from, but this run has likelihood {config.model.likelihood!r} "
            f"and binarize {config.binarization!r}: its test images are already scored as they "
            "are loaded. Leave out --targets"
            + (" (or use --targets binary for its binary test draw)." if grey_run else "."))
    return data.grey(split)


def binary_targets(config: Config, data: ImageData, split: str) -> torch.Tensor:
    """The binary images of ``split`` as runs with dynamic binarization are scored on: the
    split's grey images binarized once with the fixed seed, in the order training draws them.
    A run trained on grey targets gets a true log-likelihood that compares with theirs; a run
    with static binarization (whose own test draw comes from the same seed after the training
    images, so differs) is scored on the same images as the dynamic runs.

    Raises :class:`ConfigError` for a run whose likelihood is not the Bernoulli or whose images
    were not binarized or grey targets (its test images are scored as they are loaded).
    """
    if config.model.likelihood != "bernoulli" or config.binarization not in (
            "grey", "static", "dynamic"):
        raise ConfigError(
            f"--targets binary scores a Bernoulli run on binary draws of its test images, but "
            f"this run has likelihood {config.model.likelihood!r} and binarize "
            f"{config.binarization!r}: its test images are already scored as they are loaded. "
            "Leave out --targets.")
    # Binarize the grey images (a static run's loaded splits are its own draw already).
    grey = replace(data, valid_x=data.grey("validation"), test_x=data.grey("test"))
    index = ("validation", "test").index(split)  # drawn in this order, as training does
    binary = binarize_fixed(grey, ("validation", "test"))
    return (binary.valid_x, binary.test_x)[index]
