"""The open library: the example plugin package (outside pyro_vae/) trains from recipes through
the CLI and every command works on its runs; registries name everything; a run's missing
plugin is named; fit() trains a model of one's own into a normal run."""

import json
import sys
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.registry import MODEL_KINDS, OBJECTIVES, PRIORS, Registry
from pyro_vae.runs import load_trained

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pyro_vae_example_plugin"
PLUGIN = "pyro_vae_example_plugin"
TINY = """
[data]
dataset = "digits"
validation_fraction = 0.05
{data}

[model]
latent_dim = 2
hidden_dims = [16]
{model}

[train]
epochs = 1
batch_size = 256

[evaluate]
num_samples = 8
"""


@pytest.fixture(autouse=True)
def _plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def _commands_work(capsys, run, *plugin):
    code, out, _ = _cli(capsys, "evaluate", run, "--num-samples", 8, "--json", *plugin)
    summary = json.loads(out)
    assert code == 0 and summary["test_log_likelihood"] >= summary["test_elbo"] - 1e-4
    assert _cli(capsys, "sample", run, "--n", 4, "--out", run / "s.npz", *plugin)[0] == 0
    assert (run / "s.npz").exists()
    code, _, _ = _cli(capsys, "compare", run, "--objectives", "elbo,iwae", "--particles", "2",
                      "--repeats", 2, "--batch-size", 8, "--out", run / "lab", *plugin)
    assert code == 0 and (run / "lab" / "compare.csv").exists()
    code, _, _ = _cli(capsys, "gaps", run, "--n", 2, "--num-samples", 8, "--steps", 2,
                      "--nuts-points", 1, "--chains", 2, "--draws", 4, "--out", run / "gaps",
                      *plugin)
    gaps = json.loads((run / "gaps" / "gaps.json").read_text())
    assert code == 0 and "approximation_gap" in json.dumps(gaps)


@pytest.mark.parametrize("model, data, via_flag", [
    ('prior = "student_t"', "", False),
    ('likelihood = "laplace"', 'binarize = "none"', True),
    ('kind = "tied_vae"', "", False),
])
@pytest.mark.slow
def test_the_example_plugin_trains_from_a_recipe_and_every_command_runs(
        tmp_path, capsys, model, data, via_flag):
    head = "" if via_flag else f'plugins = ["{PLUGIN}"]\n'
    recipe = tmp_path / "r.toml"
    recipe.write_text(head + TINY.format(model=model, data=data))
    run = tmp_path / "run"
    flag = ("--plugin", PLUGIN) if via_flag else ()
    code, _, err = _cli(capsys, "train", recipe, "--out", run, *flag)
    assert code == 0, err
    config = Config.from_toml(run / "config.toml")
    assert PLUGIN in config.plugins  # recorded, so later commands load it themselves
    assert model.replace(" ", "") in (run / "config.toml").read_text().replace(" ", "")
    _commands_work(capsys, run)
    if "tied_vae" in model:  # the kind's hooks: its summary entry (train and evaluate alike)
        summary = json.loads((run / "summary.json").read_text())  # and its pictures
        code, out, _ = _cli(capsys, "evaluate", run, "--num-samples", 8, "--json")
        assert summary["tied_weight_norm"] == json.loads(out)["tied_weight_norm"] > 0
        assert (run / "filters.png").exists() and (run / "samples.png").exists()


def test_a_run_whose_plugin_is_missing_names_the_module_to_install(tmp_path, capsys):
    """A run's plugin is not imported on the run's word: the refusal gives the command that
    trusts it; with that --plugin, a module that is not installed is named for installing."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('plugins = ["no_such_vae_plugin"]\n\n[model]\n'
                                     'prior = "student_t"\n')
    code, _, err = _cli(capsys, "evaluate", run)
    assert code == 2 and f"pyro-vae evaluate {run} --plugin no_such_vae_plugin" in err
    code, _, err = _cli(capsys, "evaluate", run, "--plugin", "no_such_vae_plugin")
    assert code == 2 and "no_such_vae_plugin" in err and "Install" in err
    assert "damaged" not in err


def test_registries_suggest_and_refuse_double_registration():
    with pytest.raises(ConfigError, match="Did you mean 'iwae'"):
        OBJECTIVES.get("iwea")
    def first():
        return 1

    def second():
        return 2

    registry = Registry("widget", "[x] widget")
    registry.add("a", first)
    registry.add("a", first)  # a module imported again registers the same factory: harmless
    with pytest.raises(ConfigError, match="registered twice"):
        registry.add("a", second)
    assert "normal" in PRIORS.choices() and "vae" in MODEL_KINDS


def _tied_model():
    from pyro_vae_example_plugin.models import build
    return build, build(pyro_vae.Config().model.__class__(latent_dim=2, hidden_dims=[16]),
                        (1, 8, 8))


@pytest.mark.slow
def test_fit_trains_a_python_built_model_into_a_run_the_cli_loads(tmp_path, capsys):
    build, model = _tied_model()
    torch.manual_seed(0)
    summary = pyro_vae.fit(model.model, model.guide, "digits", factory=build,
                           out=tmp_path / "run", epochs=1, eval_samples=8, batch_size=256,
                           options={"model": {"latent_dim": 2, "hidden_dims": [16]}})
    assert summary["epochs"] == 1 and summary["test_elbo"] < 0
    config = Config.from_toml(tmp_path / "run" / "config.toml")
    assert config.model.kind == "pyro_vae_example_plugin.models:build"
    code, out, _ = _cli(capsys, "evaluate", tmp_path / "run", "--num-samples", 8, "--json")
    assert code == 0 and json.loads(out)["num_test_datapoints"] > 0
    # exact resume: one more epoch from the checkpoint
    _, fresh = _tied_model()
    again = pyro_vae.fit(fresh, None, "digits", factory=build, out=tmp_path / "run", epochs=2,
                         eval_samples=8, batch_size=256, resume=True,
                         options={"model": {"latent_dim": 2, "hidden_dims": [16]}})
    assert again["epochs"] == 2


@pytest.mark.slow
def test_fit_refuses_a_factory_the_commands_could_not_import(tmp_path):
    _, model = _tied_model()
    with pytest.raises(ConfigError, match="importable"):
        pyro_vae.fit(model, factory=lambda c, s, n: model, out=tmp_path / "r", epochs=1)


def test_nothing_lists_component_names_by_hand():
    import pyro_vae.config as config

    for name in ("PRIORS", "LIKELIHOODS", "OBJECTIVES", "MODEL_KINDS", "DATASETS",
                 "NETWORKS"):
        assert getattr(config, name) is getattr(pyro_vae.registry, name)


def test_a_factory_named_by_import_path_brings_its_hooks(tmp_path, monkeypatch):
    (tmp_path / "hooked_kind.py").write_text(
        "from pyro_vae.registry import KindHooks\n\n\n"
        "def build(config, image_shape, num_data=None):\n"
        "    raise NotImplementedError\n\n\n"
        "build.capabilities = {'pictures'}\n"
        "build.hooks = KindHooks(display_name='hooked model')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert MODEL_KINDS.hooks("hooked_kind:build").display_name == "hooked model"
    assert MODEL_KINDS.capabilities("hooked_kind:build") == {"pictures"}
    assert MODEL_KINDS.hooks("vae").batches is None  # a built-in kind takes the defaults
    with pytest.raises(ConfigError, match="not registered"):
        MODEL_KINDS.add_hooks("no_such_kind", display_name="x")


@pytest.mark.slow
def test_a_prior_from_an_installed_packages_entry_point_is_recorded_in_the_run(
        tmp_path, capsys, monkeypatch):
    """An installed package declares a plugin in the ``pyro_vae.plugins`` entry-point group
    (here a dist-info folder on sys.path, as pip would write it); its prior trains without
    any --plugin or recipe key, and the run's config.toml names the module, so a machine
    without the package is told what to install."""
    site = tmp_path / "site"
    (site / "ep_laplace_prior-0.1.dist-info").mkdir(parents=True)
    (site / "ep_laplace_prior-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ep-laplace-prior\nVersion: 0.1\n")
    (site / "ep_laplace_prior-0.1.dist-info" / "entry_points.txt").write_text(
        "[pyro_vae.plugins]\nlaplace = ep_laplace_prior\n")
    (site / "ep_laplace_prior.py").write_text(
        "import pyro.distributions as dist\nimport torch\n"
        "from pyro_vae.priors import Prior\n"
        "from pyro_vae.registry import PRIORS\n\n\n"
        "class LaplacePrior(Prior):\n"
        "    def forward(self, batch_shape, device, dtype):\n"
        "        loc = torch.zeros(self.latent_dim, device=device, dtype=dtype)\n"
        "        return dist.Laplace(loc, torch.ones_like(loc)).expand(\n"
        "            torch.Size(batch_shape) + loc.shape).to_event(1)\n\n\n"
        "@PRIORS.register('ep_laplace', help='Laplace(0, 1) prior')\n"
        "def build(config, context):\n"
        "    return LaplacePrior(config.latent_dim)\n")
    monkeypatch.syspath_prepend(str(site))
    from pyro_vae.registry import load_entry_points
    load_entry_points()
    assert PRIORS.entry("ep_laplace").plugin == "ep_laplace_prior"
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--prior", "ep_laplace", "--epochs", 1,
                        "--eval-samples", 2, "--out", run)
    assert code == 0, err
    assert Config.from_toml(run / "config.toml").plugins == ["ep_laplace_prior"]
    code, _, err = _cli(capsys, "evaluate", run, "--num-samples", 2)
    assert code == 0, err


@pytest.mark.slow
def test_a_label_conditional_plugin_prior_serves_the_cvae_and_m2(tmp_path, capsys):
    """The example plugin's ``class_means`` prior, p(z|y) = N(m_y, I), declared only by its
    registration's ``label_conditional`` capability: a CVAE trains with it and scores its z
    under its own label's mean, ``sample --label`` draws from it, M2 sums its labels out, and
    an unlabelled model gets one paragraph instead of a traceback."""
    head = f'plugins = ["{PLUGIN}"]\n'
    recipe = tmp_path / "cvae.toml"
    recipe.write_text(head + TINY.format(
        model='kind = "cvae"\nnum_classes = 10\nprior = "class_means"', data=""))
    run = tmp_path / "cvae"
    code, _, err = _cli(capsys, "train", recipe, "--out", run)
    assert code == 0, err
    assert "class_means" in (run / "config.toml").read_text()
    _, vae, _ = load_trained(run)
    labels = torch.tensor([0, 3, 3, 9])
    z = torch.randn(4, 2)
    expected = torch.distributions.Normal(vae.prior.means[labels], 1.0).log_prob(z).sum(-1)
    prior = vae.latent_prior(labels, "cpu")
    assert torch.allclose(prior.log_prob(z), expected)
    assert not torch.allclose(vae.prior.means[0], vae.prior.means[3])  # trained apart
    code, out, err = _cli(capsys, "sample", run, "--label", 3, "--n", 8, "--out", run / "s.npz")
    assert code == 0, err
    assert (run / "s.npz").exists() and "label fidelity" in out

    recipe = tmp_path / "m2.toml"
    recipe.write_text(head + TINY.format(
        model='kind = "m2"\nnum_classes = 10\nprior = "class_means"', data="num_labels = 50"))
    code, _, err = _cli(capsys, "train", recipe, "--out", tmp_path / "m2")
    assert code == 0, err
    summary = json.loads((tmp_path / "m2" / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0

    recipe = tmp_path / "vae.toml"
    recipe.write_text(head + TINY.format(model='prior = "class_means"', data=""))
    code, _, err = _cli(capsys, "train", recipe, "--out", tmp_path / "vae")
    assert code == 2 and "p(z|y)" in err and "cvae" in err
    assert not (tmp_path / "vae" / "summary.json").exists()
