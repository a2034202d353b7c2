"""Likelihoods p(x|z): each turns the decoder's output into a distribution over a whole image.

Every likelihood returns a distribution with one event dimension (the pixels), so that
``pyro.sample("x", likelihood(decoder(z)), obs=x)`` scores a whole image per datapoint. Decoders
output unconstrained values (logits, means): a Bernoulli built from logits costs a fraction of
one built from probabilities and is numerically safer.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.distributions import BernoulliPixels
from pyro_vae.config import ModelConfig
from pyro_vae.errors import DataError
from pyro_vae.options import Option
from pyro_vae.registry import LIKELIHOODS, BuildContext

#: The mean pixel is clamped to [ε, 1 − ε] before a logit is taken (|logit| ≤ 6.9), so a
#: pixel that is never on in the training data starts far from p = 0.5 but finite.
MEAN_CLAMP = 1e-3


class Likelihood(nn.Module):
    """Base class: ``forward(decoder_output)`` gives p(x|z); ``mean`` gives E[x|z]."""

    #: Human-readable description of the data this likelihood accepts.
    support = "any real values"

    def forward(self, decoder_output: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, decoder_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_start(self, pixel_mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose E[x|z] is ``pixel_mean`` (the decoder's output-bias start).

        Starting the last layer's bias here puts p(x|z) at the data's mean image from the
        first step, instead of at p = 0.5 everywhere (see :meth:`pyro_vae.models.VAE.
        start_output_bias`).
        """
        raise NotImplementedError

    def check_data(self, x: torch.Tensor, what: str) -> None:
        """Raise :class:`DataError` if ``x`` lies outside this likelihood's support."""
        if not torch.isfinite(x).all():
            raise DataError(f"{what} contains NaN or infinite values; clean the data first.")


def check_unit_interval(x: torch.Tensor, what: str, name: str) -> None:
    """Raise :class:`DataError` unless every value of ``x`` is finite and in [0, 1]."""
    if not torch.isfinite(x).all():
        raise DataError(f"{what} contains NaN or infinite values; clean the data first.")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{what} has pixel values in [{low:g}, {high:g}], but the {name} needs values "
            "in [0, 1]. Rescale the data (e.g. divide 8-bit images by 255) or choose "
            "likelihood = \"gaussian\"."
        )


class BernoulliLikelihood(Likelihood):
    """p(x|z) = Π_i Bernoulli(x_i; sigmoid(logit_i)) for binary pixels."""

    support = "binary pixels (0 or 1)"

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliPixels(logits, validate_args=False)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def output_start(self, pixel_mean: torch.Tensor) -> torch.Tensor:
        """logit(clamp(mean, ε, 1 − ε)): the maximum-likelihood logit of each pixel."""
        return torch.logit(pixel_mean.clamp(MEAN_CLAMP, 1 - MEAN_CLAMP))

    def check_data(self, x: torch.Tensor, what: str) -> None:
        super().check_data(x, what)
        check_unit_interval(x, what, "Bernoulli likelihood")
        if not ((x == 0) | (x == 1)).all():
            raise DataError(
                f"{what} has grey pixels, but the Bernoulli likelihood is a density only for "
                "binary pixels. Set binarize = \"dynamic\" or \"static\" in [data] (or "
                "--binarize), or choose likelihood = \"continuous_bernoulli\" or \"gaussian\"."
            )


class ContinuousBernoulliLikelihood(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019) for intensities in [0, 1].

    p(x|λ) = C(λ) λ^x (1-λ)^(1-x), with the normaliser C(λ) that the plain Bernoulli "BCE" loss
    omits; the mean is not λ.
    """

    support = "intensities in [0, 1]"

    def forward(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).mean

    def output_start(self, pixel_mean: torch.Tensor) -> torch.Tensor:
        """The logit η whose continuous-Bernoulli mean 1/(1 − e^(−η)) − 1/η is the pixel mean.

        The mean is increasing in η, so bisection solves it; η is kept within the Bernoulli
        start's range ±logit(1 − ε) (a mean of 0 or 1 needs η = ∓∞).
        """
        bound = math.log((1 - MEAN_CLAMP) / MEAN_CLAMP)
        target = pixel_mean.double()
        low = torch.full_like(target, -bound)
        high = torch.full_like(target, bound)
        for _ in range(60):
            middle = (low + high) / 2
            below = continuous_bernoulli_mean(middle) < target
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        return ((low + high) / 2).to(pixel_mean.dtype)

    def check_data(self, x: torch.Tensor, what: str) -> None:
        super().check_data(x, what)
        check_unit_interval(x, what, "continuous Bernoulli likelihood")


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] = 1/(1 − e^(−η)) − 1/η of the continuous Bernoulli with logit η (½ at η = 0)."""
    small = logits.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(logits), logits)
    mean = -torch.expm1(-safe).reciprocal() - safe.reciprocal()
    return torch.where(small, 0.5 + logits / 12, mean)


class GaussianLikelihood(Likelihood):
    """p(x|z) = Π_i N(x_i; m_i + s μ_i(z), (s σ)²) with σ fixed or learned (one σ shared by all
    pixels) and any real-valued data.

    A learned σ is ``min_scale + softplus(s)``: the floor keeps the density bounded on images
    with constant pixels (MNIST's borders), where σ → 0 would make log p(x|z) unbounded.

    Standardization: the decoder works in standardized units, ``x = m + s · x_std``, where
    :meth:`initialize_from` sets m (per pixel) and s (one number) from the training split, and
    both are buffers saved with the weights. The density is over the data itself, so log p(x)
    is in the data's own units: the Jacobian −P log s of the standardization is part of every
    log-density, and a fixed σ is in standardized units. Without :meth:`initialize_from`
    (m = 0, s = 1) nothing changes.
    """

    def __init__(self, scale: float | None = None, min_scale: float = 1e-2,
                 standardize: bool = True):
        super().__init__()
        self.fixed_scale = scale
        self.standardize = standardize
        self.min_scale = min_scale
        if scale is None:
            self.raw_scale = nn.Parameter(torch.tensor(math.log(math.expm1(0.1 - min_scale))))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("spread", torch.ones(()))

    def initialize_from(self, x: torch.Tensor) -> None:
        """Standardize by the per-pixel mean and the overall standard deviation of ``x``
        (one spread for every pixel keeps one shared σ a shared σ in the data's units);
        nothing with ``[likelihood] standardize = false``."""
        if not self.standardize:
            return
        shift = x.mean(0)
        spread = (x - shift).pow(2).mean().sqrt().clamp_min(1e-6)
        self.shift = shift.detach().clone()
        self.spread = spread.detach().clone()

    @torch.no_grad()
    def start_scale(self, x: torch.Tensor) -> None:
        """Start a learned σ at its maximum-likelihood value for a decoder at the mean image:
        the root-mean-square deviation of ``x`` (``[N, P]``, the training split) from its
        per-pixel mean, in the decoder's units (exactly 1 once :meth:`initialize_from` has
        standardized). A fixed σ is left alone.

        A start far below it makes the first epochs pay for σ, not for the fit: from σ = 0.1 in
        standardized units the 8×8 digits began at −2,982 nats and reached −297 after 30
        epochs, against −7 and +21.7 from this start.
        """
        if self.fixed_scale is not None:
            return
        x = x.to(device=self.spread.device, dtype=torch.float32)
        rms = float(((x - x.mean(0)) / self.spread).pow(2).mean().sqrt())
        start = max(rms, 2 * self.min_scale)  # constant data: stay clear of the floor
        self.raw_scale.copy_(torch.tensor(math.log(math.expm1(start - self.min_scale))))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("shift", "spread"):  # their shape is the data's; older runs have none
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.spread.device))
            else:
                state_dict[key] = torch.zeros(()) if name == "shift" else torch.ones(())
                setattr(self, name, torch.empty_like(state_dict[key], device=self.spread.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @property
    def scale(self) -> torch.Tensor | float:
        if self.fixed_scale is not None:
            return self.fixed_scale
        return self.min_scale + F.softplus(self.raw_scale)

    def forward(self, loc: torch.Tensor) -> dist.TorchDistribution:
        scale = self.scale
        if not isinstance(scale, torch.Tensor):
            scale = torch.tensor(scale, dtype=loc.dtype, device=loc.device)
        return dist.Normal(self.shift + self.spread * loc,
                           (self.spread * scale).expand(loc.shape),
                           validate_args=False).to_event(1)

    def mean(self, loc: torch.Tensor) -> torch.Tensor:
        return self.shift + self.spread * loc

    def output_start(self, pixel_mean: torch.Tensor) -> torch.Tensor:
        """The decoder's output whose mean is ``pixel_mean``: (mean − m) / s in standardized
        units (0 once :meth:`initialize_from` has run), the mean itself without them."""
        return (pixel_mean - self.shift) / self.spread


@LIKELIHOODS.register("bernoulli", help="binary pixels, decoder logits",
                     capabilities={"binary_data"})
def _bernoulli(config: ModelConfig, context: BuildContext) -> Likelihood:
    return BernoulliLikelihood()


@LIKELIHOODS.register("continuous_bernoulli", help="intensities in [0, 1]")
def _continuous_bernoulli(config: ModelConfig, context: BuildContext) -> Likelihood:
    return ContinuousBernoulliLikelihood()


def _scale_check(value: float | str) -> str | None:
    if isinstance(value, str):
        return None if value == "learned" else 'give a positive number or "learned".'
    return None if value > 0 else "a standard deviation must be positive."


@LIKELIHOODS.register(
    "gaussian", help="N(mean, s^2), s fixed or learned ([likelihood] scale)",
    options={"scale": Option("learned", "standard deviation s: a positive number (in "
                             "standardized units) or \"learned\"", type=(float, str),
                             check=_scale_check, legacy="gaussian_scale"),
             "standardize": Option(True, "decode in standardized units (the training split's "
                                   "per-pixel mean and overall standard deviation, saved with "
                                   "the weights); log p(x) stays in data units",
                                   legacy="standardize")})
def _gaussian(config: ModelConfig, context: BuildContext) -> Likelihood:
    scale = context.options.get("scale", "learned")
    return GaussianLikelihood(None if scale == "learned" else float(scale),
                              standardize=context.options.get("standardize", True))


def build_likelihood(config: ModelConfig | str, context: BuildContext | float | str | None = None,
                     options: dict | None = None) -> Likelihood:
    """The likelihood that ``config.likelihood`` names (built-in: ``bernoulli``,
    ``continuous_bernoulli``, ``gaussian``; plugins may add more), built for images of
    ``context.image_shape`` with the options of the recipe's ``[likelihood]`` table in
    ``context.options``. A factory is called ``factory(config, context)``; one written for
    version 0.2 takes ``config`` alone and is called so. ``build_likelihood("gaussian")``
    builds a likelihood with its defaults and no image shape; the 0.2 form
    ``build_likelihood(name, gaussian_scale, options)`` still works."""
    if isinstance(config, str):
        scale = context if isinstance(context, (int, float, str)) else None
        given = dict(options or {})
        if scale is not None and config == "gaussian":
            given.setdefault("scale", scale)
        config = ModelConfig(likelihood=config, options={"likelihood": given} if given else {})
        context = None if scale is not None else context
    context = dataclasses.replace(context or BuildContext(image_shape=()),
                                  options=config.options_of("likelihood"))
    factory = LIKELIHOODS.get(config.likelihood)
    if _takes_one_argument(factory):
        return factory(config)
    return factory(config, context)


def _takes_one_argument(factory) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    return len(positional) == 1 and positional[0].kind is not inspect.Parameter.VAR_POSITIONAL
