"""Bayesian decoder weights: PyroSample priors, the mean-field guide, minibatch scaling of the
global KL, refusal by per-datapoint objectives, posterior predictive through Predictive."""

import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceMeanField_ELBO

from pyro_vae.models.bayesian import SITE_PREFIX, BayesianVAE
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.runs import load_trained
from helpers import model_config

PIXELS = 16


def _bayesian(layers="all", num_data=None, seed=0):
    torch.manual_seed(seed)
    config = model_config(latent_dim=3, hidden_dims=[12], bayesian_decoder=layers)
    vae = build_vae(config, (1, 4, 4), num_data=num_data)
    x = torch.rand(8, PIXELS).round()
    return vae, x


def test_chosen_layers_become_pyro_samples_and_leave_the_parameters():
    for layers, expected in (("all", 4), ("last", 2)):
        vae, _ = _bayesian(layers)
        assert isinstance(vae, BayesianVAE)
        assert len(vae.weight_names) == expected
        decoder_parameters = [name for name, _ in vae.decoder.named_parameters()]
        assert not set(vae.weight_names) & set(decoder_parameters)


def test_weight_sites_are_global_and_local_sites_are_scaled_by_n_over_b():
    vae, x = _bayesian(num_data=80)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    for trace in (model, guide):
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            if name.startswith(SITE_PREFIX):
                assert site["scale"] == 1.0 and not site["cond_indep_stack"], name
            elif name in ("z", "x"):
                assert site["scale"] == 10.0, name
    assert {SITE_PREFIX + n for n in vae.weight_names} <= set(model.nodes)


def test_global_kl_is_counted_once_whatever_the_minibatch_scale():
    """With the same random draws, loss(N) = KL(q(W) ‖ p(W)) + (N/B) · local terms, so
    2·loss(N=B) − loss(N=2B) is the closed-form weight KL."""
    vae, x = _bayesian()
    elbo = TraceMeanField_ELBO()
    losses = {}
    for num_data in (len(x), 2 * len(x)):
        vae.num_data = num_data
        torch.manual_seed(3)
        losses[num_data] = float(elbo.loss(vae.model, vae.guide, x))
    weight_kl = float(vae.weight_kl().detach())
    assert weight_kl > 0
    assert abs(2 * losses[len(x)] - losses[2 * len(x)] - weight_kl) < 1e-3 * weight_kl


@pytest.mark.parametrize("objective", ["iwae", "dreg", "stl", "renyi", "score"])
def test_per_datapoint_objectives_refuse_the_global_weights(objective):
    with pytest.raises(ConfigError, match="global"):
        Config().with_overrides({"model": {"bayesian_decoder": "all"},
                                 "train": {"objective": objective}})
    vae, x = _bayesian()
    with pytest.raises(ConfigError, match="outside the 'data' plate"):
        ObjectiveModule(vae, make_objective(objective, particles=2))(x)


def test_elbo_trains_the_weight_posterior_with_several_particles():
    vae, x = _bayesian(num_data=8)
    module = ObjectiveModule(vae, make_objective("elbo", particles=3, vectorize=False))
    loss = module(x)
    loss.backward()
    assert torch.isfinite(loss)
    for parameter in (*vae.weight_posterior.loc, *vae.weight_posterior.raw_scale):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


@pytest.mark.slow
def test_predictive_draws_weights_from_the_guide_and_images_from_the_model():
    vae, _ = _bayesian("last")
    with torch.no_grad():
        for raw in vae.weight_posterior.raw_scale:
            raw.fill_(math.log(math.expm1(0.2)))  # q(W) standard deviation 0.2
    name = vae.weight_names[0]
    draws = Predictive(vae.model, guide=vae.guide, num_samples=400,
                       return_sites=["x", SITE_PREFIX + name])(None, num_samples=3)
    assert draws["x"].shape == (400, 3, PIXELS)
    loc = vae.weight_posterior.loc[0].detach()
    # Predictive keeps a size-1 dimension for the data plate left of a global site.
    weights = draws[SITE_PREFIX + name].squeeze(1)
    assert weights.shape == (400, *loc.shape)
    # Each weight's sample mean is within 5 standard errors (0.2/√400) of the guide's mean.
    assert ((weights.mean(0) - loc).abs() < 5 * 0.2 / math.sqrt(400)).all()
    assert abs(float(weights.std(0).mean()) - 0.2) < 0.01


def test_fixed_weights_make_a_plain_vae_and_decode_uses_the_posterior_mean():
    vae, x = _bayesian("last")
    z = torch.randn(4, 3)
    with vae.using_weights():
        trace = poutine.trace(vae.model).get_trace(x)
        assert not [n for n in trace.nodes if n.startswith(SITE_PREFIX)]
        fixed = vae.decode(z)
    assert torch.allclose(vae.decode(z), fixed)
    assert torch.allclose(vae.decode(z), vae.decode(z))  # no weight noise outside a model


@pytest.mark.slow
def test_posterior_predictive_log_likelihood_matches_the_exact_linear_gaussian_answer():
    """Linear-Gaussian VAE with a Bayesian decoder bias: with q(b) = N(b̂, τ²I) and the weights
    fixed (σ(W) = 1e-6), the posterior predictive is exactly
    p(x) = N(x; b̂, WWᵀ + (σ² + τ²)I). Eight independent K = 4000 estimates of its mean over 40
    points agree with it within 5 standard errors, while the point-estimate model's value
    (τ = 0) lies far outside, so the weight draws are really used."""
    import pyro.distributions as dist

    from pyro_vae.toy import SIGMA, LinearGaussian

    toy = LinearGaussian(num_points=40)
    toy.set_encoder()
    vae = BayesianVAE(toy.vae.encoder, toy.vae.decoder, toy.vae.prior, toy.vae.likelihood,
                      layers="last")
    tau = 0.3
    with torch.no_grad():
        vae.weight_posterior.raw_scale[0].fill_(math.log(math.expm1(1e-6)))  # W
        vae.weight_posterior.raw_scale[1].fill_(math.log(math.expm1(tau)))   # b

    def exact(noise_variance: float) -> float:
        covariance = toy.weight @ toy.weight.T + noise_variance * torch.eye(len(toy.bias))
        return float(dist.MultivariateNormal(toy.bias, covariance).log_prob(toy.x).mean())

    means = []
    for seed in range(8):
        torch.manual_seed(seed)
        means.append(float(estimate_log_likelihood(vae, toy.x, num_samples=4000)
                           .log_likelihood.mean()))
    means = torch.tensor(means)
    stderr = float(means.std() / math.sqrt(len(means)))
    assert abs(float(means.mean()) - exact(SIGMA ** 2 + tau ** 2)) < 5 * stderr
    assert abs(float(means.mean()) - exact(SIGMA ** 2)) > 10 * stderr


@pytest.mark.slow
def test_gaps_command_exports_weight_posterior_draws_for_arviz(tmp_path, capsys):
    import arviz as az

    from pyro_vae.cli import main
    from pyro_vae.training import train

    config = Config().with_overrides({
        "model": {"latent_dim": 2, "hidden_dims": [16], "bayesian_decoder": "last"},
        "train": {"epochs": 1, "batch_size": 256}, "evaluate": {"num_samples": 10}})
    run = tmp_path / "run"
    train(config, run)
    assert main(["gaps", str(run), "--n", "3", "--num-samples", "20", "--steps", "5",
                 "--nuts-points", "1", "--chains", "2", "--draws", "15"]) == 0
    assert "posterior-mean decoder" in capsys.readouterr().err
    data = az.from_netcdf(run / "posterior_weights.nc")
    bias = data.posterior[SITE_PREFIX + "net.2.bias"]
    assert bias.shape == (2, 15, 64)
    # Draws of q(W) are independent, so their mean is the guide's mean within 5 s.e.
    _, vae, _ = load_trained(run)
    loc = vae.weight_posterior.loc[1].detach().numpy()
    scale = torch.nn.functional.softplus(vae.weight_posterior.raw_scale[1]).detach().numpy()
    assert (abs(bias.values.mean((0, 1)) - loc) < 5 * scale / math.sqrt(30)).all()
    assert "r_hat" in az.summary(data, var_names=[SITE_PREFIX + "net.2.bias"]).columns
    # The estimator lab needs point-estimated weights: a clear refusal, not a traceback.
    assert main(["compare", str(run), "--objectives", "elbo", "--particles", "1,2"]) == 2
    assert "not a plain VAE" in capsys.readouterr().err
