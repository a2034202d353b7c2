"""pyro-vae: variational autoencoders written the Pyro way.

A :class:`VAE` is a Pyro model/guide pair; any Pyro ELBO trains it (:func:`make_objective`,
:class:`ObjectiveModule`); :func:`estimate_log_likelihood` scores it per datapoint. Priors, guides, likelihoods, networks,
objectives, model kinds and datasets are found by name in registries that plugins extend
(:mod:`pyro_vae.registry`); :func:`fit` trains a model of one's own into a normal run.

The names below are imported on first use (PEP 562), so that ``import pyro_vae.cli`` and
``pyro-vae --help`` do not import torch and Pyro; ``from pyro_vae import VAE`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and readers
    from pyro_vae.config import Config
    from pyro_vae.data import ImageData, load_dataset
    from pyro_vae.errors import (CheckpointError, ConfigError, DataError, PyroVAEError,
                                 TrainingError)
    from pyro_vae.evaluate import (estimate_log_likelihood, latent_activity,
                                   log_importance_weights)
    from pyro_vae.fitting import fit
    from pyro_vae.models import VAE, build_vae
    from pyro_vae.objectives import ObjectiveModule, make_objective
    from pyro_vae.protocol import Model
    from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS,
                                   OBJECTIVES, PRIORS)
    from pyro_vae.training import train
    from pyro_vae.explorer import explore

__version__ = "0.2.0"

#: Public name -> the module that defines it.
_SOURCES = {
    "Config": "pyro_vae.config", "ImageData": "pyro_vae.data", "load_dataset": "pyro_vae.data",
    **dict.fromkeys(["CheckpointError", "ConfigError", "DataError", "PyroVAEError",
                     "TrainingError"], "pyro_vae.errors"),
    **dict.fromkeys(["estimate_log_likelihood", "latent_activity", "log_importance_weights"],
                    "pyro_vae.evaluate"),
    "VAE": "pyro_vae.models", "build_vae": "pyro_vae.models",
    "ObjectiveModule": "pyro_vae.objectives", "make_objective": "pyro_vae.objectives",
    "train": "pyro_vae.training", "fit": "pyro_vae.fitting", "Model": "pyro_vae.protocol",
    "explore": "pyro_vae.explorer",
    **dict.fromkeys(["DATASETS", "GUIDES", "LIKELIHOODS", "MODEL_KINDS", "NETWORKS",
                     "OBJECTIVES", "PRIORS"], "pyro_vae.registry"),
}

__all__ = [
    "Config", "ImageData", "load_dataset", "CheckpointError", "ConfigError", "DataError",
    "PyroVAEError", "TrainingError", "estimate_log_likelihood", "latent_activity",
    "log_importance_weights", "VAE", "build_vae", "ObjectiveModule", "make_objective", "train",
    "fit", "Model", "DATASETS", "GUIDES", "LIKELIHOODS", "MODEL_KINDS", "NETWORKS", "OBJECTIVES",
    "PRIORS", "explore",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used (PEP 562); a name that
    is not public falls through to Python's own import of a submodule (``pyro_vae.runs``)."""
    if name not in _SOURCES:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
