"""Structured output prediction: complete an image from 1, 2 or 3 of its quadrants.

Following Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep
Conditional Generative Models", and Pyro's CVAE tutorial, an image is split into its given
quadrants x (bottom-left; then top-left; then top-right) and the missing ones y. Both models
take the whole image and split it themselves with a fixed pixel mask, so training, resuming
and evaluation treat them like any other model/guide pair.

* The **baseline** is a deterministic network ŷ(x):  y ~ Bernoulli(ŷ(x)) on the missing pixels.
  Its negative conditional log-likelihood −log p(y|x) is exact.
* The **CVAE** has a prior network p(z|x), a generation network p(y|x, z) and a recognition
  network q(z|x, y) (the whole image)::

      z ~ p(z|x) = N(μ_p(x), diag σ_p(x)²),      y ~ Bernoulli(g(x, z))     (model)
      z ~ q(z|x, y) = N(μ_q(x, y), diag σ_q(x, y)²)                          (guide)

  and is scored by importance sampling, per image,

      log p̂_K(y|x) = log (1/K) Σ_k p(y|x, z_k) p(z_k|x) / q(z_k|x, y),   z_k ~ q(z|x, y),

  which bounds log p(y|x) from below and tightens as K grows (unlike the negative ELBO that
  the tutorial reports as its "CLL").

Two options give Pyro's tutorial's own CVAE (``[model] quadrant_generation = "z"`` and
``baseline_run = RUN``): the generation network reads z only, p(y|z), so that z carries
the whole completion; and the prior network reads the given pixels with a trained, frozen
baseline's prediction ŷ(x) in the missing ones, its "initial guess". The baseline's weights
are copied into the CVAE when training starts, so the CVAE's checkpoint holds them.

The missing pixels are selected with ``Distribution.mask`` (a broadcastable boolean pixel
mask) rather than by boolean indexing, so any number of vectorized particles works.
Given pixels enter the networks as they are, missing ones as −1 (as in the tutorial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.checkpoints import load_checkpoint
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.likelihoods import BernoulliLikelihood
from pyro_vae.models.base import VAE
from pyro_vae.networks import MLPDecoder, MLPEncoder, mlp
from pyro_vae.options import Option
from pyro_vae.params import register_module
from pyro_vae.priors import Prior
from pyro_vae.registry import MODEL_KINDS, KindHooks

#: Value of the missing pixels in a network's input.
MISSING = -1.0


def given_mask(image_shape: tuple[int, int, int], quadrants: int) -> torch.Tensor:
    """Boolean ``[P]`` mask of the given pixels: bottom-left, then top-left, then top-right."""
    channels, height, width = image_shape
    given = torch.zeros(channels, height, width, dtype=torch.bool)
    given[:, height // 2:, : width // 2] = True
    if quadrants > 1:
        given[:, : height // 2, : width // 2] = True
    if quadrants > 2:
        given[:, : height // 2, width // 2:] = True
    return given.reshape(-1)


class PriorNetwork(Prior):
    """p(z|x) = N(μ_p(x), diag σ_p(x)²) from the masked image."""

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__(latent_dim)
        self.encoder = encoder

    def conditional(self, inputs: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.encoder(inputs)
        return dist.Normal(loc, scale, validate_args=False).to_event(1)


class _QuadrantModel(VAE):
    """Shared pieces: the pixel mask and the masked Bernoulli over the missing pixels."""

    score_name = "log p(y|x) of the missing quadrants"

    def __init__(self, encoder, decoder, prior, given: torch.Tensor,
                 num_data: int | None = None):
        super().__init__(encoder, decoder, prior, BernoulliLikelihood(), num_data)
        self.register_buffer("given", given)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network input: given pixels as they are, missing ones as −1."""
        return torch.where(self.given, x, torch.full_like(x, MISSING))

    def missing_pixels(self, logits: torch.Tensor) -> dist.TorchDistribution:
        """Bernoulli over every pixel, masked to the missing ones (broadcasts over particles)."""
        return dist.Bernoulli(logits=logits, validate_args=False).mask(~self.given).to_event(1)

    def kl_per_dim(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        return None  # the prior depends on x: no per-dimension summary

    def complete(self, x: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """The given pixels of ``x`` with ``probabilities`` in the missing ones."""
        return torch.where(self.given, x, probabilities)


class QuadrantBaseline(_QuadrantModel):
    """The deterministic baseline: y ~ Bernoulli(ŷ(x)) on the missing pixels, no latent."""

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        register_module("quadrants", self)
        with self._data_plate(x):
            return pyro.sample("y", self.missing_pixels(self.decoder(self.inputs(x))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        register_module("quadrants", self)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``[S, B, P]`` completions (the same deterministic prediction ``num_samples`` times)."""
        probabilities = torch.sigmoid(self.decoder(self.inputs(x)))
        return self.complete(x, probabilities).expand(num_samples, *x.shape)


def frozen(network: nn.Module) -> nn.Module:
    """``network`` with its parameters turned into buffers: saved with the model, never
    trained, and not registered with Pyro's parameter store."""
    for module in network.modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is not None:
                del module._parameters[name]
                module.register_buffer(name, parameter.detach())
    return network


class QuadrantCVAE(_QuadrantModel):
    """The CVAE of Sohn et al. (2015): prior, generation and recognition networks.

    ``baseline`` (optional): a frozen network ŷ(x) whose prediction fills the prior network's
    missing pixels. ``generation_reads_given``: whether p(y|x, z) reads the given pixels
    besides z (False: p(y|z), as Pyro's tutorial).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior,
                 given: torch.Tensor, num_data: int | None = None,
                 baseline: nn.Module | None = None, generation_reads_given: bool = True):
        super().__init__(encoder, decoder, prior, given, num_data)
        self.baseline = None if baseline is None else frozen(baseline)
        self.generation_reads_given = generation_reads_given

    def prior_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The prior network's input: the given pixels, and in the missing ones −1 or, with a
        baseline, its prediction ŷ(x)."""
        inputs = self.inputs(x)
        if self.baseline is None:
            return inputs
        return torch.where(self.given, x, torch.sigmoid(self.baseline(inputs)))

    def generation_logits(self, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if not self.generation_reads_given:
            return self.decoder(z)
        inputs = inputs.expand(*z.shape[:-1], inputs.shape[-1])
        return self.decoder(torch.cat([z, inputs], -1))

    @torch.no_grad()
    def start_output_bias(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mean-image start of :meth:`VAE.start_output_bias`, except for p(y|z): there it
        is skipped. A generation network that reads z only and starts at the mean image
        already scores what a z-free model can, so the KL to the x-dependent prior closed q onto
        p(z|x) at once: on MNIST with 1 quadrant given, 0 active units and a train ELBO stuck at
        −151 after 2 epochs, against 197 active units and −111 from the zero bias."""
        if not self.generation_reads_given:
            return None
        return super().start_output_bias(x)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(z|x) p(y|x, z) with the missing pixels y of ``x`` observed."""
        register_module("quadrants", self)
        inputs = self.inputs(x)
        with self._data_plate(x):
            with self._kl_scale():
                z = pyro.sample("z", self.prior.conditional(self.prior_inputs(x)))
            return pyro.sample("y", self.missing_pixels(self.generation_logits(inputs, z)),
                               obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """q(z|x, y), the recognition network on the whole image."""
        register_module("quadrants", self)
        with self._data_plate(x):
            with self._kl_scale():
                return pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``[S, B, P]`` completions E[y|x, z] for z ~ p(z|x)."""
        inputs = self.inputs(x)
        z = self.prior.conditional(self.prior_inputs(x)).sample(torch.Size([num_samples]))
        return self.complete(x, torch.sigmoid(self.generation_logits(inputs, z)))


def load_baseline(config: Config, image_shape: tuple[int, int, int], vae: QuadrantCVAE
                  ) -> None:
    """Copy the trained baseline that ``[kind] baseline_run`` names into ``vae``, or
    raise :class:`ConfigError` saying why it does not fit."""
    options = config.model.options_of("kind")
    run_dir = Path(options["baseline_run"])
    where = f"[kind] baseline_run = \"{options['baseline_run']}\""
    if not (run_dir / "checkpoint.pt").exists():
        raise ConfigError(f"{where} holds no trained run (no checkpoint.pt there). Train the "
                          "baseline first, e.g. `pyro-vae train models/mnist_quadrants_baseline."
                          f"toml --set kind.quadrants={options['quadrants']} --out RUN`, and name "
                          "RUN.")
    try:
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    except CheckpointError as error:
        raise ConfigError(f"{where}: {error}") from None
    model: Any = checkpoint["config"].get("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"{where}: its checkpoint's [model] is {model!r}, not a table of "
                          "settings: the checkpoint was altered. Retrain the baseline, or "
                          "restore its run from a copy.")
    wanted = {"kind": "quadrant_baseline", "quadrants": options["quadrants"],
              "hidden_dims": list(config.model.hidden_dims),
              "activation": config.model.activation}
    kind_table = checkpoint["config"].get("kind", {})
    recorded = {**model, **(kind_table if isinstance(kind_table, dict) else {})}
    found = {key: recorded.get(key) for key in wanted}  # a run records every key
    found["image_shape"], wanted["image_shape"] = list(checkpoint["image_shape"]), \
        list(image_shape)
    differ = [f"{key} {found[key]!r} (this CVAE: {wanted[key]!r})" for key in wanted
              if found[key] != wanted[key]]
    if differ:
        raise ConfigError(f"{where} is not a baseline this CVAE can read: its {'; '.join(differ)}"
                          ". Name a quadrant_baseline run with the same quadrants, hidden_dims "
                          "and activation, trained on images of the same shape.")
    weights = {name[len("decoder."):]: tensor for name, tensor in checkpoint["model"].items()
               if name.startswith("decoder.")}
    try:
        vae.baseline.load_state_dict(weights)
    except RuntimeError:
        raise ConfigError(f"{where}: its checkpoint does not hold the baseline network's "
                          "weights; retrain the baseline.") from None


def initialize(config: Config, data: Any, vae: QuadrantCVAE) -> None:
    """The ``initialize`` hook of ``quadrant_cvae``: copy in the trained baseline, if one is
    named. Only a new run reads it: a resumed run loads its own saved copy, so it continues
    when the baseline run has since been moved, deleted or retrained."""
    if config.model.options_of("kind")["baseline_run"]:
        load_baseline(config, data.image_shape, vae)


QUADRANTS = Option(1, "quadrants given (1, 2 or 3); the model predicts the other 4 − "
                   "quadrants", legacy="quadrants",
                   check=lambda q: None if q in (1, 2, 3) else
                   "give 1, 2 or 3 quadrants; the model predicts the other 4 − quadrants.")
CVAE_OPTIONS = {
    "quadrants": QUADRANTS,
    "generation": Option("given_and_z", "what the generation network p(y|x, z) reads: "
                         "given_and_z (the given pixels and z) or z (z only, as Pyro's "
                         "tutorial)", choices=("given_and_z", "z"), legacy="quadrant_generation"),
    "baseline_run": Option("", "a trained quadrant_baseline run whose prediction fills the "
                           "missing pixels of the prior network's input (Pyro's tutorial); "
                           "\"\" for none", legacy="baseline_run"),
}


@MODEL_KINDS.register("quadrant_baseline", help="complete images from quadrants: a deterministic "
                      "network", capabilities={"no_latents", "completions"},
                      hooks=KindHooks(display_name="quadrant-completion baseline"),
                      options={"quadrants": QUADRANTS})
@MODEL_KINDS.register("quadrant_cvae", help="complete images from quadrants: a CVAE",
                      capabilities={"completions", "latent_means"},
                      hooks=KindHooks(display_name="quadrant-completion CVAE",
                                      initialize=initialize),
                      options=CVAE_OPTIONS)
def build_quadrant_model(config: ModelConfig, image_shape: tuple[int, int, int],
                         num_data: int | None = None) -> _QuadrantModel:
    """``quadrant_baseline`` or ``quadrant_cvae`` as the ``[model]`` table describes it."""
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    options = config.options_of("kind")
    given = given_mask(image_shape, options["quadrants"])
    hidden = config.hidden_dims
    if config.kind == "quadrant_baseline":
        decoder = mlp([num_pixels, *hidden, num_pixels], config.activation)
        return QuadrantBaseline(nn.Identity(), decoder, Prior(config.latent_dim), given,
                                num_data)
    recognition = MLPEncoder(num_pixels, config.latent_dim, hidden, config.activation,
                             config.encoder_scale)
    prior = PriorNetwork(MLPEncoder(num_pixels, config.latent_dim, hidden, config.activation,
                                    config.encoder_scale), config.latent_dim)
    reads_given = options["generation"] == "given_and_z"
    generation = MLPDecoder(config.latent_dim + (num_pixels if reads_given else 0), num_pixels,
                            hidden, config.activation)
    baseline = mlp([num_pixels, *hidden, num_pixels], config.activation) \
        if options["baseline_run"] else None  # its weights: see load_baseline
    return QuadrantCVAE(recognition, generation, prior, given, num_data, baseline, reads_given)
