"""The KL term: closed form against a worked example and Monte Carlo; β as poutine.scale."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.config import ModelConfig
from pyro_vae.models import build_vae
from pyro_vae.priors import gaussian_kl_to_standard_normal


def test_worked_example_gives_3_125():
    loc = torch.tensor([2.0, 0.0])
    scale = torch.tensor([0.25, 4.0]).sqrt()
    kl = gaussian_kl_to_standard_normal(loc, scale).sum()
    assert abs(float(kl) - 3.125) < 1e-3
    by_hand = 0.5 * (4 + 0.25 - 1 - math.log(0.25)) + 0.5 * (0 + 4 - 1 - math.log(4))
    assert abs(float(kl) - by_hand) < 1e-6
    q = dist.Normal(loc, scale).to_event(1)
    p = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    assert abs(float(kl_divergence(q, p)) - float(kl)) < 1e-5


def test_closed_form_kl_matches_monte_carlo_within_standard_error():
    torch.manual_seed(1)
    loc, scale = torch.tensor([2.0, 0.0, -0.5]), torch.tensor([0.5, 2.0, 0.3])
    q = dist.Normal(loc, scale).to_event(1)
    p = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    z = q.sample((200_000,))
    terms = q.log_prob(z) - p.log_prob(z)
    stderr = float(terms.std() / math.sqrt(len(terms)))
    exact = float(gaussian_kl_to_standard_normal(loc, scale).sum())
    assert abs(float(terms.mean()) - exact) < 4 * stderr


def _small_vae(num_pixels=16, latent_dim=3):
    config = ModelConfig(latent_dim=latent_dim, hidden_dims=[12])
    vae = build_vae(config, (1, 4, 4))
    x = torch.bernoulli(torch.full((10, num_pixels), 0.3))
    return vae, x


def _batch_means(objective_cls, vae, x, repeats=40, particles=100):
    """``repeats`` independent estimates, each averaging ``particles`` vectorized particles."""
    objective = objective_cls(num_particles=particles, vectorize_particles=True,
                              max_plate_nesting=1)
    with torch.no_grad():
        return torch.tensor([float(objective.differentiable_loss(vae.model, vae.guide, x))
                             for _ in range(repeats)])


@pytest.mark.slow
def test_trace_and_meanfield_elbo_agree_in_expectation():
    torch.manual_seed(2)
    vae, x = _small_vae()
    trace = _batch_means(Trace_ELBO, vae, x)
    meanfield = _batch_means(TraceMeanField_ELBO, vae, x)
    stderr = math.sqrt(trace.var() / len(trace) + meanfield.var() / len(meanfield))
    assert abs(float(trace.mean() - meanfield.mean())) < 4 * stderr
    # The analytic KL removes variance: the mean-field estimator is the less noisy one.
    assert meanfield.var() < trace.var()


def test_kl_weight_scales_exactly_the_kl_term():
    vae, x = _small_vae()
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        kl = float(gaussian_kl_to_standard_normal(loc, scale).sum())
        losses = {}
        for beta in (1.0, 0.25):
            vae.kl_weight = beta
            torch.manual_seed(3)  # same ε, so the reconstruction term is identical
            losses[beta] = float(TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide,
                                                                           x))
    assert abs((losses[1.0] - losses[0.25]) - 0.75 * kl) < 1e-4 * max(1.0, kl)
