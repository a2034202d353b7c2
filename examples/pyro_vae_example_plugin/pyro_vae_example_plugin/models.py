"""A model/guide pair of its own: the tied VAE, whose decoder reuses the encoder's first layer.

    z ~ N(0, I);   h = tanh(A z + c);   x ~ Bernoulli(logits = Wᵀ h + b)
    q(z|x) = N(μ(h'), diag σ(h')²),   h' = tanh(W x + d)

W (the encoder's first layer) is shared by both directions. The class writes its own
``model`` and ``guide`` (the Pyro way: a ``data`` plate, ``pyro.module``) and inherits from
pyro-vae's VAE the helpers the commands use (scoring, sampling, pictures).

The kind also supplies two hooks (``KindHooks``): ``test_summary`` adds the norm of the shared
layer to ``summary.json`` and to ``pyro-vae evaluate``, and ``pictures`` draws the shared
layer's filters beside the default pictures.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models import VAE
from pyro_vae.plots import save_image_grid
from pyro_vae.plots.vae import default_pictures
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.registry import MODEL_KINDS, BuildContext, KindHooks


class TiedEncoder(nn.Module):
    def __init__(self, num_pixels: int, hidden: int, latent_dim: int):
        super().__init__()
        self.first = nn.Linear(num_pixels, hidden)
        self.loc = nn.Linear(hidden, latent_dim)
        self.scale = nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


class TiedDecoder(nn.Module):
    def __init__(self, encoder: TiedEncoder, latent_dim: int, hidden: int, num_pixels: int):
        super().__init__()
        self._encoder = (encoder,)  # shared, not owned: the VAE registers the encoder
        self.up = nn.Linear(latent_dim, hidden)
        self.bias = nn.Parameter(torch.zeros(num_pixels))

    def forward(self, z):
        h = torch.tanh(self.up(z))
        return h @ self._encoder[0].first.weight + self.bias


class TiedVAE(VAE):
    """The tied model/guide pair."""

    def model(self, x, y=None):
        pyro.module("tied_vae", self)
        with self.data_plate(x):
            with self.kl_scale():
                z = pyro.sample("z", self.prior(x.shape[:1], x.device, x.dtype))
            logits = self.decoder(z)
            return pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(self, x, y=None):
        pyro.module("tied_vae", self)
        with self.data_plate(x):
            loc, scale = self.encoder(x)
            with self.kl_scale():
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def shared_weight_norm(vae, data, split, config):
    """Hook ``test_summary``: the Frobenius norm of the shared layer W."""
    return {"tied_weight_norm": float(vae.encoder.first.weight.detach().norm())}


@torch.no_grad()
def pictures(vae, data, run_dir, history, config):
    """Hook ``pictures``: the default pictures, and ``filters.png`` (up to 16 rows of W as
    images, each scaled to [0, 1])."""
    default_pictures(vae, data, run_dir, history, config)
    rows = vae.encoder.first.weight[:16]
    low, high = rows.min(-1, keepdim=True).values, rows.max(-1, keepdim=True).values
    save_image_grid(run_dir / "filters.png", (rows - low) / (high - low + 1e-12),
                    data.image_shape, 8, "rows of the shared layer W")


@MODEL_KINDS.register("tied_vae", help="VAE whose decoder reuses the encoder's first layer",
                      capabilities={"pictures", "latent_means", "estimator_lab"},
                      hooks=KindHooks(display_name="tied VAE", test_summary=shared_weight_norm,
                                      pictures=pictures))
def build(config, image_shape, num_data=None):
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    hidden = config.hidden_dims[0] if config.hidden_dims else 64
    encoder = TiedEncoder(num_pixels, hidden, config.latent_dim)
    decoder = TiedDecoder(encoder, config.latent_dim, hidden, num_pixels)
    likelihood = build_likelihood(config, BuildContext(tuple(image_shape), num_data))
    return TiedVAE(encoder, decoder, StandardNormalPrior(config.latent_dim), likelihood,
                   num_data)
