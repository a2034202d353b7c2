"""Run configuration: one dataclass per recipe table, with validation, read from and written to
TOML. ``from pyro_vae.config import Config, ModelConfig, ...`` reads them all from here.
"""

from pyro_vae.config.recipe import (ACTIVATIONS, BINARIZATIONS, DEVICES, ENCODER_SCALES,
                                    MAX_ENUMERATED_CODES, MIN_BETA, RECIPES, SECTIONS, Config,
                                    DataConfig, EvaluateConfig, ModelConfig, TrainConfig,
                                    check_compatible, dump_toml, find_recipe, recipe_names)
from pyro_vae.registry import (DATASETS, GUIDES, LIKELIHOODS, MODEL_KINDS, NETWORKS, OBJECTIVES,
                               PRIORS)

__all__ = ["ACTIVATIONS", "BINARIZATIONS", "DEVICES", "ENCODER_SCALES", "MAX_ENUMERATED_CODES",
           "MIN_BETA", "RECIPES", "SECTIONS", "Config", "DataConfig", "EvaluateConfig",
           "ModelConfig", "TrainConfig", "check_compatible", "dump_toml", "find_recipe",
           "recipe_names", "DATASETS", "GUIDES", "LIKELIHOODS", "MODEL_KINDS", "NETWORKS",
           "OBJECTIVES", "PRIORS"]
