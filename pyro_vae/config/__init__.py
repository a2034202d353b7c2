"""Run configuration: one dataclass per recipe table (``data.py``, ``model.py``, ``train.py``,
``evaluate.py``, with the checks they share in ``checks.py``) and the whole recipe, read from
and written to TOML, with the packaged recipes (``recipe.py``). ``from pyro_vae.config import
Config, ModelConfig, ...`` reads them all from here.
"""

from pyro_vae.config.checks import (ACTIVATIONS, BINARIZATIONS, DEVICES, ENCODER_SCALES,
                                    MAX_ENUMERATED_CODES, MIN_BETA)
from pyro_vae.config.data import DataConfig
from pyro_vae.config.evaluate import EvaluateConfig
from pyro_vae.config.model import ModelConfig
from pyro_vae.config.recipe import (RECIPES, SECTIONS, Config, check_compatible, dump_toml,
                                    find_recipe, recipe_names)
from pyro_vae.config.train import TrainConfig
from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES,
                               PRIORS)

__all__ = ["ACTIVATIONS", "BINARIZATIONS", "DEVICES", "ENCODER_SCALES", "MAX_ENUMERATED_CODES",
           "MIN_BETA", "RECIPES", "SECTIONS", "Config", "DataConfig", "EvaluateConfig",
           "ModelConfig", "TrainConfig", "check_compatible", "dump_toml", "find_recipe",
           "recipe_names", "DATASETS", "GUIDES", "LIKELIHOODS", "MODEL_KINDS", "NETWORKS",
           "OBJECTIVES", "PRIORS"]
