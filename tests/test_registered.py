"""Every registered prior × guide × compatible objective goes through build → a few steps →
evaluate (tiny networks on a digits subset)."""

import itertools
import math

import pytest
import torch

from pyro_vae.config import Config
from pyro_vae.data import load_dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood, latent_activity
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.registry import GUIDES, OBJECTIVES, PRIORS


def _combinations():
    """(prior, guide, objective) the one compatibility check accepts (at collection time, so
    the built-in entries; a plugin's entries join when its module is imported)."""
    accepted = []
    for prior, guide, objective in itertools.product(PRIORS.choices(), GUIDES.choices(),
                                                     OBJECTIVES.choices()):
        try:
            _config(prior, guide, objective)
        except ConfigError:
            continue
        accepted.append((prior, guide, objective))
    return accepted


def _config(prior, guide, objective):
    return Config().with_overrides({
        "model": {"prior": prior, "guide": guide, "latent_dim": 2, "hidden_dims": [8],
                  **({"prior_components": 3} if prior in ("mixture", "vamp") else {}),
                  **({"flow_layers": 1} if "flow" in prior or guide == "iaf" else {})},
        "train": {"objective": objective, "particles": 2}})


COMBINATIONS = _combinations()


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", validation_fraction=0.0)
    return torch.bernoulli(data.train_x[:32], generator=torch.Generator().manual_seed(0))


def _built_in(registry) -> set[str]:
    """The registry's own entries (plugins loaded by other tests in this session excluded)."""
    return {name for name in registry.choices()
            if registry.entry(name).module.split(".")[0] == "pyro_vae"}


def test_every_built_in_entry_is_covered():
    assert {c[0] for c in COMBINATIONS} == _built_in(PRIORS)
    assert {c[1] for c in COMBINATIONS} == _built_in(GUIDES)
    # every objective but those only for categorical codes (kind "discrete", tested there)
    assert {c[2] for c in COMBINATIONS} == {
        name for name in _built_in(OBJECTIVES)
        if "discrete_only" not in OBJECTIVES.capabilities(name)}


@pytest.mark.parametrize("prior, guide, objective", COMBINATIONS)
def test_build_train_a_few_steps_and_evaluate(digits, prior, guide, objective):
    torch.manual_seed(0)
    config = _config(prior, guide, objective)
    vae = build_vae(config.model, (1, 8, 8), num_data=len(digits))
    if prior == "vamp":
        vae.prior.initialize_from(digits)
    module = ObjectiveModule(vae, make_objective(objective, 2))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in module.parameters()]
    for _ in range(2):
        optimizer.zero_grad()
        loss = module(digits)
        loss.backward()
        optimizer.step()
        assert math.isfinite(float(loss))
    moved = sum(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert moved > 0
    estimate = estimate_log_likelihood(vae.eval(), digits[:8], num_samples=4)
    assert torch.isfinite(estimate.log_likelihood).all()
    assert (estimate.log_likelihood >= estimate.elbo - 1e-4).all()  # log-mean-exp ≥ mean
    activity = latent_activity(vae, digits[:8])
    assert math.isfinite(activity["kl"]) and activity["kl"] > -1e-3 * 8
    assert vae.latent_mean(digits[:3]).shape == (3, 2)
