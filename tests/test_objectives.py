"""The per-datapoint objectives against exact answers on the linear-Gaussian model.

Tolerances are multiples of standard errors measured from the repeated draws themselves.
"""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.config import Config
from pyro_vae.toy import LinearGaussian
from pyro_vae.errors import ConfigError
from pyro_vae.objectives import (DReG, IWAE, STL, ObjectiveModule, RenyiBound,
                                 ScoreFunctionELBO, make_objective)

WRONG_LOC = torch.tensor([0.4, -0.3])


@pytest.fixture
def lg():
    model = LinearGaussian(num_points=8)
    model.set_encoder(loc_error=WRONG_LOC, scale_factor=1.6)
    return model


def bound_draws(objective, lg, repeats):
    """``repeats`` independent per-datapoint bound values, shape [repeats, B]."""
    with torch.no_grad():
        return torch.stack([objective.per_datapoint(lg.vae.model, lg.vae.guide, lg.x)[0]
                            for _ in range(repeats)])


def mean_and_stderr(draws):
    return draws.mean(0), draws.std(0) / math.sqrt(len(draws))


@pytest.mark.parametrize("make", [
    lambda k: IWAE(k), lambda k: DReG(k), lambda k: RenyiBound(0.5, k), lambda k: STL(k),
    lambda k: ScoreFunctionELBO(k)], ids=["iwae", "dreg", "renyi", "stl", "score"])
@pytest.mark.slow
def test_every_bound_lies_between_the_elbo_and_log_px(lg, make):
    torch.manual_seed(0)
    exact_elbo = lg.exact_elbo(lg.x).detach()
    mean, stderr = mean_and_stderr(bound_draws(make(8), lg, 300))
    assert (mean >= exact_elbo - 4 * stderr).all()
    assert (mean <= lg.log_px + 4 * stderr).all()


@pytest.mark.slow
def test_iwae_rises_toward_log_px_with_k(lg):
    torch.manual_seed(1)
    means, errors = [], []
    for k in (1, 5, 50, 200):
        mean, stderr = mean_and_stderr(bound_draws(IWAE(k), lg, 100))
        means.append(mean.mean())
        errors.append(stderr.pow(2).mean().sqrt() / math.sqrt(len(mean)))
    for lower, higher, e1, e2 in zip(means, means[1:], errors, errors[1:]):
        assert higher > lower + 0  # strictly rising ...
        assert higher - lower > -4 * math.sqrt(e1 ** 2 + e2 ** 2)
    gap_first = float(lg.log_px.mean() - means[0])
    gap_last = float(lg.log_px.mean() - means[-1])
    assert gap_last < 0.1 * gap_first  # ... and closing most of the ELBO's gap
    # K = 1 is the ELBO itself.
    assert abs(float(means[0] - lg.exact_elbo(lg.x).detach().mean())) < 4 * float(errors[0])


@pytest.mark.slow
def test_renyi_limits(lg):
    # α = 0 is exactly IWAE, draw for draw.
    torch.manual_seed(2)
    renyi = bound_draws(RenyiBound(0.0, 7), lg, 3)
    torch.manual_seed(2)
    iwae = bound_draws(IWAE(7), lg, 3)
    assert torch.allclose(renyi, iwae, atol=1e-5)
    # With one particle every α gives the single-sample ELBO log w.
    torch.manual_seed(3)
    renyi = bound_draws(RenyiBound(0.3, 1), lg, 3)
    torch.manual_seed(3)
    elbo = bound_draws(IWAE(1), lg, 3)
    assert torch.allclose(renyi, elbo, atol=1e-4)
    # α → 1 approaches the ELBO; α < 0 lies above IWAE, in expectation.
    torch.manual_seed(4)
    near_one, stderr = mean_and_stderr(bound_draws(RenyiBound(0.999, 50), lg, 100))
    assert ((near_one - lg.exact_elbo(lg.x).detach()).abs() < 4 * stderr + 0.01).all()
    with pytest.raises(ConfigError, match="α = 1"):
        RenyiBound(1.0, 5)


def test_per_datapoint_reduction_does_not_mix_datapoints(lg):
    x = lg.x
    torch.manual_seed(5)
    first, _, _ = IWAE(20).per_datapoint(lg.vae.model, lg.vae.guide, x[[0, 1]])
    torch.manual_seed(5)
    second, _, _ = IWAE(20).per_datapoint(lg.vae.model, lg.vae.guide, x[[0, 2]])
    assert torch.equal(first[0], second[0])  # same draws, same datapoint, other neighbour
    assert not torch.equal(first[1], second[1])


@pytest.mark.slow
def test_batch_of_b_and_b_batches_of_one_give_the_same_bound(lg):
    torch.manual_seed(6)
    batch, stderr = mean_and_stderr(bound_draws(IWAE(10), lg, 200))
    singles = []
    for n in range(len(lg.x)):
        with torch.no_grad():
            singles.append(torch.stack([IWAE(10).per_datapoint(
                lg.vae.model, lg.vae.guide, lg.x[n:n + 1])[0][0] for _ in range(200)]))
    single_mean, single_err = mean_and_stderr(torch.stack(singles, 1))
    assert (abs(batch - single_mean) < 4 * torch.sqrt(stderr ** 2 + single_err ** 2)).all()


def test_minibatch_scaling(lg):
    lg.vae.num_data = 1000
    torch.manual_seed(7)
    values, _, scale = IWAE(5).per_datapoint(lg.vae.model, lg.vae.guide, lg.x)
    torch.manual_seed(7)
    loss = IWAE(5).loss(lg.vae.model, lg.vae.guide, lg.x)
    assert scale == 1000 / len(lg.x)
    assert math.isclose(loss, -scale * float(values.detach().sum()), rel_tol=1e-5)


def gradient_draws(loss_fn, lg, repeats, params):
    draws = []
    for _ in range(repeats):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        draws.append(torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1)
                                for g, p in zip(grads, params)]))
    return torch.stack(draws)


def encoder_and_decoder(lg):
    return list(lg.vae.encoder.parameters()), list(lg.vae.decoder.parameters())


def assert_unbiased(draws, reference, sigmas=4.5):
    mean, stderr = mean_and_stderr(draws)
    ok = (mean - reference).abs() <= sigmas * stderr + 1e-4
    assert ok.all(), (mean[~ok], reference[~ok], stderr[~ok])


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "stl", "score"])
@pytest.mark.slow
def test_elbo_gradients_are_unbiased_against_the_closed_form(lg, objective):
    torch.manual_seed(8)
    params = [p for group in encoder_and_decoder(lg) for p in group]
    exact = torch.autograd.grad(-lg.exact_elbo(lg.x).sum(), params)
    exact = torch.cat([g.reshape(-1) for g in exact])
    estimator = make_objective(objective, particles=4)
    draws = gradient_draws(
        lambda: estimator.differentiable_loss(lg.vae.model, lg.vae.guide, lg.x),
        lg, 600 if objective == "score" else 300, params)
    assert_unbiased(draws, exact)


@pytest.mark.slow
def test_dreg_and_iwae_gradients_agree_in_expectation(lg):
    torch.manual_seed(9)
    encoder, decoder = encoder_and_decoder(lg)
    params = encoder + decoder
    iwae = gradient_draws(lambda: IWAE(10).differentiable_loss(lg.vae.model, lg.vae.guide,
                                                               lg.x), lg, 400, params)
    dreg = gradient_draws(lambda: DReG(10).differentiable_loss(lg.vae.model, lg.vae.guide,
                                                               lg.x), lg, 400, params)
    difference = iwae.mean(0) - dreg.mean(0)
    stderr = torch.sqrt(iwae.var(0) / len(iwae) + dreg.var(0) / len(dreg))
    assert (difference.abs() <= 4.5 * stderr + 1e-4).all()
    # DReG's point: a lower-variance encoder gradient at the same K.
    n_enc = sum(p.numel() for p in encoder)
    assert dreg[:, :n_enc].var(0).sum() < iwae[:, :n_enc].var(0).sum()


@pytest.mark.parametrize("objective", ["stl", "dreg"])
@pytest.mark.slow
def test_encoder_gradient_is_exactly_zero_at_the_true_posterior(objective):
    lg = LinearGaussian(num_points=8)
    lg.set_encoder()  # q = p(z|x)
    encoder, decoder = encoder_and_decoder(lg)
    estimator = make_objective(objective, particles=3)
    draws = gradient_draws(lambda: estimator.differentiable_loss(
        lg.vae.model, lg.vae.guide, lg.x), lg, 20, encoder + decoder)
    n_enc = sum(p.numel() for p in encoder)
    assert draws[:, :n_enc].abs().max() < 1e-3  # zero variance, every draw
    assert draws[:, n_enc:].abs().max() > 1e-2  # the decoder still learns
    # The ordinary reparameterized gradient is noisy there.
    plain = make_objective("elbo", particles=3)
    noisy = gradient_draws(lambda: plain.differentiable_loss(lg.vae.model, lg.vae.guide, lg.x),
                           lg, 20, encoder + decoder)
    assert noisy[:, :n_enc].std(0).max() > 1e-2


def test_global_latent_sites_are_refused():
    def model(x):
        w = pyro.sample("w", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", pyro.distributions.Normal(w, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("w", pyro.distributions.Normal(loc, 1.0))

    for name in ("iwae", "dreg", "stl", "renyi", "score"):
        with pytest.raises(ConfigError, match="global latent"):
            make_objective(name, 3).loss(model, guide, torch.zeros(4))


@pytest.mark.parametrize("name", ["iwae", "dreg", "stl", "renyi", "score"])
def test_objectives_work_with_svi_and_as_modules(lg, name):
    lg.vae.num_data = 100
    objective = make_objective(name, 4)
    svi = SVI(lg.vae.model, lg.vae.guide, pyro.optim.Adam({"lr": 1e-2}), objective)
    assert math.isfinite(svi.step(lg.x))
    module = ObjectiveModule(lg.vae, objective)
    loss = module(lg.x)
    loss.backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert math.isfinite(float(loss.detach()))
    assert loss.requires_grad


def test_stock_trace_elbo_matches_iwae_with_one_particle(lg):
    torch.manual_seed(10)
    iwae = bound_draws(IWAE(1), lg, 400).mean()
    trace = torch.tensor([-Trace_ELBO().loss(lg.vae.model, lg.vae.guide, lg.x)
                          for _ in range(400)]).mean() / len(lg.x)
    assert abs(float(iwae - trace)) < 0.1


@pytest.mark.slow
def test_meanfield_with_a_prior_that_has_no_closed_form_kl_falls_back_to_monte_carlo():
    import pyro.distributions as dist

    from pyro_vae.models import build_vae
    from pyro_vae.objectives import make_objective
    from pyro_vae.priors import Prior

    class LaplacePrior(Prior):
        def forward(self, batch_shape, device, dtype):
            zeros = torch.zeros(*batch_shape, self.latent_dim, device=device, dtype=dtype)
            return dist.Laplace(zeros, 1.0).to_event(1)

    vae = build_vae(Config().model, (1, 8, 8))
    vae.prior = LaplacePrior(vae.latent_dim)
    x = torch.bernoulli(torch.full((16, 64), 0.3))
    torch.manual_seed(0)
    meanfield = torch.stack([make_objective("meanfield").differentiable_loss(
        vae.model, vae.guide, x) for _ in range(200)]).detach()
    torch.manual_seed(1)
    trace = torch.stack([make_objective("elbo").differentiable_loss(
        vae.model, vae.guide, x) for _ in range(200)]).detach()
    stderr = (meanfield.var() / 200 + trace.var() / 200).sqrt()
    assert torch.isfinite(meanfield).all()
    assert abs(meanfield.mean() - trace.mean()) < 4 * stderr
