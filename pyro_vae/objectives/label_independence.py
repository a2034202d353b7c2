"""Label independence: an MMD penalty that makes every class's aggregate posterior the prior.

Why. A label-conditional VAE p(z) p(x|z, y), q(z|x, y) draws a sample of class y as
x ~ p(x|z, y) with z ~ p(z). Nothing in the ELBO stops the encoder from putting the class into
z as well: each class's aggregate posterior

    q(z|y=c) = E_{x ~ p_data(x|c)} q(z|x, c)

may sit in its own region of z-space, the decoder then learns to read the class from z, and a
prior draw z ~ p(z) that falls in class c′'s region is decoded as a c′ whatever label it is
given. The ELBO's only pull against this is E_y KL(q(z|y) ‖ p(z)) ≤ I(z; y) ≤ log C nats per
datapoint, which it gladly pays for a better reconstruction (on MNIST with a 50-d z, y was
readable from z at 64 % and only 47–74 % of samples showed the requested digit).

What. This objective adds to any base objective (normally the ELBO) the penalty

    R = λ · N · Σ_c (B_c / B) · MMD²_k(q(z|y=c), p(z)),

estimated on each minibatch: the B_c reparameterized guide samples z_n ~ q(z|x_n, y_n) of the
batch's points with label c against B fresh draws from p(z), with the unbiased U-statistic

    MMD²_k(X, Y) = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j)

(Gretton et al. 2012) and the inverse multiquadric kernel summed over scales s,
k(a, b) = Σ_s C_s / (C_s + ‖a − b‖²), C_s = 2 d s² for a d-dimensional z (Tolstikhin et al.
2018, WAE; Zhao et al. 2017, InfoVAE, match q(z) to p(z) the same way). MMD² is zero exactly
when q(z|y=c) = p(z) for every class (the kernel is characteristic), in which case a prior draw
with any label is a z the decoder has been trained on with that label, and y and z are
independent under q (the VFAE of Louizos et al. 2016 removes a nuisance variable from z with
an MMD between groups in the same way). N is the size of the training set, so λ is per
datapoint, on the same footing as the ELBO's own terms (which the ``data`` plate scales by
N/B); B_c/B weights the classes by their share of the batch.

What it is not. R is not part of the model and not part of the bound: training minimizes
−ELBO + R, every reported bound and log-likelihood (``test_elbo``, ``test_log_likelihood``,
``validation_elbo``) is still the model's own, and only the training objective per datapoint
that the loop records (``train_elbo``) includes R/N. The gradient of R reaches the guide's
parameters only (through z's reparameterization); the prior draws carry no gradient, so the
decoder and the prior are trained by the base objective alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer import ELBO
from pyro.poutine.messenger import Messenger

#: Scales s of the inverse multiquadric kernel (those of the WAE's code).
KERNEL_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: Names accepted by ``[kind] label_independence``.
METHODS = ("none", "mmd")


def imq_kernel(a: torch.Tensor, b: torch.Tensor,
               scales: Sequence[float] = KERNEL_SCALES) -> torch.Tensor:
    """k(a_i, b_j) = Σ_s C_s / (C_s + ‖a_i − b_j‖²), C_s = 2 d s², as an ``[n, m]`` matrix."""
    # ‖a − b‖² expanded: no square root, whose gradient at a zero distance is not finite.
    squared = (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2 * a @ b.T).clamp(min=0)
    dim = a.shape[-1]
    return sum(2 * dim * s * s / (2 * dim * s * s + squared) for s in scales)


def class_mmd(z: torch.Tensor, y: torch.Tensor, reference: torch.Tensor, num_classes: int,
              scales: Sequence[float] = KERNEL_SCALES) -> torch.Tensor:
    """Σ_c (B_c / B) MMD²(z[y = c], reference), each MMD² the unbiased U-statistic.

    ``z`` ``[..., B, d]`` holds samples of q(z|x_n, y_n) (leading particle dimensions are
    pooled), ``y`` their labels (broadcast to ``z.shape[:-1]``), ``reference`` ``[M, d]``
    (M ≥ 2) samples of p(z). A class with fewer than two points in the batch has no unbiased
    estimate and contributes nothing (its weight B_c/B is at most 1/B).
    """
    y = y.expand(z.shape[:-1]).reshape(-1)
    z = z.reshape(-1, z.shape[-1])
    masks = (y[None, :] == torch.arange(num_classes, device=y.device)[:, None]).to(z.dtype)
    counts = masks.sum(1)                                        # B_c
    k_zz = imq_kernel(z, z, scales)
    pairs = ((masks @ k_zz) * masks).sum(1) - masks @ torch.diagonal(k_zz)
    within = pairs / (counts * (counts - 1)).clamp(min=1)       # mean_{i≠j} k(z_i, z_j)
    across = (masks @ imq_kernel(z, reference, scales)).sum(1) / (counts.clamp(min=1)
                                                                  * len(reference))
    k_rr = imq_kernel(reference, reference, scales)
    m = len(reference)
    reference_term = (k_rr.sum() - torch.diagonal(k_rr).sum()) / (m * (m - 1))
    per_class = torch.where(counts >= 2, within + reference_term - 2 * across,
                            torch.zeros_like(counts))
    return (counts / len(z) * per_class).sum()


class _Capture(Messenger):
    """Keeps the values of one sample site as the guide draws them."""

    def __init__(self, site: str):
        super().__init__()
        self.site = site
        #: (value, size N of its ``data`` plate) of every draw.
        self.values: list[tuple[torch.Tensor, int]] = []

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] == self.site:
            sizes = [f.full_size or f.size for f in msg["cond_indep_stack"] if f.name == "data"]
            value = msg["value"]
            self.values.append((value, sizes[0] if sizes else value.shape[-2]))


class _CapturingGuide:
    """``guide`` run under a :class:`_Capture`: one object per guide, so that objectives that
    cache per (model, guide) pair see the same pair on every step."""

    def __init__(self, guide: Callable, site: str):
        self.guide = guide
        self.capture = _Capture(site)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.capture:
            return self.guide(*args, **kwargs)


class LabelIndependence(ELBO):
    """``base`` objective plus the MMD penalty R of the module docstring.

    Args:
        base: the objective whose ``differentiable_loss`` the penalty is added to.
        prior: ``prior(batch_shape, device, dtype)`` → the distribution p(z) (a prior of
            :mod:`pyro_vae.priors`); draws of it are the reference sample.
        num_classes: the labels 0..C−1.
        weight: λ, per datapoint.
        site: the name of the guide's latent sample site.

    Model and guide are called as ``(x, y, **kwargs)``. The base objective runs the guide as
    usual; a messenger keeps the reparameterized samples it draws at ``site`` (every particle),
    and the penalty is computed from those very samples, so z costs no second encoder pass.
    """

    def __init__(self, base: ELBO, prior: Callable[..., Any], num_classes: int,
                 weight: float, site: str = "z"):
        super().__init__(num_particles=base.num_particles,
                         max_plate_nesting=base.max_plate_nesting)
        self.base = base
        self.prior = prior
        self.num_classes = num_classes
        self.weight = weight
        self.site = site
        self._guides: dict[Callable, _CapturingGuide] = {}

    def __getattr__(self, name: str) -> Any:
        # What the loop reads of an objective (``at_step``, ``running_baseline``) is the base's.
        base = self.__dict__.get("base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)

    def penalty(self, z: torch.Tensor, y: torch.Tensor, num_data: int) -> torch.Tensor:
        """R = λ · N · Σ_c (B_c/B) MMD²(z[y = c], p(z)) for guide samples ``z`` of labels ``y``."""
        batch = z.reshape(-1, z.shape[-1]).shape[0]
        with torch.no_grad():
            reference = self.prior(torch.Size([max(batch, 2)]), z.device, z.dtype).sample()
        return self.weight * num_data * class_mmd(z, y, reference, self.num_classes)

    def differentiable_loss(self, model: Callable, guide: Callable, x: torch.Tensor,
                            y: torch.Tensor | None = None, *args: Any,
                            **kwargs: Any) -> torch.Tensor:
        if self.weight == 0 or y is None:
            return self.base.differentiable_loss(model, guide, x, y, *args, **kwargs)
        capturing = self._guides.get(guide)
        if capturing is None:
            capturing = self._guides[guide] = _CapturingGuide(guide, self.site)
        capturing.capture.values = []
        loss = self.base.differentiable_loss(model, capturing, x, y, *args, **kwargs)
        samples = capturing.capture.values
        if not samples:
            raise ValueError(f"the guide has no sample site {self.site!r} to keep independent "
                             "of the label")
        penalty = sum(self.penalty(z, y, size) for z, size in samples) / len(samples)
        return loss + penalty

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        raise NotImplementedError("LabelIndependence delegates tracing to its base objective")

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any,
                       **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


def with_label_independence(base: ELBO, method: str, weight: float, prior: Callable[..., Any],
                            num_classes: int) -> ELBO:
    """``base`` as it is for ``method = "none"``, else wrapped in :class:`LabelIndependence`."""
    if method == "none":
        return base
    if method != "mmd":
        raise ValueError(f"unknown label independence method {method!r}; one of {METHODS}")
    return LabelIndependence(base, prior, num_classes, weight)
