"""The guide components: DReG and STL hold the flow's parameters fixed in log q (checked
against a plain-torch computation), and the guides' densities are right."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.guides import DiagonalGaussianGuide, IAFGuide, LowRankGaussianGuide
from pyro_vae.objectives import ObjectiveModule, make_objective

D, B, K, P = 3, 4, 5, 2


class _TinyVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz, I); q(z|x) = an IAF on N(loc, diag scale²) whose base
    parameters are free per datapoint (no encoder), so every gradient is easy to recompute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.loc = nn.Parameter(0.3 * torch.randn(B, D))
        self.raw_scale = nn.Parameter(0.2 * torch.randn(B, D))
        self.weight = nn.Parameter(torch.randn(P, D))
        self.family = IAFGuide(D, layers=1)
        for p in self.family.parameters():  # away from the identity start
            nn.init.normal_(p, std=0.3)

    def base(self):
        return self.loc, self.raw_scale.exp()

    def model(self, x, y=None):
        pyro.module("tiny", self)
        with pyro.plate("data", B, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("tiny", self)
        with pyro.plate("data", B, dim=-1):
            pyro.sample("z", self.family(*self.base()))


def _reference_guide_gradient(vae, x, weights_power):
    """Plain torch: z = f(ε) with gradients to every guide parameter; log q(z) evaluated by
    inverting the one autoregressive layer by fixed-point sweeps (D of them) with every
    parameter detached; gradient Σ_k c_k ∇_z log w_k · ∂z_k/∂φ, c = 1/K (STL) or w̃² (DReG)."""
    loc, scale = vae.base()
    eps = dist.Normal(loc, scale).rsample((K,))                      # [K, B, D]
    context = torch.cat([loc, scale.log()], -1)
    layer = vae.family.layers[0]
    mean, log_scale = layer.nn(eps, context=context)
    log_scale = log_scale.clamp(-5.0, 3.0)
    z = torch.exp(log_scale) * eps + mean                              # the IAF step

    z_leaf = z.detach().requires_grad_(True)
    frozen = {name: p.detach() for name, p in layer.nn.named_parameters()}
    ctx = context.detach()
    u = torch.zeros_like(z_leaf)
    for _ in range(D):  # autoregressive: D sweeps recover ε exactly
        m, s = torch.func.functional_call(layer.nn, frozen, (u,), {"context": ctx})
        s = s.clamp(-5.0, 3.0)
        u = (z_leaf - m) * torch.exp(-s)
    log_q = dist.Normal(loc.detach(), scale.detach()).log_prob(u).sum(-1) - s.sum(-1)
    log_p = (dist.Normal(0.0, 1.0).log_prob(z_leaf).sum(-1)
             + dist.Normal(z_leaf @ vae.weight.detach().T, 1.0).log_prob(x).sum(-1))
    log_w = log_p - log_q                                              # [K, B]
    if weights_power == 1:
        coefficient = torch.full_like(log_w, 1.0 / K)
    else:
        coefficient = torch.softmax(log_w.detach(), 0) ** 2
    (grad_z,) = torch.autograd.grad((coefficient * log_w).sum(), z_leaf)
    params = [vae.loc, vae.raw_scale, *vae.family.parameters()]
    return torch.autograd.grad(z, params, grad_outputs=-grad_z)


@pytest.mark.parametrize("objective, power", [("stl", 1), ("dreg", 2)])
def test_dreg_and_stl_hold_the_flow_fixed_in_log_q(objective, power):
    vae = _TinyVAE()
    x = torch.randn(B, P)
    module = ObjectiveModule(vae, make_objective(objective, particles=K))
    pyro.clear_param_store()
    torch.manual_seed(7)
    module(x).backward()
    ours = [p.grad.clone() for p in [vae.loc, vae.raw_scale, *vae.family.parameters()]]
    torch.manual_seed(7)
    reference = _reference_guide_gradient(vae, x, power)
    for mine, theirs in zip(ours, reference):
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-3), (mine, theirs)
    # and the flow's parameters do get a gradient (only through z)
    assert any(float(g.abs().sum()) > 1e-3 for g in ours[2:])


def test_the_guides_densities():
    torch.manual_seed(0)
    loc, scale = torch.randn(6, 4), torch.rand(6, 4) + 0.5
    z = torch.randn(6, 4)
    diagonal = DiagonalGaussianGuide()(loc, scale).log_prob(z)
    assert torch.allclose(diagonal, dist.Normal(loc, scale).log_prob(z).sum(-1))
    lowrank = LowRankGaussianGuide(4, rank=2)
    q = lowrank(loc, scale)
    factor = lowrank.factor(torch.cat([loc, scale.log()], -1)).reshape(6, 4, 2)
    covariance = torch.diag_embed(scale ** 2) + factor @ factor.transpose(-1, -2)
    exact = dist.MultivariateNormal(loc, covariance_matrix=covariance).log_prob(z)
    assert torch.allclose(q.log_prob(z), exact, atol=1e-5)
    # the IAF starts at the identity: q = N(loc, diag scale²), latent mean = loc
    iaf = IAFGuide(4, layers=2)
    assert torch.allclose(iaf(loc, scale).log_prob(z), diagonal, atol=1e-5)
    assert torch.allclose(iaf.latent_mean(loc, scale), loc)
