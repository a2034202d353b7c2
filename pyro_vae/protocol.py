"""What the commands need of a model: the model protocol and the capabilities a model declares.

Every model kind is a Pyro model/guide pair in an ``nn.Module`` (``models.VAE`` and its
subclasses are the library's). Training, ``evaluate``, ``compare`` and ``gaps`` need only
:class:`Model`; the other commands ask for more, and a model kind *declares* what it offers
when it registers (``MODEL_KINDS.register(name, capabilities={...})``) instead of being probed
for attributes:

=================  ==========================================================================
capability         what it promises (and which command uses it)
=================  ==========================================================================
``components``     built from registered prior, guide, likelihood and networks, so the
                   ``[model]`` options prior, guide, bayesian_decoder and free_bits apply
``pictures``       :class:`Pictures`: samples, reconstructions, interpolation, latent map
                   (``train``'s pictures, ``sample``)
``latent_means``   ``latent_mean(x)``: a representative point of q(z|x) (latent maps, probe)
``labels``         model and guide take labels, ``model(x, y)``; q(z|x, y) (``cvae``, ``m2``)
``semi_supervised`` trains on partly labelled data (``[data] num_labels``); sums an absent
                   label out of log p(x), and ``classify(x)`` gives argmax q(y|x)
                   (``evaluate`` and ``anomaly`` on unlabelled data)
``discrete_latents`` sums a discrete latent out (needs an objective that enumerates)
``completions``    completes images from given parts; draws nothing from p(x) alone
``no_latents``     has no latent variable at all (active units are 0)
``estimator_lab``  ``compare`` may measure every estimator on it (point-estimated weights)
=================  ==========================================================================

Objectives declare theirs too (``pyro_vae.objectives.CAPABILITIES``); ``config.
check_compatible`` is the one place that matches the two.

Besides capabilities a kind supplies **hooks** (:class:`~pyro_vae.registry.KindHooks`): its
name in words, data preparation and default objective, the batches of an epoch, its entries
of the test summary and its pictures. The training loop and the commands call them and name
no kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import pyro.distributions as dist
import torch

from pyro_vae.config import Config
from pyro_vae.registry import MODEL_KINDS, KindHooks

#: The capabilities a model kind may declare (see the table above).
MODEL_CAPABILITIES = ("components", "pictures", "latent_means", "labels", "semi_supervised",
                      "discrete_latents", "completions", "no_latents", "estimator_lab")


@runtime_checkable
class Model(Protocol):
    """What training and scoring need: a Pyro model/guide pair whose local sites lie in the
    ``data`` plate, plus the scale settings the training loop drives."""

    #: Weight of the latent sites (β times the annealing factor), set by the training loop.
    kl_weight: float
    #: Size N of the training set for minibatch scaling (``None``: the batch is the data).
    num_data: int | None

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...

    def scoring(self) -> contextlib.AbstractContextManager:
        """Within it: KL weight 1 and no minibatch scaling (the true model)."""
        ...


@runtime_checkable
class Pictures(Protocol):
    """Capability ``pictures``: what ``sample`` and the training pictures draw."""

    def generate(self, num_samples: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor: ...

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution: ...


def capabilities(config: Config) -> frozenset[str]:
    """The capabilities that the model kind of ``config`` declares."""
    return MODEL_KINDS.capabilities(config.model.kind)


def has(config: Config, capability: str) -> bool:
    """Whether the model kind of ``config`` declares ``capability``."""
    return capability in capabilities(config)


def hooks(config: Config) -> KindHooks:
    """The hooks that the model kind of ``config`` supplies (defaults where it has none)."""
    return MODEL_KINDS.hooks(config.model.kind)


def display_name(config: Config) -> str:
    """What the model kind of ``config`` is, in words (``"label-conditional VAE"``)."""
    return hooks(config).display_name or f"{config.model.kind} model"


@dataclass
class Epoch:
    """What a kind's ``batches`` hook is given for one epoch of training."""

    #: The loss of a batch: ``forward(x)``, ``forward(x, y)``, ``forward(x, classifier_x=...)``
    #: (the objective module, or its ``DistributedDataParallel`` wrapper under torchrun).
    forward: Callable[..., torch.Tensor]
    #: This epoch's training inputs (a fresh binarization where binarization is dynamic).
    x: torch.Tensor
    #: The training labels the model is called with (``None`` for a kind without labels).
    labels: torch.Tensor | None
    #: The dataset (an :class:`~pyro_vae.data.ImageData`: labels, grey images, ...).
    data: Any
    batch_size: int
    #: What the kind's ``prepare`` hook returned besides the objective.
    state: Any = None
    #: The process group under torchrun (``None`` in one process).
    group: Any = None
