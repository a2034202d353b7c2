"""A Student-t prior: one class plus its registration, nothing else in pyro-vae changes."""

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.priors import Prior
from pyro_vae.registry import PRIORS


class StudentTPrior(Prior):
    """p(z) = Π_d StudentT(z_d; ν, 0, 1) with learned degrees of freedom ν = 1 + softplus(a)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.raw_df = nn.Parameter(torch.tensor(2.0))

    def forward(self, batch_shape, device, dtype):
        df = 1.0 + nn.functional.softplus(self.raw_df)
        zeros = torch.zeros(*batch_shape, self.latent_dim, device=device, dtype=dtype)
        return dist.StudentT(df.to(dtype), zeros, 1.0).to_event(1)


@PRIORS.register("student_t", help="Student-t with learned degrees of freedom")
def build(config, context):
    return StudentTPrior(config.latent_dim)
