"""Encoder and decoder networks: plain ``torch.nn`` modules, no Pyro inside.

An encoder maps flattened images ``x`` (``[..., P]``) to the location and standard deviation
of a diagonal Gaussian q(z|x) = N(μ(x), diag σ(x)²). A decoder maps latents ``z`` (``[..., D]``)
to the raw parameter of the likelihood (logits for Bernoulli, a mean for Gaussian), one per
pixel. Leading batch dimensions (particles, data) pass through unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.registry import NETWORKS

ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers between ``sizes`` with ``activation`` between them (not after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Turns a feature vector into (μ, σ): σ = softplus(h) or σ = exp(h / 2) (h = log σ²)."""

    def __init__(self, in_features: int, latent_dim: int, scale: str = "softplus"):
        super().__init__()
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_scale = nn.Linear(in_features, latent_dim)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw_scale(features)
        if self.scale == "logvar":
            scale = torch.exp(0.5 * raw)
        else:
            scale = F.softplus(raw) + 1e-6
        return self.loc(features), scale


class MLPEncoder(nn.Module):
    """x ↦ (μ, σ) through a multilayer perceptron (no hidden layers: a linear map)."""

    def __init__(self, num_pixels: int, latent_dim: int, hidden_dims: list[int],
                 activation: str = "relu", scale: str = "softplus"):
        super().__init__()
        self.body = mlp([num_pixels, *hidden_dims], activation)
        self.act = ACTIVATIONS[activation]() if hidden_dims else nn.Identity()
        self.head = GaussianHead(hidden_dims[-1] if hidden_dims else num_pixels, latent_dim,
                                 scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.act(self.body(x)))


class MLPDecoder(nn.Module):
    """z ↦ per-pixel likelihood parameters through a multilayer perceptron."""

    def __init__(self, latent_dim: int, num_pixels: int, hidden_dims: list[int],
                 activation: str = "relu"):
        super().__init__()
        self.net = mlp([latent_dim, *reversed(hidden_dims), num_pixels], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _check_conv_shape(image_shape: tuple[int, int, int]) -> None:
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise ConfigError(f"the conv network needs image sides divisible by 4, but the images "
                          f"are {height}×{width}; use network = \"mlp\" for this dataset.")


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (32 and 64 channels), then a dense layer and the Gaussian head."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, hidden_dim: int = 256,
                 activation: str = "relu", scale: str = "softplus"):
        super().__init__()
        _check_conv_shape(image_shape)
        channels, height, width = image_shape
        act = ACTIVATIONS[activation]
        self.image_shape = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 4, stride=2, padding=1), act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), act(), nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), hidden_dim), act(),
        )
        self.head = GaussianHead(hidden_dim, latent_dim, scale)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = x.shape[:-1]
        features = self.body(x.reshape(-1, *self.image_shape))
        loc, scale = self.head(features)
        return loc.reshape(*batch_shape, -1), scale.reshape(*batch_shape, -1)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: dense layers, then two stride-2 transposed convs."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], hidden_dim: int = 256,
                 activation: str = "relu"):
        super().__init__()
        _check_conv_shape(image_shape)
        channels, height, width = image_shape
        act = ACTIVATIONS[activation]
        self.grid = (64, height // 4, width // 4)
        self.dense = nn.Sequential(nn.Linear(latent_dim, hidden_dim), act(),
                                   nn.Linear(hidden_dim, 64 * (height // 4) * (width // 4)), act())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        grid = self.dense(z.reshape(-1, z.shape[-1])).reshape(-1, *self.grid)
        return self.deconv(grid).reshape(*batch_shape, -1)


def output_layer(decoder: nn.Module) -> nn.Module:
    """The decoder's last linear or (transposed) convolutional layer: the one whose bias is
    the output bias."""
    layers = [module for module in decoder.modules()
              if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    if not layers:
        raise ConfigError("the decoder has no linear or convolutional layer whose bias could "
                          "start at the data; give it one.")
    return layers[-1]


def output_bias_start(pixel_start: torch.Tensor, bias_shape: torch.Size,
                      pixel_mean: torch.Tensor, to_output) -> torch.Tensor:
    """The output-bias start of shape ``bias_shape`` for images with mean ``pixel_mean``.

    A bias with one entry per pixel (an MLP) takes ``pixel_start`` (``to_output`` applied to
    each pixel's mean); one with an entry per channel (a transposed convolution) takes
    ``to_output`` of each channel's mean over its pixels.
    """
    if bias_shape.numel() == pixel_start.numel():
        return pixel_start.reshape(bias_shape)
    channels = bias_shape.numel()
    if pixel_mean.numel() % channels:
        raise ConfigError(f"the decoder's output bias has {channels} entries, neither one per "
                          f"pixel ({pixel_mean.numel()}) nor one per channel.")
    return to_output(pixel_mean.reshape(channels, -1).mean(-1)).reshape(bias_shape)


@torch.no_grad()
def start_output_bias(decoder: nn.Module, pixel_mean: torch.Tensor, to_output) -> torch.Tensor:
    """Set the bias of the decoder's output layer so that it outputs ``to_output(pixel_mean)``
    at zero hidden activity; returns the value set."""
    layer = output_layer(decoder)
    if layer.bias is None:
        raise ConfigError("the decoder's output layer has no bias to start at the data.")
    value = output_bias_start(to_output(pixel_mean), layer.bias.shape, pixel_mean, to_output)
    layer.bias.copy_(value)
    return value


@NETWORKS.register("mlp", help="multilayer perceptrons (hidden_dims)")
def _mlp_pair(image_shape: tuple[int, int, int], latent_dim: int, hidden_dims: list[int],
              activation: str, encoder_scale: str) -> tuple[nn.Module, nn.Module]:
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    return (MLPEncoder(num_pixels, latent_dim, hidden_dims, activation, encoder_scale),
            MLPDecoder(latent_dim, num_pixels, hidden_dims, activation))


@NETWORKS.register("conv", help="small convolutional pair (square images, side divisible by 4)",
                   capabilities={"images"})
def _conv_pair(image_shape: tuple[int, int, int], latent_dim: int, hidden_dims: list[int],
               activation: str, encoder_scale: str) -> tuple[nn.Module, nn.Module]:
    hidden = hidden_dims[0] if hidden_dims else 256
    return (ConvEncoder(image_shape, latent_dim, hidden, activation, encoder_scale),
            ConvDecoder(latent_dim, image_shape, hidden, activation))


def build_networks(network: str, image_shape: tuple[int, int, int], latent_dim: int,
                   hidden_dims: list[int], activation: str, encoder_scale: str,
                   options: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair registered as ``network`` (built-in: ``mlp``, ``conv``).

    A network factory takes these same arguments and returns an encoder ``x ↦ (μ, σ)`` and a
    decoder ``z ↦`` the likelihood's raw parameters. The options it declares (the recipe's
    ``[network]`` table) come as further keyword arguments.
    """
    return NETWORKS.get(network)(image_shape, latent_dim, hidden_dims, activation,
                                 encoder_scale, **(options or {}))
