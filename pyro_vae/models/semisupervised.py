"""Semi-supervised learning with the M2 model of Kingma, Rezende, Mohamed & Welling (2014),
"Semi-supervised Learning with Deep Generative Models", as a Pyro model/guide pair.

Generative model, for each datapoint n in the ``data`` plate::

    y_n ~ Cat(1/C, …, 1/C),   z_n ~ N(0, I),   x_n ~ p(x | decoder(z_n, y_n))

Guide::

    y_n ~ q(y | x_n) = Cat(softmax(classifier(x_n)))      (only when y_n is not observed)
    z_n ~ q(z | x_n, y_n) = N(μ(x_n, y_n), diag σ(x_n, y_n)²)

A labelled batch observes y and its ELBO is −L(x, y) = log p(y) + E_q[log p(x|y,z)] − KL; an
unlabelled batch treats y as latent, and ``TraceEnum_ELBO`` sums it out exactly over the C
classes (``infer={"enumerate": "parallel"}``), which gives Kingma's

    −U(x) = Σ_y q(y|x) (−L(x, y)) + H(q(y|x)).

Because q(y|x) then only learns from unlabelled data, Kingma et al. add a classification term
α · Σ_labelled −log q(y|x) (their eq. 9, with α per labelled point against 1 per unlabelled one;
Pyro's SS-VAE example takes α = 46). Here it is an observed site ``y_aux`` of the model scored by
the classifier. Labelled and unlabelled batches use ``data`` plates of their own sizes, so each
minibatch ELBO is an unbiased estimate of its whole split's term.

**What α weighs in a step.** A step adds a labelled batch (B_l points, plate scale N_l/B_l) and
an unlabelled batch (B_u points, plate scale N_u/B_u). Under Adam only the *ratio* of the terms in
one step matters, so α is taken per labelled point relative to one unlabelled point of the same
step: the ``y_aux`` site of a labelled point weighs α · N_u/B_u. (Scaling it only by the labelled
plate's N_l/B_l, the whole-data reading, left the classifier 5–7 % aux signal per step at 100
labels, N_u/B ≈ 300, and 52 % test accuracy: Adam followed the clustering signal.) Pyro's example
gets the same balance by taking the aux term as an optimizer step of its own with unscaled sums.
Without unlabelled data the reference is one labelled point's ELBO (weight N_l/B_l).
That is the ``paired`` schedule of :func:`batches`. The ``interleaved`` schedule of
:mod:`pyro_vae.m2_schedule` trains M2 as Pyro's example does (the classification term as a step
of its own, each labelled batch once an epoch). Measured on MNIST with 100 labels (README): α = 50
here keeps q(y|x) at the supervised-only accuracy (77-78 %), α = 5 lets the unlabelled term move
it (80 % after 2 epochs), and the interleaved schedule is slower to start (68 % after 5 epochs).

The classifier reads ``classifier_x`` where given: the grey images of which ``x`` is a binarized
draw (the likelihood scores the binary draw; the classifier sees the image as it is).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import ELBO, TraceEnum_ELBO
from torch import nn

from pyro_vae.config import Config, ModelConfig
from pyro_vae.data import ImageData
from pyro_vae.errors import ConfigError
from pyro_vae.m2_schedule import M2_SCHEDULES, cycled_batches, interleaved_batches
from pyro_vae.models.conditional import (LABELLED_OPTIONS, ConditionalVAE, build_label_prior,
                                         check_data_labels, labelled_networks, labelled_subset)
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.networks import mlp
from pyro_vae.options import Option
from pyro_vae.params import register_module
from pyro_vae.plates import MAX_PLATE_NESTING
from pyro_vae.protocol import Epoch
from pyro_vae.registry import MODEL_KINDS, PRIORS, BuildContext, KindHooks


class M2(ConditionalVAE):
    """Kingma et al.'s M2: y observed when labelled, enumerated when not (see module docstring).

    Args:
        classifier: ``x ↦`` logits of q(y|x), shape ``[..., C]``.
        encoder, decoder, prior, likelihood, num_classes: as for
            :class:`~pyro_vae.models.conditional.ConditionalVAE`.
        aux_loss_weight: α, the weight of −log q(y|x) per labelled datapoint relative to one
            unlabelled datapoint of the same step (see the module docstring).
    """

    #: log p(x) is scored with y summed (sampled) out: the labels are not needed.
    conditional = False
    score_name = "log p(x)"

    def __init__(self, classifier: nn.Module, encoder, decoder, prior, likelihood,
                 num_classes: int, aux_loss_weight: float = 50.0):
        super().__init__(encoder, decoder, prior, likelihood, num_classes)
        self.classifier = classifier
        self.aux_loss_weight = aux_loss_weight
        #: Sizes of the labelled and unlabelled training splits, for minibatch scaling.
        self.num_labelled: int | None = None
        self.num_unlabelled: int | None = None
        #: Unlabelled points per training step (B_u), for the aux term's per-step weight.
        self.unlabelled_batch_size: int | None = None

    def set_split_sizes(self, num_labelled: int, num_unlabelled: int,
                        batch_size: int | None = None) -> None:
        """Training split sizes N_l, N_u and the minibatch size B (default: whole splits)."""
        self.num_labelled, self.num_unlabelled = num_labelled, num_unlabelled
        self.num_data = num_labelled + num_unlabelled
        self.unlabelled_batch_size = min(batch_size or num_unlabelled, num_unlabelled) or None

    def aux_scale(self, batch: int) -> float:
        """The ``y_aux`` site's scale inside the labelled plate (whose own scale is N_l/B_l) that
        gives each labelled point the weight α · N_u/B_u: α times one unlabelled point's."""
        labelled_scale = (self.num_labelled or batch) / batch
        if not self.num_unlabelled or not self.unlabelled_batch_size:
            return self.aux_loss_weight
        unlabelled_scale = self.num_unlabelled / self.unlabelled_batch_size
        return self.aux_loss_weight * unlabelled_scale / labelled_scale

    def _split_plate(self, x: torch.Tensor, labelled: bool) -> pyro.plate:
        batch = x.shape[0]
        size = batch
        if self.num_data is not None:  # training: scale each batch up to its own split
            size = (self.num_labelled if labelled else self.num_unlabelled) or batch
        subsample = None if size == batch else torch.arange(batch, device=x.device)
        return pyro.plate("data", size, subsample=subsample, dim=-1)

    def label_prior(self, batch: int, x: torch.Tensor) -> dist.TorchDistribution:
        logits = x.new_zeros(self.num_classes)
        return dist.Categorical(logits=logits).expand([batch])

    def _z_prior(self, label: torch.Tensor, x: torch.Tensor) -> dist.TorchDistribution:
        """p(z), or p(z|y) for a label-conditional prior (``label`` observed, or enumerated
        with its own leading dimension)."""
        if getattr(self.prior, "label_conditional", False):
            return self.latent_prior(label, x.device, x.dtype)
        return self.prior(x.shape[:1], x.device, x.dtype)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None,
              classifier_x: torch.Tensor | None = None) -> torch.Tensor:
        """p(y) p(z) p(x|y, z) (p(z|y) with a label-conditional prior); with ``y`` given in training, also the classification term
        log q(y|x) as the observed ``y_aux``, weighted as the module docstring says."""
        register_module("m2", self)
        with self._split_plate(x, labelled=y is not None):
            label = pyro.sample("y", self.label_prior(x.shape[0], x), obs=y)
            with self._kl_scale():
                z = pyro.sample("z", self._z_prior(label, x))
            observed = pyro.sample("x", self.likelihood(self.decoder(z, label)), obs=x)
            if y is not None and self.aux_loss_weight > 0 and self.num_data is not None:
                logits = self.classifier(x if classifier_x is None else classifier_x)
                with poutine.scale(scale=self.aux_scale(x.shape[0])):
                    pyro.sample("y_aux", dist.Categorical(logits=logits), obs=y)
            return observed

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None,
              classifier_x: torch.Tensor | None = None) -> torch.Tensor:
        """q(y|x) (enumerated, only when y is missing; read from ``classifier_x`` where given)
        and q(z|x, y)."""
        register_module("m2", self)
        with self._split_plate(x, labelled=y is not None):
            if y is None:
                logits = self.classifier(x if classifier_x is None else classifier_x)
                y = pyro.sample("y", dist.Categorical(logits=logits),
                                infer={"enumerate": "parallel"})
            with self._kl_scale():
                return pyro.sample("z", self.posterior(x, y))

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
        """argmax_y q(y|x) for every row of ``x``."""
        return torch.cat([self.classifier(x[s: s + batch_size]).argmax(-1)
                          for s in range(0, len(x), batch_size)])

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = μ(x, y), y], with y the classifier's guess when not given."""
        y = self.classify(x) if y is None else y
        return super().reconstruct(x, y)

    def test_summary(self, x: torch.Tensor, y: torch.Tensor | None,
                     classifier_x: torch.Tensor | None = None) -> dict[str, Any]:
        """Test accuracy of the classifier argmax q(y|x) (on ``classifier_x`` where given: the
        grey images of ``x``), with its binomial standard error."""
        if y is None:
            return {}
        accuracy = float((self.classify(x if classifier_x is None else classifier_x) == y)
                         .float().mean())
        return {"test_accuracy": accuracy,
                "test_accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / len(y))}


def build_m2(config: ModelConfig, image_shape: tuple[int, int, int],
             aux_loss_weight: float = 50.0) -> M2:
    """The M2 model a ``[model]`` table describes (MLP classifier, encoder and decoder)."""
    encoder, decoder = labelled_networks(config, image_shape)
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    classes = config.options_of("kind")["num_classes"]
    classifier = mlp([num_pixels, *config.hidden_dims, classes], config.activation)
    likelihood = build_likelihood(config, BuildContext(tuple(image_shape)))
    prior = build_label_prior(config, BuildContext(image_shape, encoder=encoder,
                                                   num_classes=classes))
    return M2(classifier, encoder, decoder, prior, likelihood, classes,
              aux_loss_weight)


def prepare(config: Config, data: ImageData, vae: M2, objective: ELBO
            ) -> tuple[ELBO, tuple[torch.Tensor, torch.Tensor]]:
    """The ``prepare`` hook of the kind ``m2``: the data must have labels; keeps the labels of
    ``[data] num_labels`` training points (balanced across classes), sizes the two splits'
    plates, and trains with ``TraceEnum_ELBO`` so that the missing labels are summed out.

    Returns (objective, (labelled, unlabelled) training indices, schedule, labelled_every).
    """
    check_data_labels(config, data)
    options = config.model.options_of("kind")
    particles = config.train.particles
    num_labels = config.data.num_labels or len(data.train_y)
    labelled = labelled_subset(data.train_y, num_labels, options["num_classes"],
                               config.train.seed)
    unlabelled = torch.ones(len(data.train_y), dtype=torch.bool, device=labelled.device)
    unlabelled[labelled] = False
    unlabelled = unlabelled.nonzero().squeeze(-1)
    if not len(unlabelled) and options["aux_loss_weight"] == 0:
        raise ConfigError(
            f"M2 keeps every one of the {len(labelled)} training labels and [kind] "
            "aux_loss_weight = 0, so nothing trains the classifier q(y|x): it learns only "
            "from the unlabelled ELBO and from the labelled -log q(y|x) term, and here there is "
            "neither. Its test accuracy would be that of untrained weights. Set aux_loss_weight "
            "above 0 (--aux-loss-weight), or keep fewer labels ([data] num_labels, "
            "--num-labels).")
    if "pseudo_inputs" in PRIORS.capabilities(config.model.prior) \
            and hasattr(vae.prior, "initialize_from"):
        # A VampPrior per label starts at images of each class: the labelled ones only, since
        # every other label is hidden from the model.
        vae.prior.initialize_from(data.train_x[labelled], data.train_y[labelled],
                                  "labelled training images",
                                  f"a larger [data] num_labels than {len(labelled)}")
    vae.set_split_sizes(len(labelled), len(unlabelled), config.train.batch_size)
    vae.aux_loss_weight = options["aux_loss_weight"]
    objective = TraceEnum_ELBO(num_particles=particles, vectorize_particles=particles > 1,
                               max_plate_nesting=MAX_PLATE_NESTING)
    return objective, (labelled, unlabelled, options["m2_schedule"], options["labelled_every"])


def batches(epoch: Epoch) -> Iterator[Callable[[], tuple[torch.Tensor, torch.Tensor, int]]]:
    """The ``batches`` hook of the kind ``m2``: one pass over the larger split, every step
    adding a labelled and an unlabelled batch (cycling through the smaller split).

    The classifier reads the grey images of which the training inputs are binarized draws
    (``data.grey``). Each step weighs 1 in the epoch's mean: its loss estimates the negative
    objective summed over both splits.
    """
    # A labelled batch has nothing to enumerate, which TraceEnum_ELBO warns about; expected here.
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    labelled_indices, unlabelled_indices, schedule, _ = epoch.state
    if schedule == "interleaved":  # Pyro's example: see pyro_vae/m2_schedule.py
        yield from interleaved_batches(epoch)
        return
    grey = epoch.data.grey("train")
    x_labelled, x_unlabelled = epoch.x[labelled_indices], epoch.x[unlabelled_indices]
    y_labelled = epoch.data.train_y[labelled_indices]
    grey_labelled, grey_unlabelled = grey[labelled_indices], grey[unlabelled_indices]
    num_l, num_u = len(x_labelled), len(x_unlabelled)
    batch_size = epoch.batch_size
    num_steps = math.ceil(max(num_l, num_u) / batch_size)
    next_labelled = cycled_batches(num_l, min(batch_size, num_l), x_labelled.device)
    next_unlabelled = cycled_batches(num_u, batch_size, x_labelled.device) if num_u else None

    def step() -> tuple[torch.Tensor, torch.Tensor, int]:
        labelled = next_labelled()
        batch = x_labelled[labelled]
        loss = epoch.forward(batch, y_labelled[labelled],
                             classifier_x=grey_labelled[labelled])
        if next_unlabelled is not None:
            unlabelled = next_unlabelled()
            batch = x_unlabelled[unlabelled]
            loss = loss + epoch.forward(batch, classifier_x=grey_unlabelled[unlabelled])
        return loss, batch, 1

    for _ in range(num_steps):
        yield step


def test_summary(vae: M2, data: ImageData, split: str, config: Config) -> dict[str, Any]:
    """The ``test_summary`` hook of the kind ``m2``: the classifier's accuracy on the split
    (read from its grey images)."""
    x, y = data.split(split)
    return vae.test_summary(x, y, classifier_x=data.grey(split))


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be non-negative."


M2_OPTIONS = {
    **LABELLED_OPTIONS,
    "aux_loss_weight": Option(50.0, "weight α on −log q(y|x) per labelled datapoint (Kingma "
                              "et al. 2014, eq. 9)", check=_non_negative,
                              legacy="aux_loss_weight"),
    "m2_schedule": Option("paired", "paired (a labelled and an unlabelled batch in every "
                          "step) or interleaved (Pyro's example: unlabelled steps, a labelled "
                          "batch every labelled_every steps; pyro_vae/m2_schedule.py)",
                          choices=M2_SCHEDULES, legacy="m2_schedule"),
    "labelled_every": Option(0, "interleaved: a labelled batch every k unlabelled steps; 0 = "
                             "each labelled batch once an epoch, spread evenly",
                             check=_non_negative, legacy="labelled_every"),
}


def check(config: Config) -> None:
    """The kind ``m2``'s own check: ``labelled_every`` belongs to the interleaved schedule."""
    options = config.model.options_of("kind")
    if options["labelled_every"] != 0 and options["m2_schedule"] != "interleaved":
        raise ConfigError("[kind] labelled_every is only used with m2_schedule = "
                          "\"interleaved\", which this recipe does not set; remove "
                          "labelled_every or set the option it belongs to.")


@MODEL_KINDS.register("m2", help="semi-supervised M2 (Kingma et al. 2014)",
                      capabilities={"labels", "conditional", "partial_labels",
                                    "unlabelled_scoring", "classifier", "discrete_latents",
                                    "pictures", "latent_means", "label_priors"},
                      hooks=KindHooks(display_name="semi-supervised M2 model", check=check,
                                      prepare=prepare, batches=batches,
                                      test_summary=test_summary),
                      options=M2_OPTIONS)
def _build_m2_kind(config: ModelConfig, image_shape: tuple[int, int, int],
                   num_data: int | None = None) -> M2:
    return build_m2(config, image_shape)
