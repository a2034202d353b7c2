"""A toy with exact answers: the linear-Gaussian VAE, whose log p(x), posterior and ELBO are
known in closed form. The tests check every estimator against it; the notebooks teach with it.

p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) ⇒ log p(x) = log N(x; b, WWᵀ + σ²I). With W's columns
orthogonal the posterior covariance Σ = (I + WᵀW/σ²)⁻¹ is diagonal, so a linear encoder with a
constant scale can represent q = p(z|x) exactly; ``set_encoder`` can also move it off.
"""

import pyro.distributions as dist
import torch

from pyro_vae.likelihoods import GaussianLikelihood
from pyro_vae.models import VAE
from pyro_vae.networks import MLPDecoder, MLPEncoder
from pyro_vae.priors import StandardNormalPrior

PIXELS, LATENT, SIGMA = 6, 2, 0.5


class LinearGaussian:
    """A :class:`~pyro_vae.models.VAE` with linear encoder and decoder and a Gaussian likelihood.

    ``vae`` is the model/guide pair, ``x`` data drawn from the model, ``log_px`` their exact
    log-likelihoods, ``post_cov`` the (diagonal) exact posterior covariance.
    """

    def __init__(self, num_points: int = 40, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(PIXELS, LATENT, generator=generator))
        self.weight = basis * torch.tensor([1.5, 0.8])  # orthogonal columns
        self.bias = torch.randn(PIXELS, generator=generator) * 0.3
        decoder = MLPDecoder(LATENT, PIXELS, hidden_dims=[])
        with torch.no_grad():
            decoder.net[0].weight.copy_(self.weight)
            decoder.net[0].bias.copy_(self.bias)
        self.vae = VAE(MLPEncoder(PIXELS, LATENT, hidden_dims=[]), decoder,
                       StandardNormalPrior(LATENT), GaussianLikelihood(scale=SIGMA))
        marginal = dist.MultivariateNormal(
            self.bias, self.weight @ self.weight.T + SIGMA ** 2 * torch.eye(PIXELS))
        torch.manual_seed(seed)
        self.x = marginal.sample((num_points,))
        self.log_px = marginal.log_prob(self.x)
        self.post_cov = torch.linalg.inv(
            torch.eye(LATENT) + self.weight.T @ self.weight / SIGMA ** 2)

    @property
    def post_std(self) -> torch.Tensor:
        return torch.sqrt(torch.diag(self.post_cov))

    def set_encoder(self, loc_error=0.0, scale_factor: float = 1.0) -> None:
        """μ(x) = Σ Wᵀ(x − b)/σ² + loc_error, σ = sqrt(diag Σ)·scale_factor."""
        head = self.vae.encoder.head
        with torch.no_grad():
            gain = self.post_cov @ self.weight.T / SIGMA ** 2
            head.loc.weight.copy_(gain)
            head.loc.bias.copy_(-gain @ self.bias + loc_error)
            head.raw_scale.weight.zero_()
            head.raw_scale.bias.copy_(torch.log(torch.expm1(self.post_std * scale_factor)))

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO(x) in closed form, differentiable in every encoder and decoder parameter."""
        expected_log_lik, kl = self.exact_elbo_terms(x)
        return expected_log_lik - kl

    def exact_elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ELBO's two terms in closed form, E_q[log p(x|z)] and KL(q(z|x) ‖ p(z)), per
        datapoint (the graded exercises diagnose a wrong ELBO by how it mixes them)."""
        vae = self.vae
        loc, scale = vae.encoder(x)
        layer = vae.decoder.net[0]
        mean = layer(loc)
        column_norms = layer.weight.pow(2).sum(0)  # ‖W_j‖²
        expected_sq = (x - mean).pow(2).sum(-1) + (scale.pow(2) * column_norms).sum(-1)
        log_lik = -0.5 * expected_sq / SIGMA ** 2 - 0.5 * PIXELS * torch.log(
            torch.tensor(2 * torch.pi * SIGMA ** 2))
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - torch.log(scale)).sum(-1)
        return log_lik, kl
