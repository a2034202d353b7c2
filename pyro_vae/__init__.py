"""pyro-vae: variational autoencoders written the Pyro way.

A :class:`VAE` is a Pyro model/guide pair; any Pyro ELBO trains it (:func:`make_objective`,
:class:`ObjectiveModule`); :func:`estimate_log_likelihood` scores it per datapoint. Priors, guides, likelihoods, networks,
objectives, model kinds and datasets are found by name in registries that plugins extend
(:mod:`pyro_vae.registry`); :func:`fit` trains a model of one's own into a normal run.
"""

from pyro_vae.config import Config
from pyro_vae.data import ImageData, load_dataset
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError, TrainingError
from pyro_vae.evaluate import estimate_log_likelihood, latent_activity, log_importance_weights
from pyro_vae.models import VAE, build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.training import train
from pyro_vae.explorer import explore
from pyro_vae.fitting import fit
from pyro_vae.protocol import Model
from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES,
                               PRIORS)

__version__ = "0.1.0"
__all__ = [
    "Config", "ImageData", "load_dataset", "CheckpointError", "ConfigError", "DataError",
    "PyroVAEError", "TrainingError", "estimate_log_likelihood", "latent_activity",
    "log_importance_weights", "VAE", "build_vae", "ObjectiveModule", "make_objective", "train",
    "fit", "Model", "DATASETS", "GUIDES", "LIKELIHOODS", "MODEL_KINDS", "NETWORKS", "OBJECTIVES",
    "PRIORS", "explore",
]
