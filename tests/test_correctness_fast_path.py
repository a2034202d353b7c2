"""The fast ELBO path checks what Pyro checks: a malformed model raises as under Pyro, and a
structure that differs in names, counts or observed status falls back to Pyro's own code."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.objectives import IWAE, FastTrace_ELBO, FastTraceMeanField_ELBO
from pyro_vae.objectives.fast_elbo import Structure

X = torch.tensor([0.5, 1.5, -0.2])


class Branching:
    """A model/guide pair whose model takes a branch on later calls."""

    def __init__(self):
        self.loc = torch.zeros(3, requires_grad=True)
        self.branch = None

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            if self.branch == "repeat":  # a bug: the same name twice
                pyro.sample("x", dist.Normal(z, 2.0), obs=x)
            if self.branch == "latent":  # the data site, unobserved on this call
                pyro.sample("x", dist.Normal(z, 1.0))
            else:
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.loc, 1.0))


@pytest.mark.parametrize("cls", [FastTrace_ELBO, FastTraceMeanField_ELBO])
def test_a_branch_repeating_a_site_name_raises_like_pyro(cls):
    pair = Branching()
    objective = cls()
    with pyro.validation_enabled(False):
        objective.differentiable_loss(pair.model, pair.guide, X)
        assert isinstance(objective._structures[(pair.model, pair.guide)], Structure)
        pair.branch = "repeat"
        with pytest.raises(RuntimeError, match="Multiple sample sites named 'x'"):
            Trace_ELBO().differentiable_loss(pair.model, pair.guide, X)
        with pytest.raises(RuntimeError, match="Multiple sample sites named 'x'"):
            objective.differentiable_loss(pair.model, pair.guide, X)


def test_the_per_datapoint_objectives_refuse_a_repeated_name_too():
    pair = Branching()
    pair.branch = "repeat"
    with pytest.raises(RuntimeError, match="Multiple sample sites named 'x'"):
        IWAE(3).differentiable_loss(pair.model, pair.guide, X)


def test_a_site_that_stops_being_observed_falls_back_to_pyro():
    pair = Branching()
    objective = FastTrace_ELBO()
    with pyro.validation_enabled(False):
        objective.differentiable_loss(pair.model, pair.guide, X)
        pair.branch = "latent"  # same names, but "x" is now a latent site of the model
        objective.differentiable_loss(pair.model, pair.guide, X)
        assert objective._structures[(pair.model, pair.guide)] is None
        pyro.set_rng_seed(3)  # from now on Pyro's own code: Pyro's value at the same seed
        loss = objective.differentiable_loss(pair.model, pair.guide, X)
        pyro.set_rng_seed(3)
        expected = Trace_ELBO().differentiable_loss(pair.model, pair.guide, X)
    assert torch.equal(loss, expected)


def test_structure_records_counts_and_observed_status():
    pair = Branching()
    objective = FastTrace_ELBO()
    with pyro.validation_enabled(False):
        objective.differentiable_loss(pair.model, pair.guide, X)
    structure = objective._structures[(pair.model, pair.guide)]
    assert structure.model_sites == (("z", False, None), ("x", True, None))
    assert structure.guide_sites == (("z", False, None),)
