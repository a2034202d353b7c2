"""A Laplace likelihood for intensities: p(x|z) = Π_i Laplace(x_i; μ_i(z), b_i), b learned:
one scale shared by every pixel, or one per pixel (``[likelihood] per_pixel = true``), whose
number the factory reads from the build context's image shape."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.likelihoods import Likelihood
from pyro_vae.options import Option
from pyro_vae.registry import LIKELIHOODS


class LaplaceLikelihood(Likelihood):
    """Sharp, heavy-tailed pixel noise; the decoder outputs the location μ."""

    def __init__(self, num_scales: int = 1):
        super().__init__()
        self.raw_scale = nn.Parameter(torch.full((num_scales,), -2.0).squeeze(0)
                                      if num_scales == 1 else torch.full((num_scales,), -2.0))

    def forward(self, loc):
        scale = 1e-2 + nn.functional.softplus(self.raw_scale)
        return dist.Laplace(loc, scale.expand(loc.shape)).to_event(1)

    def mean(self, loc):
        return loc

    def output_start(self, pixel_mean):
        return pixel_mean  # the decoder outputs the mean itself


@LIKELIHOODS.register("laplace", help="Laplace pixel noise with a learned scale",
                      options={"per_pixel": Option(False, "learn one scale per pixel "
                                                   "(false: one for the whole image)")})
def build(config, context):
    per_pixel = context.options["per_pixel"]
    return LaplaceLikelihood(context.num_pixels if per_pixel else 1)
