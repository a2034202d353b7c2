"""Two distributions the VAEs score on every step, with log-densities that do less work.

Both are the distributions Pyro and torch already have, with ``log_prob`` rearranged so that it
runs fewer tensor operations, forward and backward, while giving the same numbers bit for bit
(tested against the originals in ``tests/test_fast_path.py``):

* :class:`StandardNormal` is ``Normal(0, 1)``: torch's ``Normal.log_prob``,
  −(z − μ)²/(2σ²) − log σ − log √(2π), spends a subtraction, a square and a logarithm of the
  broadcast σ = 1 and a division by 2σ² on every element; with μ = 0 and σ = 1 these are exact
  no-ops (z − 0 = z, 2·1² = 2, log 1 = 0), so −z²/2 − log √(2π) is the same float.
* :class:`BernoulliPixels` is ``Bernoulli(logits=ℓ).to_event(1)``, whose log-density is
  Σ_i −BCE(ℓ_i, x_i): torch negates all B × P elementwise terms and then sums them; negating
  the B sums instead is the same float (round-to-nearest is symmetric), one pass over B × P
  numbers fewer each way — at a batch of 1024 MNIST images about a tenth of a CPU step.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions.utils import broadcast_all

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant torch's Normal subtracts


class StandardNormal(dist.Normal):
    """N(0, 1) elementwise, broadcast to ``batch_shape`` without allocating it."""

    def __init__(self, batch_shape: torch.Size | tuple[int, ...],
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 validate_args: bool | None = None):
        zero = torch.zeros((), device=device, dtype=dtype)
        super().__init__(zero.expand(batch_shape), (zero + 1).expand(batch_shape),
                         validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> StandardNormal:
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if value.shape != self.batch_shape:  # the result has the broadcast shape, as torch's
            value = value.expand(torch.broadcast_shapes(value.shape, self.batch_shape))
        return -(value ** 2) / 2 - _LOG_SQRT_2PI


class BernoulliPixels(dist.Independent):
    """Π_i Bernoulli(x_i; sigmoid(ℓ_i)) over the last dimension, from logits ℓ."""

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None):
        super().__init__(dist.Bernoulli(logits=logits, validate_args=validate_args), 1,
                         validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance=None) -> BernoulliPixels:
        new = self._get_checked_instance(BernoulliPixels, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)
