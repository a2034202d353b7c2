"""The two-stochastic-layer model: exact log p(x) on a linear-Gaussian chain, training, refusals."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood, log_importance_weights
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models import build_vae
from pyro_vae.training import train
from helpers import model_config

TOP, MIDDLE, PIXELS, SIGMA = 2, 3, 5, 0.4


def linear_chain():
    """z2 ~ N(0, I), z1 | z2 ~ N(A z2 + a, diag s²), x | z1 ~ N(W z1 + b, σ² I)."""
    config = model_config(latent_dim=MIDDLE, hidden_dims=[], likelihood="gaussian",
                          gaussian_scale=SIGMA, stochastic_layers=2, top_latent_dim=TOP,
                          top_hidden_dims=[])
    torch.manual_seed(0)
    vae = build_vae(config, (1, 1, PIXELS))
    assert isinstance(vae, HierarchicalVAE)
    head = vae.upper_decoder.head
    with torch.no_grad():
        head.raw_scale.weight.zero_()
        head.raw_scale.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    a_matrix, a_bias = head.loc.weight.detach(), head.loc.bias.detach()
    s = torch.nn.functional.softplus(head.raw_scale.bias.detach())
    layer = vae.decoder.net[0]
    w, b = layer.weight.detach(), layer.bias.detach()
    cov_z1 = a_matrix @ a_matrix.T + torch.diag(s ** 2)
    marginal = dist.MultivariateNormal(w @ a_bias + b,
                                       w @ cov_z1 @ w.T + SIGMA ** 2 * torch.eye(PIXELS))
    x = marginal.sample((12,))
    _set_guide_near_posterior(vae, a_matrix, a_bias, s, w, b, cov_z1)
    return vae, x, marginal.log_prob(x)


def _softplus_inverse(y):
    return torch.log(torch.expm1(y))


def _set_guide_near_posterior(vae, a_matrix, a_bias, s, w, b, cov_z1, widen=1.3):
    """q(z1|x) and q(z2|z1): the exact Gaussian conditionals' means, diagonal scales widened."""
    post_z1 = torch.linalg.inv(torch.linalg.inv(cov_z1) + w.T @ w / SIGMA ** 2)
    gain_z1 = post_z1 @ w.T / SIGMA ** 2  # E[z1|x] = a + G (x − W a − b)
    post_z2 = torch.linalg.inv(torch.eye(TOP) + a_matrix.T @ torch.diag(s ** -2) @ a_matrix)
    gain_z2 = post_z2 @ a_matrix.T @ torch.diag(s ** -2)  # E[z2|z1] = G2 (z1 − a)
    with torch.no_grad():
        for head, gain, bias, cov in (
                (vae.encoder.head, gain_z1, a_bias - gain_z1 @ (w @ a_bias + b), post_z1),
                (vae.upper_encoder.head, gain_z2, -gain_z2 @ a_bias, post_z2)):
            head.loc.weight.copy_(gain)
            head.loc.bias.copy_(bias)
            head.raw_scale.weight.zero_()
            head.raw_scale.bias.copy_(_softplus_inverse(widen * torch.diag(cov).sqrt()))


@pytest.mark.slow
def test_importance_sampling_matches_the_exact_two_layer_marginal():
    vae, x, exact = linear_chain()
    torch.manual_seed(1)
    estimate = estimate_log_likelihood(vae, x, num_samples=20_000)
    with torch.no_grad():
        log_w = log_importance_weights(vae.model, vae.guide, x, 20_000)
    w = torch.exp(log_w - log_w.max(0).values)
    stderr = w.std(0) / (math.sqrt(20_000) * w.mean(0))
    assert ((estimate.log_likelihood - exact).abs() < 5 * stderr + 1e-3).all()
    assert (estimate.elbo < exact).all()


@pytest.mark.slow
def test_two_layer_model_trains_and_writes_a_run(tmp_path):
    config = Config().with_overrides({
        "model": {"stochastic_layers": 2, "hidden_dims": [32], "latent_dim": 8,
                  "top_latent_dim": 4, "top_hidden_dims": [16]},
        "train": {"epochs": 2, "batch_size": 128, "objective": "iwae", "particles": 5},
        "evaluate": {"num_samples": 32}})
    summary = train(config, tmp_path / "run")
    assert summary["test_elbo"] < summary["test_log_likelihood"] < 0
    assert summary["kl_per_dim"] is None and 0 <= summary["active_units"] <= 8
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0


@pytest.mark.parametrize("objective", ["meanfield", "dreg", "stl"])
def test_objectives_needing_independent_guide_sites_are_refused(objective):
    with pytest.raises(ConfigError, match="q\\(z2\\|z1\\) depends"):
        Config().with_overrides({"model": {"stochastic_layers": 2},
                                 "train": {"objective": objective}})


def test_two_layers_need_mlps():
    with pytest.raises(ConfigError, match="network"):
        Config().with_overrides({"model": {"stochastic_layers": 2, "network": "conv"}})


def test_score_function_gradient_has_no_pathwise_term_in_a_hierarchical_guide():
    """With samples detached as drawn, log q(z2|z1) carries no gradient to the z1 encoder."""
    from pyro_vae.objectives.particles import run_particles

    vae, x, _ = linear_chain()
    traces = run_particles(vae.model, vae.guide, 4, (x,), {}, detach_samples=True)
    z2 = traces.guide.nodes["z2"]
    upper_term = z2["fn"].log_prob(z2["value"]).sum()
    grads = torch.autograd.grad(upper_term, list(vae.encoder.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    assert not traces.guide.nodes["z1"]["value"].requires_grad
