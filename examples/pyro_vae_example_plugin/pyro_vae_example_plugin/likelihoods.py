"""A Laplace likelihood for intensities: p(x|z) = Π_i Laplace(x_i; μ_i(z), b), b learned."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.likelihoods import Likelihood
from pyro_vae.registry import LIKELIHOODS


class LaplaceLikelihood(Likelihood):
    """Sharp, heavy-tailed pixel noise; the decoder outputs the location μ."""

    def __init__(self):
        super().__init__()
        self.raw_scale = nn.Parameter(torch.tensor(-2.0))

    def forward(self, loc):
        scale = 1e-2 + nn.functional.softplus(self.raw_scale)
        return dist.Laplace(loc, scale.expand(loc.shape)).to_event(1)

    def mean(self, loc):
        return loc

    def output_start(self, pixel_mean):
        return pixel_mean  # the decoder outputs the mean itself


@LIKELIHOODS.register("laplace", help="Laplace pixel noise with a learned scale")
def build(config):
    return LaplaceLikelihood()
