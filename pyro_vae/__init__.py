"""pyro-vae: variational autoencoders written the Pyro way.

A :class:`VAE` is a Pyro model/guide pair; any Pyro ELBO trains it (:func:`make_objective`,
:class:`ObjectiveModule`); :func:`estimate_log_likelihood` scores it per datapoint.
"""

from pyro_vae.config import Config
from pyro_vae.data import ImageData, load_dataset
from pyro_vae.errors import CheckpointError, ConfigError, DataError, PyroVAEError, TrainingError
from pyro_vae.evaluate import estimate_log_likelihood, latent_activity, log_importance_weights
from pyro_vae.models import VAE, build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.train import train

__version__ = "0.1.0"
__all__ = [
    "Config", "ImageData", "load_dataset", "CheckpointError", "ConfigError", "DataError",
    "PyroVAEError", "TrainingError", "estimate_log_likelihood", "latent_activity",
    "log_importance_weights", "VAE", "build_vae", "ObjectiveModule", "make_objective", "train",
]
