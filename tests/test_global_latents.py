"""Models with a global latent site (a hyperprior) are scored by the posterior predictive,
and per-datapoint objectives explain in terms of the model why they cannot train them."""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood, global_sites
from pyro_vae.objectives import ObjectiveModule, make_objective


class Hyperprior(nn.Module):
    """s ~ LogNormal(0, 1) shared by all datapoints; z_n ~ N(0, s²); x_n ~ N(z_n, 1).
    The guide puts q(s) = δ(s0) and, given s, the exact posterior q(z_n | x_n, s)."""

    def __init__(self, s0: float, plate: str = "data"):
        super().__init__()
        self.s0 = nn.Parameter(torch.tensor(s0))
        self.plate = plate
        self.kl_weight, self.num_data = 1.0, None

    def model(self, x, y=None):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with pyro.plate(self.plate, len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, s))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x, y=None):
        s = pyro.sample("s", dist.Delta(self.s0))
        with pyro.plate(self.plate, len(x), dim=-1):
            v = s ** 2 / (s ** 2 + 1)
            pyro.sample("z", dist.Normal(x * v, v.sqrt()))

    def scoring(self):
        return contextlib.nullcontext(self)


def test_a_global_site_is_scored_by_the_posterior_predictive():
    torch.manual_seed(0)
    x = 2.0 * torch.randn(7)
    model = Hyperprior(1.7)
    assert global_sites(model, x) == ["s"]
    estimate = estimate_log_likelihood(model, x, num_samples=40)
    # q(s) = δ(s0) and the exact q(z|x, s): every weight is p(x | s0) = N(x; 0, s0² + 1)
    exact = dist.Normal(0.0, math.sqrt(1.7 ** 2 + 1)).log_prob(x)
    assert torch.allclose(estimate.log_likelihood, exact, atol=1e-4)
    assert torch.allclose(estimate.elbo, exact, atol=1e-4)


@pytest.mark.parametrize("objective", ["iwae", "dreg", "stl", "renyi", "score"])
def test_per_datapoint_objectives_say_why_in_terms_of_the_model(objective):
    module = ObjectiveModule(Hyperprior(1.0), make_objective(objective, 2))
    with pytest.raises(ConfigError, match="global latent variable shared by all datapoints"):
        module(torch.randn(5))


def test_a_plate_not_named_data_is_not_called_a_global_variable():
    model = Hyperprior(1.0, plate="batch")
    with pytest.raises(ConfigError, match="Name the model's and guide's plate"):
        estimate_log_likelihood(model, torch.randn(5), num_samples=4)


def test_elbo_trains_the_global_site():
    torch.manual_seed(0)
    model = Hyperprior(0.3)
    x = 3.0 * torch.randn(50)
    module = ObjectiveModule(model, make_objective("elbo"))
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        module(x).backward()
        optimizer.step()
    assert float(model.s0) > 1.0  # moves towards the data's spread (about 3)


EXAMPLES = (__import__("pathlib").Path(__file__).resolve().parents[1] / "examples"
            / "pyro_vae_example_plugin")
HYPERPRIOR_RECIPE = """plugins = ["pyro_vae_example_plugin"]

[data]
dataset = "digits"

[model]
kind = "hyperprior_vae"
latent_dim = 2
hidden_dims = [16]

[train]
epochs = 2
batch_size = 128
objective = "elbo"

[evaluate]
num_samples = 20
"""


@pytest.mark.slow
def test_a_hyperprior_kind_trains_under_elbo_and_every_command_handles_its_global_site(
        tmp_path, capsys, monkeypatch):
    """z ~ N(0, s^2 I), s ~ LogNormal global with its own q(s) (the example plugin's
    ``hyperprior_vae``): trains under "elbo" with no shim; active units and KL measure the
    local code; the Monte Carlo error is a number (never NaN/null); compare measures the
    objectives that apply and names the others; gaps measure the code given a draw of s."""
    import json

    from pyro_vae.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLES))
    recipe = tmp_path / "hyper.toml"
    recipe.write_text(HYPERPRIOR_RECIPE)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    out = capsys.readouterr()
    assert "nan" not in out.out.lower() and "Traceback" not in out.err
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["test_log_likelihood_mc_stderr"])
    assert summary["active_units"] is not None and summary["kl"] > 0
    trusted = ["--plugin", "pyro_vae_example_plugin"]
    assert main(["compare", str(run), "--particles", "1,2", "--repeats", "2",
                 "--batch-size", "8", "--out", str(tmp_path / "lab"), *trusted]) == 0
    out = capsys.readouterr()
    assert "not measured: iwae, dreg, stl, score" in out.err and "'s'" in out.err
    lab = json.loads((tmp_path / "lab" / "compare.json").read_text())
    assert {r["objective"] for r in lab["reports"]} == {"elbo"}
    assert set(lab["not_measured"]) == {"iwae", "dreg", "stl", "score"}
    assert main(["compare", str(run), "--objectives", "iwae", "--repeats", "2", *trusted]) == 2
    assert "none of them applies" in capsys.readouterr().err
    assert main(["gaps", str(run), "--n", "2", "--num-samples", "8", "--steps", "2",
                 "--nuts-points", "1", "--chains", "2", "--draws", "4",
                 "--out", str(tmp_path / "gaps"), *trusted]) == 0
    gaps = json.loads((tmp_path / "gaps" / "gaps.json").read_text())
    assert gaps["given_global_sites"]["s"] > 0 and math.isfinite(gaps["approximation_gap"])
    assert "given the global latent site(s) fixed" in capsys.readouterr().err
