"""Exact answers on the linear-Gaussian model (see ``linear_gaussian.py``)."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae.toy import LATENT, LinearGaussian
from pyro_vae.evaluate import estimate_log_likelihood, log_importance_weights


@pytest.fixture
def linear_gaussian():
    model = LinearGaussian()
    return model, model.vae, model.x, model.log_px


def test_exact_posterior_gives_exact_log_likelihood(linear_gaussian):
    lg, vae, x, exact = linear_gaussian
    lg.set_encoder()
    estimate = estimate_log_likelihood(vae, x, num_samples=50)
    # q = p(z|x) makes every weight equal to p(x): estimate and ELBO are exact, not noisy.
    assert torch.allclose(estimate.log_likelihood, exact, atol=1e-3)
    assert torch.allclose(estimate.elbo, exact, atol=1e-3)


@pytest.mark.slow
def test_importance_sampling_matches_exact_within_standard_error(linear_gaussian):
    lg, vae, x, exact = linear_gaussian
    lg.set_encoder(loc_error=torch.tensor([0.4, -0.3]), scale_factor=1.6)
    torch.manual_seed(5)
    num_samples = 5000
    estimate = estimate_log_likelihood(vae, x, num_samples=num_samples, max_chunk=20_000)
    # Delta-method standard error of log mean w, from a fresh set of K weights per datapoint.
    with torch.no_grad():
        log_w = log_importance_weights(vae.model, vae.guide, x, num_samples)
    w = torch.exp(log_w - log_w.max(0).values)
    stderr = w.std(0) / (math.sqrt(num_samples) * w.mean(0))
    error = estimate.log_likelihood - exact
    assert (error.abs() < 5 * stderr + 1e-4).all(), (error, stderr)
    assert abs(float(error.mean())) < 4 * float(stderr.pow(2).mean().sqrt() / math.sqrt(len(x)))
    # ELBO ≤ IS estimate ≤ exact (the gap between ELBO and exact is KL(q ‖ p(z|x)) > 0).
    assert (estimate.elbo < estimate.log_likelihood).all()
    assert float((exact - estimate.elbo).min()) > 0.05
    assert float(estimate.elbo.mean()) < float(estimate.log_likelihood.mean()) \
        <= float(exact.mean()) + 4 * float(stderr.mean())


def test_elbo_gap_is_kl_to_the_exact_posterior(linear_gaussian):
    lg, vae, x, exact = linear_gaussian
    shift, factor = torch.tensor([0.4, -0.3]), 1.6
    lg.set_encoder(loc_error=shift, scale_factor=factor)
    torch.manual_seed(6)
    estimate = estimate_log_likelihood(vae, x, num_samples=4000)
    # log p(x) − ELBO = KL(q(z|x) ‖ p(z|x)), the same for every x here.
    post_std = lg.post_std
    q = dist.Normal(shift, post_std * factor).to_event(1)
    p = dist.Normal(torch.zeros(LATENT), post_std).to_event(1)
    kl = float(kl_divergence(q, p))
    with torch.no_grad():
        log_w = log_importance_weights(vae.model, vae.guide, x, 4000)
    stderr = float(log_w.std(0).max()) / math.sqrt(4000)
    assert torch.allclose(exact - estimate.elbo, torch.full_like(exact, kl), atol=5 * stderr)


def test_chunking_does_not_change_the_estimate(linear_gaussian):
    lg, vae, x, exact = linear_gaussian
    lg.set_encoder()
    small = estimate_log_likelihood(vae, x, num_samples=64, max_chunk=100)
    large = estimate_log_likelihood(vae, x, num_samples=64, max_chunk=100_000)
    assert torch.allclose(small.log_likelihood, large.log_likelihood, atol=1e-4)
