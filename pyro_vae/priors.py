"""Priors p(z) on the latent code: each is one class that builds a batched distribution.

Every prior is an ``nn.Module`` (its parameters train with the rest of the VAE) whose
``forward(batch_shape, device, dtype)`` returns a distribution with that batch shape and one
event dimension of size D. The model samples ``z`` from it inside the ``data`` plate, so every
objective (ELBO, mean-field, IWAE, DReG, ...) works with every prior:

==============  =====================================================================
``normal``      p(z) = N(0, I)
``mixture``     p(z) = Σ_c π_c N(z; m_c, diag s_c²), learned π, m, s
``vamp``        p(z) = (1/C) Σ_c q(z | u_c), learned pseudo-inputs u_c through the encoder
                (Tomczak & Welling 2018, "VAE with a VampPrior")
``flow``        p(z) = N(f⁻¹(z); 0, I) |det ∂f⁻¹/∂z|, f a stack of affine coupling layers
                (Dinh et al. 2017, RealNVP) from ``pyro.distributions.transforms``
==============  =====================================================================

A prior whose registration declares the capability ``label_conditional`` also has a form
p(z|y) for the label-conditional VAE (kind ``cvae``): its factory receives the number of classes
in ``BuildContext.num_classes`` and the labelled encoder q(z|x, y), and the module it returns
sets ``label_conditional = True`` and takes ``labels`` in ``forward``: the mixture's form is
:class:`LabelledMixturePrior`, the VampPrior's :class:`LabelledVampPrior`.

Only the standard normal has a closed-form KL(q(z|x) ‖ p(z)) against the diagonal-Gaussian
guide; with the others Pyro's ``TraceMeanField_ELBO`` finds no registered KL and uses the Monte
Carlo estimate log q(z) − log p(z) instead, with no error. The two-stochastic-layer model of
Burda et al. (a hierarchical prior p(z1|z2) p(z2)) lives in ``hierarchical.py``.
"""

from __future__ import annotations

import dataclasses

import math

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.distributions import StandardNormal
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.options import Option, positive
from pyro_vae.registry import PRIORS, BuildContext


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
        shape = (*batch_shape, self.latent_dim)
        return StandardNormal(shape, device, dtype, validate_args=False).to_event(1)

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return gaussian_kl_to_standard_normal(loc, scale)


def gaussian_kl_to_standard_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1) − log σ."""
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0) - torch.log(scale)


class DiagonalGaussianMixture(dist.TorchDistribution):
    """Σ_c softmax(logits)_c N(z; loc_c, diag scale_c²) over z ∈ R^D, batched to ``batch_shape``.

    The density of every component at every z comes from two matrix products,

        Σ_d (z_d − m_cd)² / s_cd² = (z²)·(1/s²)_cᵀ − 2 z·(m/s²)_cᵀ + Σ_d m_cd² / s_cd²,

    so scoring K particles of B points against C components costs O(K·B·C·D) flops but only a
    [K, B, C] tensor, where ``MixtureSameFamily`` would build [K, B, C, D] (50× more memory for
    the VampPrior's 500 components in 50 dimensions). The products are taken in float64, since
    the terms cancel when scales are small.
    """

    arg_constraints: dict = {}
    support = dist.constraints.independent(dist.constraints.real, 1)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                 batch_shape: torch.Size = torch.Size()):
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance=None) -> "DiagonalGaussianMixture":
        return DiagonalGaussianMixture(self.logits, self.loc, self.scale, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # The three terms nearly cancel when scales are small (1/s² large), so they are formed
        # in float64: the error is then ~1e-16 of them, far below a nat even at s = 1e-4.
        z, loc = value.double(), self.loc.double()
        precision = self.scale.double().pow(-2)                          # [C, D]
        squared = (z.pow(2) @ precision.T - 2 * z @ (loc * precision).T
                   + (loc.pow(2) * precision).sum(-1)).to(value.dtype)  # [..., C]
        log_norm = -self.scale.log().sum(-1) - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)
        component = log_norm - 0.5 * squared
        log_weights = torch.log_softmax(self.logits, -1)
        result = torch.logsumexp(component + log_weights, -1)
        return result.expand(torch.broadcast_shapes(result.shape, self.batch_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            choose = torch.distributions.Categorical(logits=self.logits)
            # Per-datapoint weights (logits [*batch_shape, C]) already carry the batch shape.
            which = choose.sample(shape[: len(shape) - len(choose.batch_shape)])
            noise = torch.randn(*shape, self.loc.shape[-1], device=self.loc.device,
                                dtype=self.loc.dtype)
            return self.loc[which] + self.scale[which] * noise


def _gaussian_mixture(logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                      batch_shape: torch.Size) -> dist.TorchDistribution:
    return DiagonalGaussianMixture(logits, loc, scale, batch_shape)


class MixturePrior(Prior):
    """p(z) = Σ_c π_c N(z; m_c, diag s_c²) with learned weights, means and scales.

    Means start as draws from N(0, I/D) for a D-dimensional z, scales at 1, weights uniform,
    so the mixture starts close to N(0, I) in any dimension (two means about √2 apart, every
    component sharing the codes). Means drawn from N(0, I) would lie about √(2D) apart: in 50
    dimensions the initial mixture scores standard-normal codes 11 nats worse than N(0, I), each
    code has about one responsible component, and on MNIST one component took 96 % of the weight
    within 10 epochs (measured). Scales are ``softplus`` of a free parameter.
    """

    def __init__(self, latent_dim: int, components: int = 10):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, latent_dim) / latent_dim ** 0.5)
        # softplus(0.5413) = 1.
        self.raw_scale = nn.Parameter(torch.full((components, latent_dim), 0.5413))

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype
                ) -> dist.TorchDistribution:
        scale = nn.functional.softplus(self.raw_scale)
        return _gaussian_mixture(self.logits, self.loc, scale, batch_shape)


class VampPrior(Prior):
    """The variational mixture of posteriors p(z) = (1/C) Σ_c q(z | u_c) (Tomczak & Welling).

    ``u_c = sigmoid(v_c)`` are C learned pseudo-inputs in the data space [0, 1]^P, passed through
    the VAE's own encoder, so the prior follows the aggregate posterior as the encoder learns.
    The encoder is shared, not copied: it is held outside this module's parameters (the VAE
    registers it) so a state dict stores it once.
    """

    def __init__(self, latent_dim: int, encoder: nn.Module, num_pixels: int,
                 components: int = 500):
        super().__init__(latent_dim)
        # Pseudo-inputs start near grey (sigmoid(v) ≈ 0.5) with a little noise to break symmetry.
        self.pseudo_inputs = nn.Parameter(0.1 * torch.randn(components, num_pixels))
        self._encoder = (encoder,)  # a tuple hides it from nn.Module's registration

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    @torch.no_grad()
    def initialize_from(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Start the pseudo-inputs at training images (one per component, pixels squeezed into
        [0.05, 0.95] so the logit is finite): the prior starts as a mixture of posteriors of real
        data instead of C copies of one grey image, which lets training escape the collapsed
        state q(z|x) = p(z) that a uniform start invites."""
        order = torch.randperm(len(images), device=images.device)
        chosen = images[order[: len(self.pseudo_inputs)]]
        if len(chosen) < len(self.pseudo_inputs):
            raise ValueError(f"{len(self.pseudo_inputs)} pseudo-inputs need at least as many "
                             f"training images; there are {len(images)}")
        self.pseudo_inputs.copy_(torch.logit(chosen.reshape(len(chosen), -1).clamp(0.05, 0.95)))

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype
                ) -> dist.TorchDistribution:
        loc, scale = self.encoder(torch.sigmoid(self.pseudo_inputs))
        uniform = torch.zeros(len(loc), device=loc.device, dtype=loc.dtype)
        return _gaussian_mixture(uniform, loc, scale, batch_shape)


class LabelConditionalMixture(Prior):
    """Base of the label-conditional priors: one mixture of K diagonal Gaussians per class,

        p(z|y) = Σ_k π_{y,k} N(z; m_{y,k}, diag s_{y,k}²),

    given by :meth:`components`; ``labels=None`` gives the label-free marginal
    p(z) = (1/C) Σ_y p(z|y).

    Why a prior per label. With p(z) = N(0, I) a CVAE draws x ~ p(x|z, y) at any z, but its
    encoder puts class-specific structure into z (a 7's z is not a 9's z, even where a linear
    probe cannot tell them apart), and the decoder, trained only on z's of class y with label
    y, renders a z from another class's region as that class: one MNIST sample in four showed
    another digit than the one asked for. A class's own aggregate posterior
    q(z|y) = E_{x|y} q(z|x, y) does not have that problem: decoding z ~ q(z|y) with label y gave
    the requested digit as often as reconstructions do (97 %, measured). The ELBO's KL term
    fits p(z|y) to exactly that (its gradient in the prior is the maximum-likelihood fit to
    draws of q(z|y)), so the fix raises log p(x|y) instead of costing it, unlike the MMD penalty
    of ``label_independence``, which forces every q(z|y) onto N(0, I).
    """

    #: ``forward`` takes the labels y of the batch and gives p(z|y).
    label_conditional = True

    def __init__(self, latent_dim: int, num_classes: int, components: int, what: str):
        super().__init__(latent_dim)
        if components < num_classes or components % num_classes:
            raise ConfigError(f"[prior] components = {components}: the label-conditional "
                              f"{what} splits its components evenly over the {num_classes} "
                              f"classes; give a multiple of {num_classes}.")
        self.num_classes = num_classes
        self.per_class = components // num_classes
        self.register_buffer("component_labels",
                             torch.arange(num_classes).repeat_interleave(self.per_class))

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits ``[C, K]``, loc ``[C, K, D]``, scale ``[C, K, D]``) of every class's mixture."""
        raise NotImplementedError

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype,
                labels: torch.Tensor | None = None) -> dist.TorchDistribution:
        logits, loc, scale = self.components()
        loc, scale = loc.reshape(-1, self.latent_dim), scale.reshape(-1, self.latent_dim)
        if labels is None:  # every class weighs 1/C
            return _gaussian_mixture(torch.log_softmax(logits, -1).reshape(-1), loc, scale,
                                     batch_shape)
        # Every datapoint's weights: its class's π_y on its class's K components, 0 elsewhere.
        mine = labels.reshape(*labels.shape, 1) == self.component_labels.to(labels.device)
        weights = torch.log_softmax(logits, -1).reshape(-1).expand(mine.shape)
        return _gaussian_mixture(weights.masked_fill(~mine, float("-inf")), loc, scale,
                                 torch.Size(labels.shape))

    @torch.no_grad()
    def shared_draws(self, columns: int) -> torch.Tensor:
        """``[C, columns, D]`` draws of p(z|y) for every class y (a label × z grid) that share
        their randomness along a column j: one uniform u_j picks class y's component by the
        inverse of its weights' cumulative sum (the same quantile in every class), and one
        standard noise ε_j makes z = m_{y,k} + s_{y,k} ε_j."""
        logits, loc, scale = self.components()
        uniform = torch.rand(columns, device=loc.device, dtype=loc.dtype)
        cumulative = torch.softmax(logits, -1).cumsum(-1)                   # [C, K]
        slots = torch.searchsorted(cumulative.contiguous(),
                                   uniform.expand(self.num_classes, columns).contiguous())
        slots = slots.clamp(max=self.per_class - 1)                          # [C, columns]
        noise = torch.randn(columns, self.latent_dim, device=loc.device, dtype=loc.dtype)
        rows = torch.arange(self.num_classes, device=loc.device)[:, None]
        return loc[rows, slots] + scale[rows, slots] * noise


class LabelledMixturePrior(LabelConditionalMixture):
    """p(z|y) = Σ_k π_{y,k} N(z; m_{y,k}, diag s_{y,k}²) with learned weights, means and scales,
    K = ``components`` / C per class, started as :class:`MixturePrior` starts (means from
    N(0, I/D), scales 1, weights uniform)."""

    def __init__(self, latent_dim: int, num_classes: int, components: int = 500):
        super().__init__(latent_dim, num_classes, components, "mixture")
        shape = (num_classes, self.per_class)
        self.logits = nn.Parameter(torch.zeros(shape))
        self.loc = nn.Parameter(torch.randn(*shape, latent_dim) / latent_dim ** 0.5)
        self.raw_scale = nn.Parameter(torch.full((*shape, latent_dim), 0.5413))  # softplus → 1

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.logits, self.loc, nn.functional.softplus(self.raw_scale)


class LabelledVampPrior(LabelConditionalMixture):
    """The VampPrior of a label-conditional VAE: p(z|y) = (1/K) Σ_k q(z | u_{y,k}, y), with
    K = ``components`` / C learned pseudo-inputs u_{y,k} = sigmoid(v_{y,k}) per class, passed
    with their class through the model's own labelled encoder q(z|x, y). The encoder is shared,
    not copied (held outside this module's parameters, as in :class:`VampPrior`).

    On binarized data the encoder meets grey pseudo-inputs only here and gives them wider
    posteriors than it gives data (mean scale 1.36 against 0.92 on MNIST after 20 epochs), so
    its draws stray further from q(z|y) than the free mixture's (:class:`LabelledMixturePrior`).
    """

    def __init__(self, latent_dim: int, encoder: nn.Module, num_pixels: int,
                 num_classes: int, components: int = 500):
        super().__init__(latent_dim, num_classes, components, "VampPrior")
        self.pseudo_inputs = nn.Parameter(0.1 * torch.randn(components, num_pixels))
        self._encoder = (encoder,)

    @property
    def encoder(self) -> nn.Module:
        return self._encoder[0]

    @torch.no_grad()
    def initialize_from(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                        what: str = "training images",
                        remedy: str = "with labels 0..C−1 for the C classes the data have, "
                        "set [kind] num_classes = C") -> None:
        """Start each class's pseudo-inputs at distinct ``images`` of that class (pixels
        squeezed into [0.05, 0.95] so the logit is finite). Raises :class:`DataError` when a
        class has fewer images than pseudo-inputs; ``what`` names the images and ``remedy``
        says how to give a class without any (M2: more labels)."""
        if labels is None:
            raise DataError(f"the label-conditional VampPrior starts each class's pseudo-inputs "
                            f"at {what} of that class, and these have no labels; train on "
                            "labelled data or use prior = \"mixture\".")
        images = images.reshape(len(images), -1)
        counts = torch.stack([(labels == c).sum() for c in range(self.num_classes)])
        fewest = int(counts.argmin())
        have = int(counts[fewest])
        if have < self.per_class:
            fix = (f"Use [prior] components = {self.num_classes * have} or less (a multiple of "
                   f"{self.num_classes})" if have else f"Give every class {what} ({remedy})")
            raise DataError(
                f"class {fewest} has {have} {what}, but the label-conditional VampPrior starts "
                f"each of its {self.per_class} pseudo-inputs per class ([prior] components = "
                f"{len(self.pseudo_inputs)} over {self.num_classes} classes) at a distinct image "
                f"of that class. {fix}, or use prior = \"mixture\", which needs no images.")
        for c in range(self.num_classes):
            members = torch.nonzero(labels == c).squeeze(1)
            chosen = members[torch.randperm(len(members), device=members.device)[: self.per_class]]
            rows = slice(c * self.per_class, (c + 1) * self.per_class)
            self.pseudo_inputs[rows] = torch.logit(images[chosen].clamp(0.05, 0.95))

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loc, scale = self.encoder(torch.sigmoid(self.pseudo_inputs), self.component_labels)
        shape = (self.num_classes, self.per_class, self.latent_dim)
        uniform = torch.zeros(shape[:2], device=loc.device, dtype=loc.dtype)
        return uniform, loc.reshape(shape), scale.reshape(shape)

class FlowPrior(Prior):
    """p(z) = N(f⁻¹(z); 0, I) |det ∂f⁻¹/∂z| with f = a stack of affine coupling layers.

    Each layer (``pyro.distributions.transforms.affine_coupling``) keeps the first ⌊D/2⌋
    coordinates and shifts and scales the rest by networks of them; the coordinates are reversed
    between layers so every coordinate is transformed. Both directions are one network pass, so
    sampling and the density are equally cheap. Needs D ≥ 2.
    """

    def __init__(self, latent_dim: int, num_flows: int = 4, hidden_dims: list[int] | None = None):
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ConfigError("the flow prior's coupling layers need latent_dim ≥ 2; use "
                              "prior = \"mixture\" or \"normal\" for a one-dimensional code.")
        hidden = list(hidden_dims or [64, 64])
        self.couplings = nn.ModuleList(
            T.affine_coupling(latent_dim, hidden_dims=hidden) for _ in range(num_flows))
        for coupling in self.couplings:  # start at the identity: p(z) = N(0, I)
            last = coupling.nn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def transforms(self) -> list[dist.transforms.Transform]:
        """f as a list of transforms from the base N(0, I) to z."""
        layers: list[dist.transforms.Transform] = []
        for i, coupling in enumerate(self.couplings):
            if i:
                layers.append(T.Permute(self.reverse))
            layers.append(coupling)
        return layers

    def forward(self, batch_shape: torch.Size, device: torch.device, dtype: torch.dtype
                ) -> dist.TorchDistribution:
        base = dist.Normal(torch.zeros(*batch_shape, self.latent_dim, device=device,
                                       dtype=dtype), 1.0, validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, self.transforms(), validate_args=False)


def labelled_components(num_classes: int, total: int = 500) -> int:
    """The default size of a label-conditional prior: ``total`` components rounded down to a
    multiple of the classes (at least one per class), so that any ``num_classes`` works
    without ``[prior] components`` (500 = 50 per class for 10 classes; 498 for 3)."""
    return max(1, total // num_classes) * num_classes


@PRIORS.register("normal", help="N(0, I)", capabilities={"closed_form_kl"})
def _normal(config: ModelConfig, context: BuildContext) -> Prior:
    return StandardNormalPrior(config.latent_dim)


def _components(default: int) -> Option:
    return Option(None, f"mixture components (default {default}; with a label-conditional "
                  "kind 500 in all, rounded down to a multiple of the classes, the components "
                  "split evenly over them)", type=int, check=positive,
                  legacy="prior_components")


@PRIORS.register("mixture", help="learned mixture of Gaussians ([prior] components, default "
                 "10); for a cvae one mixture per class, p(z|y) (default 500 in all, rounded "
                 "down to a multiple of the classes)",
                 capabilities={"components", "label_conditional"},
                 options={"components": _components(10)})
def _mixture(config: ModelConfig, context: BuildContext) -> Prior:
    components = context.options.get("components")
    if context.num_classes is not None:
        return LabelledMixturePrior(config.latent_dim, context.num_classes,
                                    components or labelled_components(context.num_classes))
    return MixturePrior(config.latent_dim, components or 10)


@PRIORS.register("vamp", help="VampPrior: pseudo-inputs through the encoder ([prior] "
                 "components, default 500); for a cvae one mixture per class, p(z|y)",
                 capabilities={"components", "pseudo_inputs", "label_conditional"},
                 options={"components": _components(500)})
def _vamp(config: ModelConfig, context: BuildContext) -> Prior:
    if context.encoder is None:
        raise ConfigError("prior = \"vamp\" passes pseudo-inputs through the model's encoder, "
                          "and this model has none; choose another prior.")
    components = context.options.get("components")
    if context.num_classes is not None:
        return LabelledVampPrior(config.latent_dim, context.encoder, context.num_pixels,
                                 context.num_classes,
                                 components or labelled_components(context.num_classes))
    return VampPrior(config.latent_dim, context.encoder, context.num_pixels, components or 500)


@PRIORS.register("flow", help="affine-coupling flow ([prior] layers, default 4)",
                 capabilities={"flow_layers", "min_latent_dim_2"},
                 options={"layers": Option(4, "affine coupling layers", check=positive,
                                           legacy="flow_layers")})
def _flow(config: ModelConfig, context: BuildContext) -> Prior:
    return FlowPrior(config.latent_dim, context.options.get("layers", 4))


def build_prior(config: ModelConfig, context: BuildContext) -> Prior:
    """The prior that ``config.prior`` names (any registered one, plugins included); a
    plugin's prior is checked on entry (:func:`check_prior`)."""
    context = dataclasses.replace(context, options=config.options_of("prior"))
    prior = PRIORS.get(config.prior)(config, context)
    if not PRIORS.entry(config.prior).module.startswith("pyro_vae."):
        check_prior(prior, config.latent_dim, f"prior = \"{config.prior}\"")
    return prior


def check_prior(prior: Prior, latent_dim: int, who: str) -> None:
    """Refuse, in one paragraph, a prior that is not what the model samples ``z`` from: its
    ``forward((B,), device, dtype)`` must give a distribution of batch shape (B,) and one
    event dimension of size D = ``latent_dim``, whose ``log_prob`` of a draw has shape (B,)
    (one value per datapoint) and is finite. A log-density summed over the batch, or left per
    dimension, would be accepted by the loops and give a wrong log p(x) without an error."""
    batch = torch.Size([3])
    fix = ("A prior's forward(batch_shape, device, dtype) returns p(z) with that batch shape "
           f"and one event dimension of size latent_dim = {latent_dim}, e.g. "
           "dist.Normal(loc, scale).to_event(1) with loc of shape (*batch_shape, latent_dim); "
           "see pyro_vae.priors.")
    try:
        with torch.no_grad():
            distribution = prior(batch, torch.device("cpu"), torch.float32)
            if not isinstance(distribution, torch.distributions.Distribution):
                raise ConfigError(f"{who}: its forward returned {type(distribution).__name__}, "
                                  f"not a distribution. {fix}")
            event, shape = tuple(distribution.event_shape), tuple(distribution.batch_shape)
            if not event and shape == (*batch, latent_dim):
                raise ConfigError(f"{who}: its distribution has no event dimension (batch shape "
                                  f"{shape}): each latent dimension would be scored as a "
                                  f"datapoint. Wrap it with .to_event(1). {fix}")
            if event != (latent_dim,) or shape != tuple(batch):
                raise ConfigError(f"{who}: for a batch of {len(batch)} it gives batch shape "
                                  f"{shape} and event shape {event}, not {tuple(batch)} and "
                                  f"({latent_dim},). {fix}")
            z = distribution.sample()
            log_prob = distribution.log_prob(z)
    except ConfigError:
        raise
    except Exception as error:  # the plugin's own code failed: say which component
        raise ConfigError(f"{who}: drawing from it failed ({type(error).__name__}: {error}). "
                          f"{fix}") from None
    if tuple(z.shape) != (*batch, latent_dim):
        raise ConfigError(f"{who}: its draws have shape {tuple(z.shape)}, not "
                          f"{(*batch, latent_dim)}. {fix}")
    if tuple(log_prob.shape) != tuple(batch):
        how = ("summed over the batch" if log_prob.dim() == 0 else
               "per latent dimension (sum it over the last dimension)"
               if tuple(log_prob.shape) == (*batch, latent_dim) else
               f"of shape {tuple(log_prob.shape)}")
        raise ConfigError(f"{who}: its log_prob of {len(batch)} draws is {how}, not one value "
                          f"per datapoint (shape {tuple(batch)}); log p(x) would be wrong. {fix}")
    if not torch.isfinite(log_prob).all():
        raise ConfigError(f"{who}: its log_prob of its own draws is not finite. {fix}")
