"""Gradient estimators stay unbiased under a KL weight β (β-VAE, every step of KL warm-up).

Draws are vectorized: the toy guide below has its own (local) parameters for each of S copies
of one datapoint, so one call gives S independent gradient draws, the gradients of the
parameters of copy s. Tolerances are multiples of the standard errors of those draws.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae.objectives import DReG, IWAE, STL, RenyiBound, ScoreFunctionELBO
from pyro_vae.toy import LinearGaussian
from pyro_vae.training import KLSchedule

COPIES, SIGMA = 4000, 0.6
W = torch.tensor([[1.2, 0.0], [0.3, -0.9], [-0.5, 0.4]])
B = torch.tensor([0.2, -0.1, 0.3])
X = torch.tensor([1.0, -0.8, 0.6])
#: The guide's parameters (the same for every copy): off the exact posterior.
LOC0 = torch.tensor([0.9, -0.2])
RAW0 = torch.tensor([0.1, -0.6])


class LocalToy:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I); q_s(z) = N(loc_s, softplus(raw_s)²) for each
    of S copies of one datapoint, with β on the latent site of model and guide."""

    def __init__(self, beta: float, copies: int = COPIES, num_data: int | None = None):
        self.beta, self.copies = beta, copies
        self.num_data = num_data or copies
        self.loc = LOC0.repeat(copies, 1).requires_grad_()
        self.raw = RAW0.repeat(copies, 1).requires_grad_()
        self.x = X.repeat(copies, 1)

    def _plate(self):
        subsample = None if self.num_data == self.copies else torch.arange(self.copies)
        return pyro.plate("data", self.num_data, subsample=subsample, dim=-1)

    def model(self, x):
        with self._plate():
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.copies, 2]).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)

    def guide(self, x):
        with self._plate():
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.Normal(self.loc, F.softplus(self.raw)).to_event(1))

    def gradients(self, objective, seed: int) -> torch.Tensor:
        """[S, 4]: one gradient draw of (loc, raw) per copy."""
        torch.manual_seed(seed)
        loss = objective.differentiable_loss(self.model, self.guide, self.x)
        grads = torch.autograd.grad(loss, [self.loc, self.raw])
        return torch.cat(grads, -1) / (self.num_data / self.copies)

    def exact_beta_elbo_gradient(self) -> torch.Tensor:
        """∇ of E_q[log p(x|z)] − β KL(q ‖ p) in closed form, per copy, [4]."""
        loc = LOC0.clone().requires_grad_()
        raw = RAW0.clone().requires_grad_()
        scale = F.softplus(raw)
        mean = W @ loc + B
        expected_sq = (X - mean).pow(2).sum() + (scale.pow(2) * W.pow(2).sum(0)).sum()
        log_lik = -0.5 * expected_sq / SIGMA ** 2
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - torch.log(scale)).sum()
        grads = torch.autograd.grad(-(log_lik - self.beta * kl), [loc, raw])
        return torch.cat(grads)


def z_scores(draws: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    stderr = draws.std(0) / math.sqrt(len(draws))
    return (draws.mean(0) - reference) / stderr


#: β-VAE weights, and 0.05: a KL warm-up step (the weight grows from near 0 to β).
BETAS = [0.3, 1.0, 2.0, 0.05]


@pytest.mark.parametrize("beta", BETAS, ids=["beta0.3", "beta1", "beta2", "warmup0.05"])
def test_dreg_encoder_gradient_matches_iwae_in_expectation(beta):
    toy = LocalToy(beta)
    # Same seed, same ε: paired differences, whose mean must vanish.
    difference = toy.gradients(DReG(4), seed=1) - toy.gradients(IWAE(4), seed=1)
    scores = z_scores(difference, torch.zeros(4))
    assert scores.abs().max() < 4.5, scores
    # Still DReG: a lower-variance encoder gradient than IWAE's at β = 1.
    if beta == 1.0:
        assert toy.gradients(DReG(4), 2).var(0).sum() < toy.gradients(IWAE(4), 2).var(0).sum()


def test_dreg_gradient_follows_minibatch_scaling_and_beta():
    # β is read relative to the data plate's N/B: minibatch scaling alone is not a KL weight.
    toy = LocalToy(0.3, copies=COPIES, num_data=10 * COPIES)
    difference = toy.gradients(DReG(4), seed=3) - toy.gradients(IWAE(4), seed=3)
    assert z_scores(difference, torch.zeros(4)).abs().max() < 4.5


@pytest.mark.slow
def test_dreg_during_kl_warmup_on_a_vae():
    """The project's VAE at a warm-up step of KLSchedule: DReG's encoder gradient is IWAE's."""
    lg = LinearGaussian(num_points=6)
    lg.set_encoder(loc_error=torch.tensor([0.6, -0.5]), scale_factor=1.5)
    lg.vae.num_data = 60
    lg.vae.kl_weight = KLSchedule(beta=1.0, warmup_steps=100).weight(19)  # 0.2
    params = list(lg.vae.encoder.parameters())

    def draws(objective, seed):
        torch.manual_seed(seed)
        out = []
        for _ in range(50):
            loss = objective.differentiable_loss(lg.vae.model, lg.vae.guide, lg.x)
            out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(out)

    difference = draws(DReG(4), 4) - draws(IWAE(4), 4)
    scores = z_scores(difference, torch.zeros(difference.shape[1]))
    assert scores.abs().max() < 4.5, scores


@pytest.mark.parametrize("beta", BETAS, ids=["beta0.3", "beta1", "beta2", "warmup0.05"])
def test_stl_and_score_match_the_exact_beta_elbo_gradient(beta):
    toy = LocalToy(beta)
    exact = toy.exact_beta_elbo_gradient()
    assert z_scores(toy.gradients(STL(3), seed=5), exact).abs().max() < 4.5
    assert z_scores(toy.gradients(ScoreFunctionELBO(3), seed=6), exact).abs().max() < 4.5


@pytest.mark.parametrize("beta", BETAS, ids=["beta0.3", "beta1", "beta2", "warmup0.05"])
def test_renyi_with_beta(beta):
    toy = LocalToy(beta, copies=50)
    # α = 0 is IWAE, gradient for gradient, whatever β.
    assert torch.allclose(toy.gradients(RenyiBound(0.0, 5), 7), toy.gradients(IWAE(5), 7),
                          atol=1e-5)
    # The value weighs the latent terms by β: (1/(1−α)) log mean_k w_k^(1−α) with
    # log w = log p(x|z) + β (log p(z) − log q(z)), recomputed here in plain torch.
    alpha = -0.5
    torch.manual_seed(8)
    value, _, _ = RenyiBound(alpha, 5).per_datapoint(toy.model, toy.guide, toy.x)
    torch.manual_seed(8)
    z = dist.Normal(toy.loc, F.softplus(toy.raw)).rsample((5,))
    log_w = (dist.Normal(z @ W.T + B, SIGMA).log_prob(X).sum(-1)
             + beta * (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                       - dist.Normal(toy.loc, F.softplus(toy.raw)).log_prob(z).sum(-1)))
    expected = (torch.logsumexp((1 - alpha) * log_w, 0) - math.log(5)) / (1 - alpha)
    assert torch.allclose(value, expected, atol=1e-4)
