"""Components own their options: declared at registration, set in the component's own
recipe table or with --set, recorded in config.toml, refused with "did you mean"."""

import tomllib
from pathlib import Path

import pytest

from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.objectives import make_objective
from pyro_vae.options import Option, parse_assignment
from pyro_vae.registry import LIKELIHOODS, OBJECTIVES
from pyro_vae.runs import load_trained

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pyro_vae_example_plugin"
RECIPE = """plugins = ["pyro_vae_example_plugin"]

[model]
prior = "student_t"
latent_dim = 2
hidden_dims = [16]

[prior]
df = 5.0
learn_df = false

[train]
epochs = 1
batch_size = 256

[evaluate]
num_samples = 4
"""


@pytest.fixture(autouse=True)
def _plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_a_plugin_priors_option_from_its_table_reaches_it_and_is_recorded(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--set", "prior.df=7"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["prior"] == {"df": 7.0, "learn_df": False}  # --set beats the recipe
    config, vae, _ = load_trained(run)
    assert config.options["prior"]["df"] == 7.0
    assert float(vae.prior.df) == pytest.approx(7.0)  # fixed (learn_df = false): untrained
    assert "raw_df" not in dict(vae.named_parameters())


def test_defaults_fill_in_and_another_prior_drops_the_old_ones_options():
    config = Config.from_dict({"plugins": ["pyro_vae_example_plugin"],
                               "model": {"prior": "student_t"}})
    assert config.options["prior"] == {"df": 3.0, "learn_df": True}
    assert config.model.options_of("prior") == {"df": 3.0, "learn_df": True}
    other = config.with_overrides({"model": {"prior": "normal"}})
    assert "prior" not in other.options and "prior" not in other.to_dict()


@pytest.mark.parametrize("table, match", [
    ({"dof": 3}, "Did you mean 'df'"),
    ({"df": "three"}, "should be a number"),
    ({"df": 0.5}, "must exceed 1"),
])
def test_unknown_or_mistyped_options_are_refused_in_words(table, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict({"plugins": ["pyro_vae_example_plugin"],
                          "model": {"prior": "student_t"}, "prior": table})


def test_a_table_for_a_component_without_options_and_an_unknown_table_are_refused():
    with pytest.raises(ConfigError, match="declares no options"):
        Config.from_dict({"guide": {"rank": 3}})
    with pytest.raises(ConfigError, match="Did you mean 'prior'"):
        Config.from_dict({"priors": {"df": 3}})
    with pytest.raises(ConfigError, match="has no key 'options'"):
        Config.from_dict({"model": {"options": {"prior": {}}}})


def test_the_cli_refuses_a_bad_set_in_one_paragraph(tmp_path, capsys):
    assert main(["train", "--set", "prior", "--out", str(tmp_path / "r")]) == 2
    assert "TABLE.KEY=VALUE" in capsys.readouterr().err
    assert parse_assignment("model.hidden_dims=[8, 8]") == ("model", "hidden_dims", [8, 8])
    assert parse_assignment("prior.kind=student") == ("prior", "kind", "student")


def test_likelihood_and_objective_options_reach_their_factories():
    seen = {}

    def bernoulli_with_option_factory(config, context):
        seen["likelihood"] = dict(context.options)
        seen["image_shape"] = context.image_shape
        return LIKELIHOODS.get("bernoulli")(config, context)

    LIKELIHOODS.add("bernoulli_with_option", bernoulli_with_option_factory,
                    capabilities={"binary_data"},
                    options={"sharpness": Option(1.0, "a test option")})

    def elbo_with_option(scale=1.0, **kwargs):
        seen["objective"] = scale
        return OBJECTIVES.get("elbo")(**kwargs)

    OBJECTIVES.add("elbo_with_option", elbo_with_option,
                   capabilities=OBJECTIVES.capabilities("elbo"),
                   options={"scale": Option(1.0, "a test option")})
    config = Config.from_dict({"model": {"likelihood": "bernoulli_with_option"},
                               "likelihood": {"sharpness": 2}, "train": {
                                   "objective": "elbo_with_option"},
                               "objective": {"scale": 0.5}})
    assert config.options["likelihood"] == {"sharpness": 2.0}
    from pyro_vae.models import build_vae

    build_vae(config.model, (1, 8, 8))
    assert seen["likelihood"] == {"sharpness": 2.0}
    assert seen["image_shape"] == (1, 8, 8)  # the factory knows the images it models
    make_objective(config.train.objective, options=config.options.get("objective"))
    assert seen["objective"] == 0.5
    assert tomllib.loads(config.to_toml())["objective"] == {"scale": 0.5}
    assert Config.from_dict(tomllib.loads(config.to_toml())).options == config.options
