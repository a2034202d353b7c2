"""The label-conditional VAE (CVAE) as a Pyro model/guide pair.

Generative model, for each datapoint n in the ``data`` plate, with its label y_n observed::

    z_n ~ p(z) = N(0, I)
    x_n ~ p(x | decoder(z_n, y_n))

Guide::

    z_n ~ q(z | x_n, y_n) = N(μ(x_n, y_n), diag σ(x_n, y_n)²)

The label enters both networks as a one-hot vector: concatenated to the encoder's input, and to
the input of every decoder layer (Sohn, Lee & Yan, "Learning Structured Output Representation
using Deep Conditional Generative Models", NeurIPS 2015; Kingma et al. 2014, M2 with y
observed). The ELBO of this pair bounds log p(x | y):

    log p(x|y) ≥ E_q[log p(x|z, y)] − KL(q(z|x, y) ‖ p(z)),

and the importance-sampled estimate of :func:`pyro_vae.evaluate.estimate_log_likelihood` run on
(x, y) is log p̂_K(x|y), the conditional log-likelihood, per datapoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import ELBO
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.options import Option, positive
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import ACTIVATIONS, MLPEncoder, mlp
from pyro_vae.params import register_module
from pyro_vae.priors import Prior, build_prior
from pyro_vae.registry import MODEL_KINDS, PRIORS, BuildContext, KindHooks

if TYPE_CHECKING:
    from pyro_vae.config import Config
    from pyro_vae.data import ImageData


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
            ) -> torch.Tensor:
    """Integer labels ``[...]`` as one-hot vectors ``[..., C]``."""
    return F.one_hot(y.long(), num_classes).to(dtype)


class LabelledEncoder(nn.Module):
    """(x, y) ↦ (μ, σ): an encoder applied to ``[x, one_hot(y)]``."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # y may carry leading particle or enumeration dimensions that x lacks.
        batch = torch.broadcast_shapes(x.shape[:-1], y.shape)
        labels = one_hot(y, self.num_classes, x.dtype).expand(*batch, self.num_classes)
        return self.encoder(torch.cat([x.expand(*batch, x.shape[-1]), labels], -1))


class LabelledDecoder(nn.Module):
    """(z, y) ↦ likelihood parameters: a decoder applied to ``[z, one_hot(y)]``.

    ``z`` may carry leading particle dimensions that ``y`` lacks; the one-hot labels are
    broadcast to them.
    """

    def __init__(self, decoder: nn.Module, num_classes: int):
        super().__init__()
        self.decoder = decoder
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # z may carry leading particle dimensions that y lacks, y enumeration ones z lacks.
        batch = torch.broadcast_shapes(z.shape[:-1], y.shape)
        labels = one_hot(y, self.num_classes, z.dtype).expand(*batch, self.num_classes)
        return self.decoder(torch.cat([z.expand(*batch, z.shape[-1]), labels], -1))


class LabelledMLPDecoder(nn.Module):
    """(z, y) ↦ likelihood parameters by an MLP that reads ``one_hot(y)`` at every layer::

        h₀ = z,   h_{l+1} = act(W_l [h_l, one_hot(y)] + b_l),   out = W_L [h_L, one_hot(y)] + b_L.

    Fed to the first layer only (:class:`LabelledDecoder`), the label must survive every
    hidden layer to reach the pixels, while z, whose code is learnt from images of each class,
    carries class-like shape of its own: on MNIST a z drawn from another class's posterior
    overrode the label in a quarter of the samples. Here the label also shifts every hidden
    layer and gives every class its own output bias (a template in logit space), the way
    Kingma et al. (2014) and Sohn et al. (2015) let y enter each generative layer. The output
    layer is registered last, so it is the one whose bias starts at the data.
    """

    def __init__(self, latent_dim: int, num_pixels: int, hidden_dims: list[int],
                 num_classes: int, activation: str = "relu"):
        super().__init__()
        sizes = [latent_dim, *reversed(hidden_dims)]
        self.hidden = nn.ModuleList(nn.Linear(n_in + num_classes, n_out)
                                    for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]()
        self.output = nn.Linear(sizes[-1] + num_classes, num_pixels)
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # z may carry leading particle dimensions that y lacks, y enumeration ones z lacks.
        batch = torch.broadcast_shapes(z.shape[:-1], y.shape)
        labels = one_hot(y, self.num_classes, z.dtype).expand(*batch, self.num_classes)
        h = z.expand(*batch, z.shape[-1])
        for layer in self.hidden:
            h = self.act(layer(torch.cat([h, labels], -1)))
        return self.output(torch.cat([h, labels], -1))


def check_labels(y: torch.Tensor | None, num_classes: int, what: str = "the data") -> None:
    """Raise :class:`DataError` unless ``y`` holds integer labels in 0..num_classes−1."""
    if y is None:
        raise DataError(f"{what} has no labels, but a conditional model needs one label per "
                        "datapoint. Train it on a labelled dataset (digits, mnist, "
                        "fashion-mnist, or a .npz with an integer array y), or use "
                        "[model] kind = \"vae\".")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        low, high = int(y.min()), int(y.max())
        fix = ("Number the classes 0, 1, 2, … (no negative labels)" if low < 0 else
               f"Set [kind] num_classes = {high + 1}, or number the classes 0..C−1")
        raise DataError(f"{what} has labels in [{low}, {high}], but the model has "
                        f"{num_classes} classes (0..{num_classes - 1}). {fix}.")


def check_label_flag(label: int, num_classes: int) -> None:
    """Raise :class:`ConfigError` unless ``label`` is one of the model's classes."""
    if not 0 <= label < num_classes:
        raise ConfigError(f"--label {label} is not a class of this model, whose labels are "
                          f"0..{num_classes - 1}.")


class ConditionalVAE(VAE):
    """p(z) p(x|z, y) with guide q(z|x, y); ``y`` is required and observed.

    Args:
        encoder: a :class:`LabelledEncoder`.
        decoder: a (z, y) ↦ likelihood parameters module, e.g. :class:`LabelledMLPDecoder`.
        prior, likelihood, num_data: as for :class:`~pyro_vae.models.VAE`.
        num_classes: the number C of labels 0..C−1.
    """

    #: Training and evaluation pass the labels to model and guide.
    conditional = True
    #: What the importance-sampled test score estimates.
    score_name = "log p(x|y)"

    def __init__(self, encoder: LabelledEncoder, decoder: nn.Module, prior, likelihood,
                 num_classes: int, num_data: int | None = None):
        super().__init__(encoder, decoder, prior, likelihood, num_data)
        self.num_classes = num_classes

    def _require_labels(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise DataError("a conditional VAE needs the labels y of its batch: call "
                            "model(x, y) and guide(x, y).")
        return y

    def latent_prior(self, labels: torch.Tensor, device: torch.device | str,
                     dtype: torch.dtype = torch.float32):
        """The prior of z for datapoints with these labels: p(z|y) for a label-conditional
        prior (``prior.label_conditional``), else p(z) batched to the labels' shape."""
        shape, device = torch.Size(labels.shape), torch.device(device)
        if getattr(self.prior, "label_conditional", False):
            return self.prior(shape, device, dtype, labels=labels)
        return self.prior(shape, device, dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(z|y) p(x|z, y) with ``x`` observed and ``y`` given (p(z|y) = p(z) unless the
        prior is label-conditional)."""
        y = self._require_labels(y)
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                z = pyro.sample("z", self.latent_prior(y.expand(x.shape[:1]), x.device, x.dtype))
            return pyro.sample("x", self.likelihood(self.decoder(z, y)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """q(z|x, y) = N(μ(x, y), diag σ(x, y)²), reparameterized."""
        y = self._require_labels(y)
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                return pyro.sample("z", self.posterior(x, y))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None):
        loc, scale = self.encoder(x, self._require_labels(y))
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z, y] in data space."""
        return self.likelihood.mean(self.decoder(z, self._require_labels(y)))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.posterior(x, y).mean, y)

    def cycle_labels(self, num_samples: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Labels 0, 1, …, C−1, 0, 1, … of length ``num_samples``."""
        return torch.arange(num_samples, device=device) % self.num_classes

    def generate(self, num_samples: int, device: torch.device | str = "cpu",
                 labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, decoder output) for z ~ p(z) and ``labels`` (default: cycling through classes)."""
        if labels is None:
            labels = self.cycle_labels(num_samples, device)
        check_labels(labels, self.num_classes, "the requested labels")
        labels = labels.to(device)
        z = self.latent_prior(labels, device).sample()
        return z, self.decoder(z, labels)

    def sample(self, num_samples: int, device: torch.device | str = "cpu", mean: bool = True,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        _, output = self.generate(num_samples, device, labels)
        return self.likelihood.mean(output) if mean else self.likelihood(output).sample()

    @torch.no_grad()
    def label_grid(self, columns: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """E[x|z, y] for every label (rows) × ``columns`` draws of z shared by every row
        (with a label-conditional prior: the same component and noise in every row where the
        prior has ``shared_draws``, else independent draws of p(z|y) for each row)."""
        labels = torch.arange(self.num_classes, device=device).repeat_interleave(columns)
        if hasattr(self.prior, "shared_draws"):
            z = self.prior.shared_draws(columns).reshape(-1, self.prior.latent_dim)
        elif getattr(self.prior, "label_conditional", False):  # e.g. a plugin's p(z|y)
            z = self.latent_prior(labels, device).sample()
        else:
            z = self.prior(torch.Size([columns]), torch.device(device), torch.float32).sample()
            z = z.repeat(self.num_classes, 1)
        return self.likelihood.mean(self.decoder(z, labels.to(z.device)))


def check_data_labels(config: "Config", data: "ImageData") -> None:
    """Refuse data without labels in ``0 .. num_classes − 1`` on any split (one paragraph
    naming the split)."""
    source = f"dataset {config.data.dataset!r}"
    if data.train_y is not None and data.test_y is None:  # an .npz with y but x_test alone
        raise DataError(f"{source} has training labels y but its test images x_test have "
                        "none, and a conditional model is scored on labelled test images. Save "
                        "their labels as y_test beside x_test (or leave out x_test to hold out "
                        "a labelled test split).")
    classes = config.model.options_of("kind")["num_classes"]
    check_labels(data.train_y, classes, f"{source} (train split)")
    check_labels(data.test_y, classes, f"{source} (test split)")
    check_labels(data.valid_y, classes, f"{source} (validation split)")


def prepare(config: "Config", data: "ImageData", vae: ConditionalVAE, objective: ELBO
            ) -> tuple[ELBO, None]:
    """The kind ``cvae``'s own preparation: the data must have labels; the objective is the
    one configured. (:mod:`pyro_vae.kind_objectives` adds the label-independence penalty to
    it: models import no objective.)"""
    check_data_labels(config, data)
    return objective, None


def model_defaults(model: "Mapping[str, Any]") -> dict[str, Any]:
    """The ``model_defaults`` hook of the kind ``cvae``: a Gaussian mixture per label, p(z|y),
    unless the recipe asks for the label-independence penalty, which needs N(0, I).

    With p(z) = N(0, I) one MNIST sample in five showed another digit than the one asked for
    (the decoder renders a z from another class's region as that class); p(z|y) draws z from
    the class's own region (97 % on MNIST) at no cost in log p(x|y). The mixture rather than
    the per-label VampPrior: the same fidelity and log p(x|y) within a standard error, at
    1.2-1.3x the step of N(0, I) against 2.6-2.9x (README, "Conditional VAEs")."""
    if model.get("label_independence", "none") != "none":
        return {}
    return {"prior": "mixture"}


#: The options every labelled kind declares (``[kind] num_classes``, ``decoder_label``).
LABELLED_OPTIONS = {
    "num_classes": Option(10, "number of labels 0..C−1", check=positive, legacy="num_classes"),
    "decoder_label": Option("every_layer", "how the MLP decoder reads one_hot(y): "
                            "every_layer (a class template at the output) or input (the "
                            "first layer only, with z, as Pyro's SS-VAE)",
                            choices=("every_layer", "input"), legacy="decoder_label"),
}

CVAE_OPTIONS = {
    **LABELLED_OPTIONS,
    "label_independence": Option(
        "none", "mmd adds λ · N · Σ_c (B_c/B) MMD²(q(z|y=c), p(z)) to the objective, pulling "
        "every class's aggregate posterior to the prior (pyro_vae/objectives/"
        "label_independence.py); none", choices=("none", "mmd"), legacy="label_independence"),
    "label_independence_weight": Option(500.0, "λ of that penalty, per datapoint",
                                        check=lambda v: None if v >= 0 else
                                        "must be non-negative.",
                                        legacy="label_independence_weight"),
}


def check(config: "Config") -> None:
    """The kind ``cvae``'s own checks: the penalty's weight needs the penalty, and the
    penalty (p(z|y) pulled to N(0, I)) cannot be combined with a label-conditional prior."""
    options = config.model.options_of("kind")
    penalty = options["label_independence"]
    if penalty == "none" and options["label_independence_weight"] != 500.0:
        raise ConfigError("[kind] label_independence_weight is only used with "
                          "label_independence = \"mmd\", which this recipe does not set; "
                          "remove the weight or set label_independence = \"mmd\".")
    if penalty != "none" and config.model.prior != "normal":
        raise ConfigError(
            f"[kind] label_independence = \"{penalty}\" pulls every class's posterior onto "
            f"N(0, I), and prior = \"{config.model.prior}\" fits a prior to every class's "
            "posterior instead: they undo each other. Use one of the two (prior = \"normal\" "
            "with the penalty, or the label-conditional prior with label_independence = "
            "\"none\").")


@MODEL_KINDS.register("cvae", help="label-conditional p(x|z, y) (needs labels)",
                      capabilities={"labels", "conditional", "pictures", "latent_means",
                                    "label_priors"},
                      hooks=KindHooks(display_name="label-conditional VAE", check=check,
                                      prepare=prepare, model_defaults=model_defaults),
                      options=CVAE_OPTIONS)
def build_conditional_vae(config: ModelConfig, image_shape: tuple[int, int, int],
                          num_data: int | None = None) -> ConditionalVAE:
    """A :class:`ConditionalVAE` of MLPs over ``[x, one_hot(y)]`` and ``[z, one_hot(y)]``, with
    ``[model] prior``: ``normal`` p(z) = N(0, I), or a ``label_conditional`` prior's p(z|y)
    (``vamp``: one mixture of posteriors per class)."""
    encoder, decoder = labelled_networks(config, image_shape)
    likelihood = build_likelihood(config, BuildContext(tuple(image_shape), num_data))
    classes = config.options_of("kind")["num_classes"]
    prior = build_label_prior(config, BuildContext(image_shape, num_data, encoder=encoder,
                                                   num_classes=classes))
    return ConditionalVAE(encoder, decoder, prior, likelihood, classes, num_data)


def build_label_prior(config: ModelConfig, context: BuildContext) -> Prior:
    """The prior of a labelled kind: ``config.prior`` built with the number of classes.

    A prior registered as ``label_conditional`` must also say so on its module (the class
    attribute ``label_conditional = True``), which is how the model knows to pass the labels:
    without it every p(z|y) would silently be the label-free p(z)."""
    prior = build_prior(config, context)
    if "label_conditional" in PRIORS.capabilities(config.prior) \
            and not getattr(prior, "label_conditional", False):
        raise ConfigError(
            f"prior = \"{config.prior}\" is registered as label_conditional, but the module "
            f"its factory returns ({type(prior).__name__}) has no class attribute "
            "label_conditional = True, so the model would never pass it the labels and train "
            "p(z) instead of p(z|y). Set label_conditional = True on the class (and take "
            "labels in forward), or drop the capability from its registration.")
    return prior


def labelled_networks(config: ModelConfig, image_shape: tuple[int, int, int]
                      ) -> tuple[LabelledEncoder, nn.Module]:
    """q(z|x, y)'s encoder (``[x, one_hot(y)]`` in) and p(x|z, y)'s decoder (the label at
    every layer, or with ``decoder_label = "input"`` at the first layer only) as the
    ``[model]`` table describes them."""
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    options = config.options_of("kind")
    classes = options["num_classes"]
    encoder = MLPEncoder(num_pixels + classes, config.latent_dim, config.hidden_dims,
                         config.activation, config.encoder_scale)
    if options["decoder_label"] == "input":  # [z, one_hot(y)] into the first layer only (Pyro)
        return LabelledEncoder(encoder, classes), LabelledDecoder(
            mlp([config.latent_dim + classes, *reversed(config.hidden_dims), num_pixels],
                config.activation), classes)
    decoder = LabelledMLPDecoder(config.latent_dim, num_pixels, config.hidden_dims, classes,
                                 config.activation)
    return LabelledEncoder(encoder, classes), decoder


def labelled_subset(y: torch.Tensor, num_labels: int, num_classes: int, seed: int = 0
                    ) -> torch.Tensor:
    """Indices of ``num_labels`` training points, balanced across classes as in Kingma et al.

    Classes take turns in a fixed random order; a class that runs out is skipped.
    """
    if num_labels > len(y):
        raise DataError(f"[data] num_labels = {num_labels} asks for more labels than the "
                        f"training split has datapoints ({len(y)}); choose at most {len(y)}.")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=generator)
    per_class = [order[y.cpu()[order] == c].tolist() for c in range(num_classes)]
    chosen: list[int] = []
    rank = 0
    while len(chosen) < num_labels:
        for members in per_class:
            if rank < len(members) and len(chosen) < num_labels:
                chosen.append(members[rank])
        rank += 1
    return torch.tensor(sorted(chosen), dtype=torch.long, device=y.device)
