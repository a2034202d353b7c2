"""Recipes: defaults, TOML round trip, and clear errors for unknown keys and wrong types."""

from pathlib import Path

import pytest

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_defaults_are_the_digits_recipe():
    recipe = Config.from_toml(MODELS / "digits_vae.toml")
    assert recipe == Config().validate()  # validated: the components' options filled in
    assert recipe.train.warmup_epochs() == 20  # "auto": a tenth of its 200 epochs


@pytest.mark.parametrize("epochs, warmup", [(1, 0), (9, 0), (10, 1), (100, 10), (200, 20)])
def test_auto_warmup_is_a_tenth_of_the_epochs(epochs, warmup):
    config = Config().with_overrides({"train": {"epochs": epochs}})
    assert config.train.kl_warmup_epochs == "auto"
    assert config.train.warmup_epochs() == warmup
    fixed = config.with_overrides({"train": {"kl_warmup_epochs": 3}})
    assert fixed.train.warmup_epochs() == 3


def test_warmup_other_than_a_number_or_auto_is_refused():
    with pytest.raises(ConfigError, match="auto"):
        Config().with_overrides({"train": {"kl_warmup_epochs": "half"}}).validate()


@pytest.mark.parametrize("recipe", sorted(MODELS.glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_round_trips(recipe, tmp_path):
    config = Config.from_toml(recipe)
    written = tmp_path / "config.toml"
    written.write_text(config.to_toml())
    assert Config.from_toml(written) == config


def test_burda_recipe_is_the_paper_architecture():
    config = Config.from_toml(MODELS / "mnist_vae_burda.toml")
    assert (config.model.hidden_dims, config.model.latent_dim, config.model.activation) == (
        [200, 200], 50, "tanh")
    assert config.data.binarize == "dynamic" and config.evaluate.num_samples == 5000


def _error(tmp_path, text):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(path)
    return str(caught.value)


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    message = _error(tmp_path, "[train]\nepoch = 3\n")
    assert "epoch" in message and "Did you mean 'epochs'?" in message


def test_unknown_table(tmp_path):
    assert "Did you mean 'train'?" in _error(tmp_path, "[trian]\nepochs = 3\n")


def test_wrong_type(tmp_path):
    message = _error(tmp_path, "[train]\nepochs = \"ten\"\n")
    assert "[train] epochs" in message and "integer" in message


def test_bool_is_not_an_integer(tmp_path):
    assert "integer" in _error(tmp_path, "[model]\nlatent_dim = true\n")


def test_out_of_range_and_bad_choice(tmp_path):
    assert "positive" in _error(tmp_path, "[train]\nlearning_rate = 0\n")
    assert "Did you mean 'meanfield'?" in _error(tmp_path, "[train]\nobjective = \"meanfeild\"\n")


def test_invalid_toml_and_missing_file(tmp_path):
    assert "not valid TOML" in _error(tmp_path, "[train\n")
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_toml(tmp_path / "nope.toml")


def test_overrides_are_validated():
    assert Config().with_overrides({"train": {"epochs": 3}}).train.epochs == 3
    with pytest.raises(ConfigError, match="batch_size"):
        Config().with_overrides({"train": {"batch_size": -1}})
