"""The mixture prior starts close to N(0, I) in any dimension, with every component in use."""

import pytest
import torch

from pyro_vae.priors import MixturePrior


@pytest.mark.parametrize("latent_dim", [2, 50])
def test_mixture_prior_starts_near_the_standard_normal(latent_dim):
    torch.manual_seed(0)
    prior = MixturePrior(latent_dim, components=50)
    z = torch.randn(2000, latent_dim)
    with torch.no_grad():
        mixture = prior(torch.Size([len(z)]), z.device, z.dtype).log_prob(z)
        standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        # Means drawn from N(0, I) put standard-normal codes 11 nats lower in 50 dimensions.
        assert float((standard - mixture).mean()) < 0.2
        # Responsibilities of the components for each code: many share it (N(0, I)-drawn
        # means leave about one responsible component per code in 50 dimensions).
        scale = torch.nn.functional.softplus(prior.raw_scale)
        per_component = torch.distributions.Normal(prior.loc, scale).log_prob(
            z[:, None, :]).sum(-1) + torch.log_softmax(prior.logits, 0)
        responsibility = torch.softmax(per_component, -1)
        effective = float((1 / (responsibility ** 2).sum(-1)).mean())
    assert effective > 10, effective
