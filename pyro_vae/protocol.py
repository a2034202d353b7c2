"""What the commands need of a model: the model protocol and the capabilities a model declares.

Every model kind is a Pyro model/guide pair in an ``nn.Module`` (``models.VAE`` and its
subclasses are the library's; a plain ``nn.Module`` of one's own trained by
:func:`pyro_vae.fit` is another). Training, ``evaluate`` and the importance-sampled scores
need only :class:`Model`. The other commands ask for more, and a model kind *declares* what
it offers when it registers (``MODEL_KINDS.register(name, capabilities={...})``, or a
``capabilities`` attribute on the factory that :func:`pyro_vae.fit` records) instead of being
probed for attributes. The words are the fixed vocabulary of :mod:`pyro_vae.capabilities`
(unknown words are refused at registration); what each promises in methods is below and in
:data:`REQUIRED_METHODS`, and nothing else is called on a model:

===================  ========================================================================
capability           methods the library calls (and the commands that call them)
===================  ========================================================================
(every model)        :class:`Model`: ``model(x, y=None)``, ``guide(x, y=None)`` with local
                     sites in ``pyro.plate("data", ...)``; attributes ``kl_weight`` and
                     ``num_data`` (set by the training loop); ``scoring()`` (train, evaluate,
                     gaps' log p(x) and NUTS, anomaly's log p(x) and ELBO)
``latent_means``     :class:`LatentMeans`: ``posterior(x)`` (q(z|x) as a distribution over
                     ``[B, D]``) and ``latent_mean(x)`` (active units, the collapse check,
                     latent maps, probe, traverse, the gaps' start for q*)
``pictures``         :class:`Pictures`: the above and ``generate(n, device)`` (z ~ p(z) and
                     the decoder output at z), ``decode(z)`` (E[x|z]), ``reconstruct(x)``
                     and ``likelihood(output)`` (p(x|z) from that output, for draws of x):
                     train's pictures, ``sample``, ``traverse``
``estimator_lab``    :class:`EstimatorLab`: ``parameter_groups()`` (inference-network and
                     model parameters, whose gradients ``compare`` measures apart)
``components``       a :class:`~pyro_vae.models.VAE` built from registered components: its
                     ``encoder``, ``decoder``, ``prior``, ``likelihood`` and ``family``
                     (anomaly's likelihood regret, impute, the gaps' q* in the guide's family)
``labels``,          the label-taking forms ``model(x, y)``, ``posterior(x, y)``,
``conditional``      ``decode(z, y)``, ``generate(n, labels=...)`` (cvae, m2); the kind's
                     ``[kind] num_classes`` option
``classifier``       ``classify(x)``: q(y|x) (the label guessed for unlabelled images)
``unlabelled_scoring`` ``model(x)`` and ``guide(x)`` without ``y`` sum the label out
``partial_labels``   its ``prepare`` hook keeps ``[data] num_labels`` labels (m2)
===================  ========================================================================

Optional methods, used where present and documented here: ``kl_per_dim(loc, scale)`` (the
closed-form KL per latent dimension, for a diagonal Gaussian q; else the KL is Monte Carlo),
``latent_activity(x, y)`` (a model with its own kind of code, e.g. a discrete one),
``start_output_bias(train_x)`` (the decoder's bias started at the data); the attribute
``vectorize_particles`` (``False`` for a model whose global sites cannot take a particle
dimension, like a Bayesian decoder's weights: the objective then draws its particles one
after another).

A model whose guide has latent sites outside the ``data`` plate (global latent variables such
as a hyperprior's scale or Bayesian decoder weights) needs nothing more: scores, active units
and the collapse check condition on draws of the global sites and measure the local code.

Objectives declare their capabilities too (``pyro_vae.objectives.CAPABILITIES``); ``config.
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

from pyro_vae.capabilities import MODEL_CAPABILITIES
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.registry import MODEL_KINDS, KindHooks

#: What every model has (:class:`Model`), and the methods each capability promises.
MODEL_METHODS = ("model", "guide", "scoring")
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "latent_means": ("posterior", "latent_mean"),
    "pictures": ("posterior", "latent_mean", "generate", "decode", "reconstruct",
                 "likelihood"),
    "estimator_lab": ("parameter_groups",),
    "components": ("encoder", "decoder", "prior", "likelihood", "family"),
    "classifier": ("classify",),
}


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
class LatentMeans(Protocol):
    """Capability ``latent_means``: the amortized posterior and a point of it per input."""

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z|x) as a distribution with batch shape ``[B]`` and event shape ``[D]``."""
        ...

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """A representative point of q(z|x) per row, ``[B, D]`` (its mean for a Gaussian)."""
        ...


@runtime_checkable
class Pictures(LatentMeans, Protocol):
    """Capability ``pictures``: what ``sample``, ``traverse`` and the training pictures draw."""

    def generate(self, num_samples: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, decoder output) for ``num_samples`` draws z ~ p(z)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] in data space, ``[B, P]``."""
        ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = latent_mean(x)], ``[B, P]``."""
        ...

    def likelihood(self, output: torch.Tensor) -> dist.TorchDistribution:
        """p(x|z) over ``[B, P]`` from the decoder output that :meth:`generate` returns."""
        ...


@runtime_checkable
class EstimatorLab(Protocol):
    """Capability ``estimator_lab``: the parameter groups whose gradients ``compare``
    measures apart (Rainforth et al. 2018 report them for encoder and decoder)."""

    def parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(inference-network parameters, generative-model parameters)."""
        ...


def missing_methods(model: Any, capabilities: frozenset[str] | set[str]) -> list[str]:
    """The methods and attributes of :class:`Model` and of the declared ``capabilities``
    that ``model`` lacks, as ``"name (capability)"`` strings."""
    absent: dict[str, str] = {}
    for name in MODEL_METHODS:
        if not callable(getattr(model, name, None)):
            absent[name] = "every model"
    for name in ("kl_weight", "num_data"):
        if not hasattr(model, name):
            absent[name] = "every model"
    for capability in sorted(capabilities):
        for name in REQUIRED_METHODS.get(capability, ()):
            if getattr(model, name, None) is None:
                absent.setdefault(name, capability)
    return [f"{name} ({capability})" for name, capability in absent.items()]


def check_model(model: Any, capabilities: frozenset[str] | set[str], who: str) -> None:
    """Refuse, in one paragraph, a model that lacks a method its capabilities promise."""
    missing = missing_methods(model, capabilities)
    if missing:
        declared = ", ".join(sorted(capabilities)) or "none"
        raise ConfigError(
            f"{who} lacks {', '.join(missing)}: the commands call these on a model that "
            f"declares the capabilities it does ({declared}). Add them (see "
            "pyro_vae.protocol for what each returns), or leave the capability out of the "
            "factory's capabilities.")


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
