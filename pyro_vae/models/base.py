"""The VAE as a Pyro model/guide pair.

Generative model, for each datapoint n in the ``data`` plate::

    z_n ~ p(z)                       (the prior, e.g. N(0, I))
    x_n ~ p(x | decoder(z_n))        (the likelihood, e.g. Bernoulli with decoder logits)

Guide (the amortized variational posterior)::

    z_n ~ q(z | x_n) = N(μ(x_n), diag σ(x_n)²)     with  z = μ + σ ⊙ ε,  ε ~ N(0, I)

or another registered variational family built from the encoder's (μ, σ): a low-rank Gaussian
or an inverse autoregressive flow (``guides.py``).

Any Pyro objective trains the pair: the model never holds a loss. Both functions run their data
sites inside ``pyro.plate("data", N, subsample=...)``, so a minibatch of B points is scaled by
N / B and the loss estimates the whole-dataset negative ELBO. The KL weight (β, annealing) is
``poutine.scale`` on the latent site in model and guide alike, which every ELBO in Pyro honours,
including the analytic KL of ``TraceMeanField_ELBO``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.guides import DiagonalGaussianGuide, Guide
from pyro_vae.likelihoods import Likelihood
from pyro_vae.networks import start_output_bias
from pyro_vae.params import register_module
from pyro_vae.priors import Prior
from pyro_vae.registry import MODEL_KINDS


def data_plate(x: torch.Tensor, num_data: int | None) -> pyro.plate:
    """The ``data`` plate over a batch ``x`` of a training set of ``num_data`` points (the
    whole set when ``None``): Pyro scales the batch's terms by N/B."""
    batch = x.shape[0]
    size = num_data or batch
    # The batch *is* the subsample: passing it explicitly gives the N/B scale without
    # drawing (and ignoring) random indices. The index tensor is made once per batch size and
    # device, and the device given, so that a training step builds neither again.
    subsample = None if size == batch else _batch_indices(batch, x.device)
    return pyro.plate("data", size, subsample=subsample, dim=-1, device=x.device)


@functools.lru_cache(maxsize=16)
def _batch_indices(batch: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(batch)`` on ``device``, shared by every plate of that batch size."""
    return torch.arange(batch, device=device)


def kl_scale(kl_weight: float) -> contextlib.AbstractContextManager:
    """``poutine.scale`` by the KL weight β on the latent sites (nothing when β = 1)."""
    if kl_weight == 1.0:
        return contextlib.nullcontext()
    return poutine.scale(scale=kl_weight)


@contextlib.contextmanager
def true_model(model: Any) -> Iterator[Any]:
    """``model`` (anything with ``kl_weight`` and ``num_data``) as the true model while the
    block runs: KL weight 1 and no minibatch scaling, restored afterwards."""
    saved = model.kl_weight, model.num_data
    model.kl_weight, model.num_data = 1.0, None
    try:
        yield model
    finally:
        model.kl_weight, model.num_data = saved


class VAE(nn.Module):
    """A variational autoencoder made of four swappable pieces.

    Args:
        encoder: ``x ↦ (μ, σ)`` of the diagonal Gaussian q(z|x).
        decoder: ``z ↦`` the likelihood's raw parameters (one per pixel).
        prior: p(z), a :class:`~pyro_vae.priors.Prior`.
        likelihood: p(x|z), a :class:`~pyro_vae.likelihoods.Likelihood`.
        family: q(z|x) from the encoder's (μ, σ), a :class:`~pyro_vae.guides.Guide`
            (default: the diagonal Gaussian).
        num_data: size N of the training set, for minibatch scaling; ``None`` scores the batch
            given as the whole dataset (as evaluation does).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior,
                 likelihood: Likelihood, num_data: int | None = None,
                 family: Guide | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.family = family if family is not None else DiagonalGaussianGuide()
        self.num_data = num_data
        #: Weight of the latent site in model and guide: β times the annealing factor.
        self.kl_weight = 1.0

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    def data_plate(self, x: torch.Tensor) -> pyro.plate:
        """The ``data`` plate over the batch ``x`` (scaled by N/B while training): a model of
        one's own subclassing :class:`VAE` runs its local sites in it."""
        return data_plate(x, self.num_data)

    def kl_scale(self) -> contextlib.AbstractContextManager:
        """``poutine.scale`` by the KL weight the training loop sets, for the latent sites."""
        return kl_scale(self.kl_weight)

    # The names of earlier releases, kept for subclasses that use them.
    _data_plate = data_plate
    _kl_scale = kl_scale

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(z) p(x|z) with ``x`` observed; ``y`` is accepted and ignored (unconditional)."""
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                z = pyro.sample("z", self.prior(x.shape[:1], x.device, x.dtype))
            return pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """q(z|x) (by default N(μ(x), diag σ(x)²)), reparameterized."""
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                return pyro.sample("z", self.posterior(x))

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """The amortized variational posterior q(z|x) as a distribution over ``[B, D]``."""
        return self.family(*self.encoder(x))

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """A representative point of q(z|x) per row (its mean for the Gaussian guides), for
        pictures, latent maps and active units."""
        return self.family.latent_mean(*self.encoder(x))

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's raw parameters at z, outside a Pyro program (pictures, scoring)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in data space (probabilities for Bernoulli, means otherwise)."""
        return self.likelihood.mean(self.decoder_output(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = μ(x)]: the decoded mean of q(z|x) (see :meth:`latent_mean`)."""
        return self.decode(self.latent_mean(x))

    def generate(self, num_samples: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, decoder output) for ``num_samples`` draws z ~ p(z)."""
        prior = self.prior(torch.Size([num_samples]), torch.device(device), torch.float32)
        z = prior.sample()
        return z, self.decoder_output(z)

    def sample(self, num_samples: int, device: torch.device | str = "cpu",
               mean: bool = True) -> torch.Tensor:
        """Draws x ~ p(x) (or E[x|z] for z ~ p(z) when ``mean``), shape ``[num_samples, P]``."""
        _, output = self.generate(num_samples, device)
        return self.likelihood.mean(output) if mean else self.likelihood(output).sample()

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(inference network: the encoder and the guide component's own networks, generative
        model: the decoder and the likelihood's parameters), for the estimator lab."""
        inference = [*self.encoder.parameters(), *self.family.parameters()]
        generative = [*self.decoder.parameters(), *self.likelihood.parameters()]
        return inference, generative

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """KL(q(z|x) ‖ p(z)) per latent dimension and datapoint, where it has a closed form
        (a diagonal-Gaussian guide and a prior that splits over dimensions)."""
        if not self.family.diagonal:
            return None
        return self.prior.kl_per_dim(loc, scale)

    @torch.no_grad()
    def start_output_bias(self, x: torch.Tensor) -> torch.Tensor:
        """Start the decoder's output bias at the training data ``x`` (``[N, P]``).

        The bias becomes the likelihood's output for the mean training image (the logit of
        each pixel's mean for a Bernoulli, the mean for a Gaussian), so p(x|z) fits the data's
        marginals from the first step. From a zero bias (p = 0.5 everywhere) Adam needs
        thousands of steps to reach a background logit near −7 while the KL squeezes z: the
        MNIST VAE lost 12 nats after 3 epochs and the VampPrior collapsed for good. Training
        calls this when a run starts; the value is the parameter's start, so the checkpoint
        holds it like any other weight. Returns the value set.
        """
        return start_output_bias(self.decoder, self._pixel_mean(x),
                                 self.likelihood.output_start)

    def _pixel_mean(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.parameters()).device
        return x.to(device=device, dtype=torch.float32).mean(0)

    def scoring(self) -> contextlib.AbstractContextManager["VAE"]:
        """Evaluate the true model: KL weight 1 and no minibatch scaling, restored afterwards."""
        return true_model(self)


def build_vae(config: ModelConfig, image_shape: tuple[int, int, int],
              num_data: int | None = None) -> VAE:
    """The model that a ``[model]`` configuration describes, for images of ``image_shape``:
    the factory registered as ``config.kind`` (built-in or from a plugin), checked to have
    returned a model (an ``nn.Module`` with ``model`` and ``guide`` methods)."""
    vae = MODEL_KINDS.get(config.kind)(config, image_shape, num_data)
    if not isinstance(vae, torch.nn.Module) or not all(
            callable(getattr(vae, name, None)) for name in ("model", "guide")):
        raise ConfigError(f"[model] kind = {config.kind!r}: its factory returned "
                          f"{type(vae).__name__}, not a model. A model factory returns an "
                          "nn.Module with model(x, y=None) and guide(x, y=None) methods; fix "
                          "the factory (it must return the model it builds).")
    return vae
