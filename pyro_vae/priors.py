"""Priors p(z) on the latent code: each is one class that builds a batched distribution."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class Prior(nn.Module):
    """Base class: ``forward(batch_shape)`` gives p(z) with one event dimension."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype
                ) -> dist.TorchDistribution:
        raise NotImplementedError

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """KL(N(loc, diag scale²) ‖ p(z)) per latent dimension, where it has a closed form."""
        return None


class StandardNormalPrior(Prior):
    """p(z) = N(0, I)."""

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype
                ) -> dist.TorchDistribution:
        zeros = torch.zeros(*batch_shape, self.latent_dim, device=device, dtype=dtype)
        return dist.Normal(zeros, 1.0, validate_args=False).to_event(1)

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return gaussian_kl_to_standard_normal(loc, scale)


def gaussian_kl_to_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1) − log σ."""
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - torch.log(scale)
