"""One protocol, enforced: a plain-Pyro model with only the methods that ``pyro_vae.protocol``
documents trains with ``fit`` and every command works on its run or refuses in words; a model
declaring a capability without its methods, and an unknown capability, are refused."""

import json
import textwrap

import pytest

import pyro_vae
from pyro_vae.cli import main
from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.protocol import REQUIRED_METHODS, missing_methods
from pyro_vae.registry import MODEL_KINDS

PLAIN = textwrap.dedent('''
    import contextlib

    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn


    class PlainVAE(nn.Module):
        """A VAE written in plain Pyro: nothing of pyro_vae but the protocol's methods."""

        def __init__(self, num_pixels, latent_dim=2, hidden=16):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(num_pixels, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * latent_dim))
            self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, num_pixels))
            self.latent_dim = latent_dim
            self.kl_weight, self.num_data = 1.0, None

        def _plate(self, x):
            size = self.num_data or len(x)
            subsample = None if size == len(x) else torch.arange(len(x))
            return pyro.plate("data", size, subsample=subsample, dim=-1)

        def model(self, x, y=None):
            pyro.module("plain", self)
            with self._plate(x):
                with pyro.poutine.scale(scale=self.kl_weight):
                    prior = dist.Normal(torch.zeros(len(x), self.latent_dim), 1.0)
                    z = pyro.sample("z", prior.to_event(1))
                pyro.sample("x", self.likelihood(self.dec(z)), obs=x)

        def guide(self, x, y=None):
            pyro.module("plain", self)
            with self._plate(x):
                with pyro.poutine.scale(scale=self.kl_weight):
                    pyro.sample("z", self.posterior(x))

        @contextlib.contextmanager
        def scoring(self):
            saved = self.kl_weight, self.num_data
            self.kl_weight, self.num_data = 1.0, None
            try:
                yield self
            finally:
                self.kl_weight, self.num_data = saved

        # capability latent_means
        def posterior(self, x):
            loc, raw = self.enc(x).chunk(2, -1)
            return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

        def latent_mean(self, x):
            return self.posterior(x).mean

        # capability pictures
        def generate(self, num_samples, device="cpu"):
            z = torch.randn(num_samples, self.latent_dim, device=device)
            return z, self.dec(z)

        def likelihood(self, output):
            return dist.Bernoulli(logits=output).to_event(1)

        def decode(self, z):
            return torch.sigmoid(self.dec(z))

        def reconstruct(self, x):
            return self.decode(self.latent_mean(x))

        # capability estimator_lab
        def parameter_groups(self):
            return list(self.enc.parameters()), list(self.dec.parameters())


    def build(config, image_shape, num_data=None):
        channels, height, width = image_shape
        return PlainVAE(channels * height * width, config.latent_dim)


    build.capabilities = {"pictures", "latent_means", "estimator_lab"}


    def build_without_lab(config, image_shape, num_data=None):
        return build(config, image_shape, num_data)


    build_without_lab.capabilities = {"pictures", "latent_means"}
''')


@pytest.fixture()
def plain(tmp_path, monkeypatch):
    (tmp_path / "plain_pyro_vae.py").write_text(PLAIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("plain_pyro_vae")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_a_plain_pyro_model_trains_with_fit_and_every_command_works(plain, tmp_path, capsys):
    model = plain.build(ModelConfig(latent_dim=2), (1, 8, 8))
    run = tmp_path / "run"
    summary = pyro_vae.fit(model, factory=plain.build, out=run, epochs=1, eval_samples=8,
                           batch_size=256, progress=False, options={"model": {"latent_dim": 2}})
    assert summary["active_units"] is not None and summary["kl"] > 0
    assert (run / "samples.png").exists() and (run / "latent.png").exists()
    trusted = ("--plugin", "plain_pyro_vae")
    code, _, err = _cli(capsys, "sample", run, "--n", 4, "--out", run / "s.npz", *trusted)
    assert code == 0, err
    for argv in (("traverse", run),
                 ("anomaly", run, "--against", "digits", "--num-samples", 4, "--limit", 60,
                  "--regret-steps", 2, "--out", run / "anomaly"),
                 ("compare", run, "--objectives", "elbo,iwae", "--particles", 2, "--repeats", 2,
                  "--batch-size", 8, "--out", run / "lab"),
                 ("gaps", run, "--n", 2, "--num-samples", 8, "--steps", 2, "--nuts-points", 1,
                  "--chains", 2, "--draws", 4, "--out", run / "gaps")):
        code, _, err = _cli(capsys, *argv, *trusted)
        assert code == 0, (argv[0], err)
    gaps = json.loads((run / "gaps" / "gaps.json").read_text())
    assert gaps["approximation_gap"] == gaps["approximation_gap"]  # not NaN


def test_a_model_without_the_lab_is_refused_by_compare_in_words(plain, tmp_path, capsys):
    model = plain.build_without_lab(ModelConfig(latent_dim=2), (1, 8, 8))
    run = tmp_path / "run"
    pyro_vae.fit(model, factory=plain.build_without_lab, out=run, epochs=1, eval_samples=4,
                 batch_size=256, progress=False, options={"model": {"latent_dim": 2}})
    code, _, err = _cli(capsys, "compare", run, "--repeats", 2, "--particles", 2,
                        "--plugin", "plain_pyro_vae")
    assert code == 2 and "estimator" in err


def test_a_declared_capability_without_its_methods_is_refused_at_fit(plain, tmp_path):
    model = plain.build(ModelConfig(latent_dim=2), (1, 8, 8))
    del plain.PlainVAE.parameter_groups
    with pytest.raises(ConfigError, match=r"lacks parameter_groups \(estimator_lab\)"):
        pyro_vae.fit(model, factory=plain.build, out=tmp_path / "run", epochs=1)
    assert not (tmp_path / "run").exists()


def test_missing_methods_names_every_absent_one():
    class Bare:
        kl_weight = 1.0

    missing = missing_methods(Bare(), {"pictures"})
    assert "model (every model)" in missing and "num_data (every model)" in missing
    assert "likelihood (pictures)" in missing and "generate (pictures)" in missing
    assert set(REQUIRED_METHODS) <= set(pyro_vae.capabilities.MODEL_CAPABILITIES)


def test_an_unknown_capability_is_refused_at_registration():
    def build(config, image_shape, num_data=None):
        raise NotImplementedError

    with pytest.raises(ConfigError, match="Did you mean 'pictures'"):
        MODEL_KINDS.add("misspelled_kind", build, capabilities={"picture"})
    assert "misspelled_kind" not in MODEL_KINDS.registered_names()


def test_models_import_no_objective():
    """Layering: a model is maths (model and guide); objectives come from above
    (pyro_vae.kind_objectives wires the cvae's penalty, pyro_vae.plates holds the plates)."""
    import ast
    from pathlib import Path

    models = Path(pyro_vae.__file__).parent / "models"
    for path in models.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.startswith("pyro_vae.objectives") for n in names), path.name


def test_the_training_loop_imports_no_application():
    """Layering: the loop (training.py) imports neither fidelity nor anomaly nor applications;
    the labelled kinds' label fidelity reaches summary.json through their run_summary hook."""
    import ast
    from pathlib import Path

    from pyro_vae.protocol import hooks

    source = (Path(pyro_vae.__file__).parent / "training.py").read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    for application in ("fidelity", "anomaly", "applications"):
        assert f"pyro_vae.{application}" not in imported
    config = pyro_vae.Config().with_overrides({"model": {"kind": "cvae"}})
    assert hooks(config).run_summary is not None
