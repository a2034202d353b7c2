"""The built-in components own their options the way a plugin's do: the kinds' own settings
(num_classes, stochastic_layers, quadrants, ...) are options of the kind in the ``[kind]``
table, a prior's components and a guide's rank are options of the prior and the guide, and
the old ``[model]``/``[train]`` keys of recipes and saved runs still load."""

import dataclasses
import tomllib

import pytest

from pyro_vae.config import Config, ModelConfig, TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae
from pyro_vae.registry import GUIDES, LIKELIHOODS, MODEL_KINDS, PRIORS

#: What the central [model] table still holds: what every kind built from networks shares.
SHARED_MODEL_KEYS = {"latent_dim", "network", "hidden_dims", "activation", "encoder_scale",
                     "likelihood", "prior", "guide", "kind", "options"}


def test_model_config_holds_no_field_of_a_single_component():
    assert {f.name for f in dataclasses.fields(ModelConfig)} == SHARED_MODEL_KEYS
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not train & {"aux_loss_weight", "m2_schedule", "labelled_every"}


def test_every_old_key_is_declared_by_the_component_that_uses_it():
    declared = {option.legacy: (registry.kind, name, option_name)
                for registry in (PRIORS, GUIDES, LIKELIHOODS, MODEL_KINDS)
                for name in registry.choices()
                for option_name, option in registry.entry(name).options.items()
                if option.legacy}
    for key in ("num_classes", "quadrants", "quadrant_generation", "baseline_run",
                "categorical_latents", "categories", "discrete_prior", "label_independence",
                "label_independence_weight", "decoder_label", "prior_components", "flow_layers",
                "guide_rank", "gaussian_scale", "standardize", "stochastic_layers",
                "top_latent_dim", "top_hidden_dims", "bayesian_decoder", "weight_prior_scale",
                "aux_loss_weight", "m2_schedule", "labelled_every"):
        assert key in declared, key


def test_a_kind_option_set_in_its_table_reaches_the_model_and_is_recorded():
    config = Config.from_dict({"model": {"kind": "cvae", "latent_dim": 2, "hidden_dims": [8]},
                               "kind": {"num_classes": 3, "decoder_label": "input"}})
    assert config.model.num_classes == 3
    vae = build_vae(config.model, (1, 4, 4))
    assert vae.num_classes == 3
    written = tomllib.loads(config.to_toml())
    assert written["kind"]["num_classes"] == 3 and "num_classes" not in written["model"]
    assert Config.from_dict(written) == config  # config.toml reads back the same


def test_old_keys_of_a_recipe_move_to_their_components_tables():
    old = Config.from_dict({"model": {"kind": "m2", "num_classes": 4, "prior": "mixture",
                                      "prior_components": 8, "decoder_label": "input"},
                            "train": {"m2_schedule": "interleaved", "labelled_every": 3}})
    new = Config.from_dict({"model": {"kind": "m2", "prior": "mixture"},
                            "kind": {"num_classes": 4, "decoder_label": "input",
                                     "m2_schedule": "interleaved", "labelled_every": 3},
                            "prior": {"components": 8}})
    assert old == new
    flow = Config.from_dict({"model": {"prior": "flow", "guide": "iaf", "flow_layers": 2}})
    assert flow.options["prior"]["layers"] == flow.options["guide"]["layers"] == 2


def test_a_saved_run_of_version_0_2_with_every_old_key_at_its_default_loads():
    """config.toml of 0.2 wrote every [model] and [train] key, those of unused kinds too."""
    old_model = {"latent_dim": 2, "hidden_dims": [8], "kind": "vae", "num_classes": 10,
                 "quadrants": 1, "quadrant_generation": "given_and_z", "baseline_run": "",
                 "categorical_latents": 20, "categories": 10, "discrete_prior": "uniform",
                 "label_independence": "none", "label_independence_weight": 500.0,
                 "decoder_label": "every_layer", "flow_layers": 4, "guide_rank": 2,
                 "gaussian_scale": "learned", "standardize": True, "stochastic_layers": 1,
                 "top_latent_dim": 50, "top_hidden_dims": [50, 50], "bayesian_decoder": "none",
                 "weight_prior_scale": 1.0}
    old_train = {"epochs": 2, "aux_loss_weight": 50.0, "m2_schedule": "paired",
                 "labelled_every": 0}
    config = Config.from_dict({"model": old_model, "train": old_train})
    assert config.model.latent_dim == 2 and config.train.epochs == 2
    assert config.options["kind"]["stochastic_layers"] == 1


@pytest.mark.parametrize("tables, words", [
    ({"model": {"kind": "vae", "num_classes": 3}},
     "[model] num_classes is the option 'num_classes' of kind = \"cvae\" or kind = \"m2\""),
    ({"model": {"kind": "cvae"}, "kind": {"num_class": 3}}, "Did you mean 'num_classes'?"),
    ({"model": {"kind": "cvae"}, "kind": {"num_classes": "ten"}}, "should be an integer"),
    ({"model": {"kind": "discrete"}, "train": {"objective": "score"}, "kind": {"categories": 1}},
     "at least 2 classes"),
    ({"model": {"kind": "vae"}, "kind": {"stochastic_layers": 3}}, "not one of 1, 2"),
    ({"model": {"kind": "vae", "guide": "iaf"}, "kind": {"stochastic_layers": 2}},
     "guide = \"iaf\" is for the one-layer model"),
    ({"model": {"likelihood": "gaussian"}, "likelihood": {"scale": -1.0}}, "must be positive"),
    ({"model": {"likelihood": "gaussian"}, "likelihood": {"scale": "learnt"}},
     "give a positive number or \"learned\""),
])
def test_a_wrong_option_of_a_built_in_component_is_refused_in_words(tables, words):
    with pytest.raises(ConfigError) as error:
        Config.from_dict(tables)
    assert words in str(error.value)


def test_switching_the_kind_on_the_command_line_leaves_the_old_kinds_options_behind():
    cvae = Config.from_dict({"model": {"kind": "cvae"}, "kind": {"num_classes": 3}})
    discrete = cvae.with_overrides({"model": {"kind": "discrete"}, "train": {"objective": "score"},
                                    "kind": {"categorical_latents": 2}})
    assert discrete.options["kind"] == {"categorical_latents": 2, "categories": 10,
                                        "code_prior": "uniform"}


def test_the_gaussian_likelihood_takes_its_options_and_the_image_shape():
    config = Config.from_dict({"model": {"likelihood": "gaussian", "latent_dim": 2,
                                         "hidden_dims": [8]},
                               "likelihood": {"scale": 0.3, "standardize": False}})
    likelihood = build_vae(config.model, (1, 4, 4)).likelihood
    assert likelihood.fixed_scale == 0.3 and likelihood.standardize is False


def test_an_objectives_own_options_are_in_its_table_and_reach_it():
    from pyro_vae.objectives import make_objective

    old = Config.from_dict({"train": {"objective": "renyi", "alpha": 0.25}})
    assert old.options["objective"] == {"alpha": 0.25}
    assert make_objective("renyi", 2, options=old.options["objective"]).alpha == 0.25
    relaxed = Config.from_dict({"model": {"kind": "discrete"},
                                "train": {"objective": "concrete"},
                                "objective": {"temperature": 2.0, "temperature_decay": 0.1}})
    objective = make_objective("concrete", options=relaxed.options["objective"])
    assert objective.schedule.at(0) == 2.0
    assert objective.schedule.at(100) == pytest.approx(0.5)  # max(τ_min, 2 e^{-10})
    assert not {"alpha", "temperature"} & {f.name for f in dataclasses.fields(TrainConfig)}
    with pytest.raises(ConfigError, match="the ELBO itself"):
        Config.from_dict({"train": {"objective": "renyi"}, "objective": {"alpha": 1.0}})
    with pytest.raises(ConfigError, match="alpha is the option 'alpha' of objective = \"renyi\""):
        Config.from_dict({"train": {"objective": "elbo", "alpha": 0.3}})


def test_a_plugin_written_for_0_2_still_reads_the_old_attributes_with_a_warning():
    """A 0.2 kind factory reads ``config.gaussian_scale`` and calls
    ``build_likelihood(name, scale)``: both still work, the attribute with a warning."""
    from pyro_vae.likelihoods import build_likelihood

    config = ModelConfig.from_table({"likelihood": "gaussian", "gaussian_scale": 0.3})
    with pytest.warns(DeprecationWarning, match=r"options_of\('likelihood'\)\['scale'\]"):
        scale = config.gaussian_scale
    assert scale == 0.3
    assert build_likelihood("gaussian", scale).fixed_scale == 0.3
    with pytest.warns(DeprecationWarning):
        assert ModelConfig().stochastic_layers == 1  # the vae kind's option, by its old name
    with pytest.warns(DeprecationWarning):
        assert ModelConfig().categories == 10  # no component in use declares it: the old default
    with pytest.raises(AttributeError):
        ModelConfig().no_such_setting


def test_a_saved_0_2_run_with_an_option_its_components_ignored_still_opens():
    """0.2 accepted, and ignored, a relaxation's temperature_decay with the enumeration: such
    a run's config.toml opens; a recipe written today is told the option is unused."""
    tables = {"model": {"kind": "discrete", "categorical_latents": 2, "categories": 4},
              "train": {"objective": "enumerate", "temperature_decay": 0.001}}
    assert Config.from_dict(tables, saved=True).train.objective == "enumerate"
    with pytest.raises(ConfigError, match="temperature_decay is the option 'temperature_decay'"):
        Config.from_dict(tables)


def test_switching_a_component_keeps_the_options_the_new_one_also_has():
    relaxed = Config.from_dict({"model": {"kind": "discrete"},
                                "train": {"objective": "concrete"},
                                "objective": {"temperature_decay": 0.001}})
    straight = relaxed.with_overrides({"train": {"objective": "straight_through"}})
    assert straight.options["objective"]["temperature_decay"] == 0.001
    mixture = Config.from_dict({"model": {"prior": "mixture"}, "prior": {"components": 20}})
    assert mixture.with_overrides({"model": {"prior": "vamp"}}).options["prior"] == {
        "components": 20}
    assert "prior" not in mixture.with_overrides({"model": {"prior": "normal"}}).options
    cvae = Config.from_dict({"model": {"kind": "cvae"}, "kind": {"num_classes": 4}})
    assert cvae.with_overrides({"model": {"kind": "m2"}}).model.num_classes == 4


def test_an_old_key_and_the_new_table_cannot_disagree_in_one_recipe():
    with pytest.raises(ConfigError, match="set one option twice"):
        Config.from_dict({"model": {"kind": "cvae", "num_classes": 10},
                          "kind": {"num_classes": 3}})
    same = Config.from_dict({"model": {"kind": "cvae", "num_classes": 3},
                             "kind": {"num_classes": 3}})
    assert same.model.num_classes == 3
    # a command-line flag (an old key among the overrides) is the newer word
    flag = same.with_overrides({"model": {"num_classes": 5}})
    assert flag.model.num_classes == 5


def test_a_list_option_takes_a_tuple_and_a_stale_table_does_not_break_a_build():
    config = Config.from_dict({"model": {"kind": "vae"},
                               "kind": {"stochastic_layers": 2, "top_hidden_dims": (8, 8)}})
    assert config.options["kind"]["top_hidden_dims"] == [8, 8]
    cvae = Config.from_dict({"model": {"kind": "cvae", "prior": "mixture"},
                             "prior": {"components": 20}})
    cvae.model.prior = "normal"  # the mixture's table is left behind, not read
    assert cvae.model.options_of("prior") == {}
    assert type(build_vae(cvae.model, (1, 4, 4)).prior).__name__ == "StandardNormalPrior"


def test_setting_an_old_attribute_sets_the_option_or_is_refused():
    config = ModelConfig(likelihood="gaussian")
    with pytest.warns(DeprecationWarning):
        config.gaussian_scale = 0.1
    assert config.options_of("likelihood")["scale"] == 0.1
    with pytest.raises(ConfigError, match="which this configuration does not use"):
        ModelConfig().gaussian_scale = 0.1
