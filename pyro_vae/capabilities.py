"""The capabilities a model kind may declare: a fixed, documented vocabulary.

A model kind says what it can do when it registers (``MODEL_KINDS.register(name,
capabilities={...})``, or a ``capabilities`` attribute on a factory given by import path),
the way NumPyro's ELBOs carry ``can_infer_discrete`` and scikit-learn's estimators carry tags.
The commands read these words instead of probing the model for attributes, and a word that
is not below is refused at registration (a typo would otherwise switch a command off
silently). What each word promises in methods is in :mod:`pyro_vae.protocol`
(:data:`pyro_vae.protocol.REQUIRED_METHODS`); a model given to :func:`pyro_vae.fit` that
declares a word without its methods is refused before training starts.

This module imports nothing from the library, so the registry can check against it.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from pyro_vae.errors import ConfigError

#: Word -> what a model kind declaring it promises (and which commands rely on it).
MODEL_CAPABILITIES: dict[str, str] = {
    "components": "built from a registered prior, guide, likelihood and networks, so the "
                  "[model] options prior and guide and [train] free_bits apply",
    "pictures": "draws and decodes images (train's pictures, sample, traverse)",
    "latent_means": "has an amortized posterior q(z|x) with a representative point "
                    "(active units, the collapse check, latent maps, probe, traverse)",
    "estimator_lab": "compare may measure every estimator on it: it declares which "
                     "parameters belong to the inference network and which to the model",
    "labels": "model and guide take labels, model(x, y), q(z|x, y)",
    "conditional": "scored as log p(x|y): evaluation passes the labels to model and guide",
    "label_priors": "its prior may be a label-conditional p(z|y) (a registered prior with "
                    "the capability label_conditional)",
    "partial_labels": "trains on partly labelled data ([data] num_labels): its prepare hook "
                      "keeps that many labels and starts its own prior from the labelled images",
    "unlabelled_scoring": "model(x) and guide(x) without y sum the label out, so log p(x) "
                          "needs no labels (evaluate and anomaly on unlabelled images)",
    "classifier": "classify(x) gives q(y|x)'s class probabilities (the label guessed for "
                  "unlabelled images in summaries, traverse and the explorer)",
    "discrete_latents": "sums a discrete latent out (needs an objective that enumerates)",
    "categorical_latents": "its latent code is discrete (objectives for discrete codes; no "
                           "gradients in z)",
    "completions": "completes images from given parts and draws nothing from p(x) alone",
    "no_latents": "has no latent variable at all (no active units)",
}


#: Words of version 0.2 and the capabilities that took their place.
RENAMED: dict[str, tuple[str, ...]] = {
    "semi_supervised": ("partial_labels", "unlabelled_scoring", "classifier"),
}


def check_capabilities(words: Iterable[str], who: str) -> frozenset[str]:
    """``words`` as a frozenset (a renamed word replaced by the capabilities that took its
    place), or a :class:`ConfigError` naming the unknown one."""
    words = frozenset(new for word in words for new in RENAMED.get(word, (word,)))
    unknown = sorted(word for word in words if word not in MODEL_CAPABILITIES)
    if unknown:
        raise ConfigError(
            f"{who} declares the capability {unknown[0]!r}, which is not one of the model "
            f"capabilities ({', '.join(MODEL_CAPABILITIES)})."
            + _did_you_mean(unknown[0])
            + " See pyro_vae.capabilities for what each promises.")
    return words


def _did_you_mean(word: str) -> str:
    close = difflib.get_close_matches(word, list(MODEL_CAPABILITIES), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
