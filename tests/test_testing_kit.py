"""pyro_vae.testing, the plugin author's kit: its checks pass on every built-in component and
on the example plugin's, and name what is wrong with a broken one."""

from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.priors import Prior
from pyro_vae.registry import GUIDES, LIKELIHOODS, OBJECTIVES, PRIORS, load_plugin
from pyro_vae.testing import (check_guide, check_likelihood, check_model, check_objective,
                              check_prior)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pyro_vae_example_plugin"


@pytest.fixture()
def example_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    load_plugin("pyro_vae_example_plugin")


@pytest.mark.parametrize("name", PRIORS.choices())
def test_every_built_in_prior_passes(name):
    assert check_prior(name) == []


@pytest.mark.parametrize("name", GUIDES.choices())
def test_every_built_in_guide_passes(name):
    assert check_guide(name) == []


@pytest.mark.parametrize("name", LIKELIHOODS.choices())
def test_every_built_in_likelihood_passes(name):
    assert check_likelihood(name) == []


@pytest.mark.parametrize("name", OBJECTIVES.choices())
def test_every_built_in_objective_passes(name):
    assert check_objective(name) == []


def test_the_example_plugins_components_pass(example_plugin):
    assert check_prior("student_t") == []
    assert check_prior("student_t", {"df": 5.0, "learn_df": False}) == []
    assert check_prior("class_means") == []  # a p(z|y) for the labelled kinds
    assert check_likelihood("laplace") == []


@pytest.mark.parametrize("kind", ["vae", "tied_vae"])
def test_model_kinds_train_and_resume_exactly(example_plugin, kind):
    assert check_model(kind, commands=False) == []


def test_a_kind_with_a_global_latent_passes_every_command(example_plugin):
    assert check_model("hyperprior_vae") == []  # each command in a process of its own


class NoEventDimension(Prior):
    """Broken on purpose: N(0, I) without .to_event(1), so each coordinate is a datapoint."""

    def forward(self, batch_shape, device, dtype):
        return dist.Normal(torch.zeros(*batch_shape, self.latent_dim), 1.0)


class Unnormalized(Prior):
    """Broken on purpose: log N(z; 0, I) + 1, a density that integrates to e."""

    def forward(self, batch_shape, device, dtype):
        return _Shifted(torch.zeros(*batch_shape, self.latent_dim))


class _Shifted(dist.TorchDistribution):
    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self, zeros):
        self.base = dist.Normal(zeros, 1.0).to_event(1)
        super().__init__(self.base.batch_shape, self.base.event_shape, validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value) + 1.0


def test_a_broken_prior_is_caught_with_a_clear_message():
    (failure,) = check_prior(NoEventDimension(2))
    assert "no event dimension" in failure and ".to_event(1)" in failure
    (failure,) = check_prior(Unnormalized(2))
    assert "integrates to 2.7" in failure  # e = 2.718...


def test_a_guide_that_is_not_reparameterized_is_caught():
    class Discrete(nn.Module):
        def forward(self, loc, scale):
            return dist.Bernoulli(logits=loc).to_event(1)

        def latent_mean(self, loc, scale):
            return loc

    (failure,) = check_guide(Discrete())
    assert "reparameterized" in failure
