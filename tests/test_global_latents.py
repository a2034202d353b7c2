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
