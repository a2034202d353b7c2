"""A VAE with a discrete latent code, as a Pyro model/guide pair.

The code is K categorical variables of C classes each (C = 2: K Bernoulli latents), each a
one-hot vector z_k ∈ {e_1, …, e_C}. Generative model, for each datapoint n in the ``data``
plate::

    z_nk ~ Cat(π_k)                 k = 1..K   (π_k uniform, or learned logits)
    x_n  ~ p(x | decoder([z_n1, …, z_nK]))

Guide (mean-field over the K variables, amortized)::

    z_nk ~ q(z_k | x_n) = Cat(softmax(ℓ_k(x_n)))      with  [ℓ_1 … ℓ_K] = encoder(x_n)

The K variables are K sample sites ``z_0 … z_{K−1}`` (one-hot ``OneHotCategorical``), not one
site with a plate over k: the decoder couples them, so they are not conditionally independent
and a plate would be wrong for enumeration. Being separate sites, each can be enumerated by
Pyro in a dimension of its own (``TraceEnum_ELBO`` then sums the C^K codes exactly).

No sample is reparameterizable, so the Gaussian VAE's objectives do not apply; the objectives of
this model are the score-function ones (``score``, ``vimco``), the relaxed ones (``concrete``,
``straight_through``: the *objective* swaps q's sites for Concrete / Gumbel-Softmax ones) and
exact enumeration (``enumerate``). The model never names any of them.

Evaluation: the importance-sampled log p(x) of :mod:`pyro_vae.evaluate` works unchanged; where
C^K is small (≤ :data:`MAX_EXACT_CONFIGURATIONS`) :meth:`DiscreteVAE.exact_log_likelihood`
sums the prior over every code, log p(x) = log Σ_z p(z) p(x|z), with no estimate at all.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.config import Config, ModelConfig
from pyro_vae.config.checks import MAX_CODE_UNITS, MAX_ENUMERATED_CODES
from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import Likelihood, build_likelihood
from pyro_vae.models.base import data_plate, kl_scale, true_model
from pyro_vae.networks import mlp
from pyro_vae.options import Option, positive
from pyro_vae.params import register_module
from pyro_vae.registry import MODEL_KINDS, BuildContext, KindHooks


#: Largest number of codes C^K that the exact sums (log p(x), ELBO) enumerate.
MAX_EXACT_CONFIGURATIONS = 4096


def site_names(num_latents: int) -> list[str]:
    """The sample-site names of the K categorical variables."""
    return [f"z_{k}" for k in range(num_latents)]


def join_codes(codes: list[torch.Tensor]) -> torch.Tensor:
    """K one-hot tensors ``[..., C]`` (broadcastable, e.g. enumerated in dims of their own)
    as one decoder input ``[..., K·C]``."""
    return torch.cat(torch.broadcast_tensors(*codes), dim=-1)


class DiscreteVAE(nn.Module):
    """K categorical latents of C classes (see the module docstring).

    Args:
        encoder: ``x ↦`` logits ``[..., K·C]`` of q(z|x).
        decoder: one-hot codes ``[..., K·C] ↦`` the likelihood's raw parameters.
        likelihood: p(x|z), a :class:`~pyro_vae.likelihoods.Likelihood`.
        num_latents: K. num_categories: C.
        learned_prior: learn the prior's logits (a point estimate) instead of a uniform prior.
        num_data: size N of the training set for minibatch scaling (``None``: the batch).
    """

    score_name = "log p(x)"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood,
                 num_latents: int, num_categories: int, learned_prior: bool = False,
                 num_data: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.num_latents = num_latents
        self.num_categories = num_categories
        logits = torch.zeros(num_latents, num_categories)
        if learned_prior:
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)
        self.num_data = num_data
        #: Weight of the latent sites in model and guide: β times the annealing factor.
        self.kl_weight = 1.0

    # -- plumbing shared with the Gaussian VAE -------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.num_latents

    @property
    def num_configurations(self) -> int:
        """C^K, the number of codes."""
        return self.num_categories ** self.num_latents

    def _data_plate(self, x: torch.Tensor) -> pyro.plate:
        return data_plate(x, self.num_data)

    def _kl_scale(self) -> contextlib.AbstractContextManager:
        return kl_scale(self.kl_weight)

    def scoring(self) -> contextlib.AbstractContextManager["DiscreteVAE"]:
        """Evaluate the true model: KL weight 1 and no minibatch scaling, restored afterwards."""
        return true_model(self)

    # -- the model/guide pair ----------------------------------------------------------------
    def prior(self, k: int, batch: int) -> dist.TorchDistribution:
        """p(z_k) for ``batch`` datapoints."""
        return dist.OneHotCategorical(logits=self.prior_logits[k]).expand([batch])

    def posterior_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(z|x), shape ``[..., K, C]``."""
        return self.encoder(x).reshape(*x.shape[:-1], self.num_latents, self.num_categories)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Π_k p(z_k) · p(x|z) with ``x`` observed; ``y`` is accepted and ignored."""
        register_module("vae", self)
        with self._data_plate(x):
            with self._kl_scale():
                codes = [pyro.sample(name, self.prior(k, x.shape[0]))
                         for k, name in enumerate(site_names(self.num_latents))]
            return pyro.sample("x", self.likelihood(self.decoder(join_codes(codes))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Π_k q(z_k|x), one ``OneHotCategorical`` site per variable."""
        register_module("vae", self)
        with self._data_plate(x):
            logits = self.posterior_logits(x)
            with self._kl_scale():
                return [pyro.sample(name, dist.OneHotCategorical(logits=logits[..., k, :]))
                        for k, name in enumerate(site_names(self.num_latents))]

    # -- outside a Pyro program ------------------------------------------------------------------
    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(the encoder's parameters, the decoder's and the likelihood's), for the lab."""
        return list(self.encoder.parameters()), [*self.decoder.parameters(),
                                                 *self.likelihood.parameters()]

    def decoder_output(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's raw parameters for one-hot codes ``z`` of shape ``[..., K, C]``."""
        return self.decoder(z.reshape(*z.shape[:-2], self.num_latents * self.num_categories))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] for one-hot codes ``[..., K, C]``."""
        return self.likelihood.mean(self.decoder_output(z))

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_z q(z|x) as one-hot codes ``[B, K, C]``."""
        logits = self.posterior_logits(x)
        return F.one_hot(logits.argmax(-1), self.num_categories).to(logits.dtype)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = argmax q(z|x)]."""
        return self.decode(self.mode(x))

    def generate(self, num_samples: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot z ``[S, K, C]``, decoder output) for ``num_samples`` draws z ~ p(z)."""
        logits = self.prior_logits.to(device)
        z = dist.OneHotCategorical(logits=logits).sample(torch.Size([num_samples]))
        return z, self.decoder_output(z)

    def sample(self, num_samples: int, device: torch.device | str = "cpu",
               mean: bool = True) -> torch.Tensor:
        """Draws x ~ p(x) (or E[x|z] for z ~ p(z) when ``mean``)."""
        _, output = self.generate(num_samples, device)
        return self.likelihood.mean(output) if mean else self.likelihood(output).sample()

    def all_codes(self) -> torch.Tensor:
        """Every one of the C^K codes as one-hot tensors ``[C^K, K, C]`` (lexicographic)."""
        eye = torch.eye(self.num_categories, device=self.prior_logits.device)
        index = torch.tensor(list(itertools.product(range(self.num_categories),
                                                    repeat=self.num_latents)),
                             device=eye.device).reshape(-1, self.num_latents)
        return eye[index]

    def _check_enumerable(self) -> None:
        if self.num_configurations > MAX_EXACT_CONFIGURATIONS:
            raise ValueError(f"{self.num_categories}^{self.num_latents} codes are too many to "
                             f"enumerate (at most {MAX_EXACT_CONFIGURATIONS})")

    def _joint_log_density(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """log p(z) + log p(x|z) for every code (rows of ``codes``) and datapoint: ``[M, B]``."""
        log_prior = (codes * torch.log_softmax(self.prior_logits, -1)).sum((-1, -2))
        output = self.decoder_output(codes)                       # [M, P]
        log_lik = self.likelihood(output[:, None, :]).log_prob(x)  # [M, B]
        return log_prior[:, None] + log_lik

    def exact_log_likelihood(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """log p(x) = log Σ_z p(z) p(x|z), summed over all C^K codes, per row of ``x``."""
        self._check_enumerable()
        codes = self.all_codes()
        return torch.cat([torch.logsumexp(self._joint_log_density(x[s: s + batch_size], codes), 0)
                          for s in range(0, len(x), batch_size)])

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO(x) = Σ_z q(z|x) [log p(x, z) − log q(z|x)] summed over all codes, per row of x.

        Differentiable: the exact gradient the estimators are checked against.
        """
        self._check_enumerable()
        codes = self.all_codes()                                     # [M, K, C]
        log_q_k = torch.log_softmax(self.posterior_logits(x), -1)    # [B, K, C]
        log_q = torch.einsum("mkc,bkc->mb", codes, log_q_k)          # [M, B]
        return (log_q.exp() * (self._joint_log_density(x, codes) - log_q)).sum(0)

    def kl_per_latent(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z_k|x) ‖ p(z_k)) per datapoint and variable, ``[B, K]``."""
        log_q = torch.log_softmax(self.posterior_logits(x), -1)
        log_p = torch.log_softmax(self.prior_logits, -1)
        return (log_q.exp() * (log_q - log_p)).sum(-1)

    @torch.no_grad()
    def latent_activity(self, x: torch.Tensor, y: torch.Tensor | None = None
                        ) -> dict[str, object]:
        """Collapse diagnostics with the Gaussian VAE's keys: a variable k is active if its
        class probabilities vary over the data, Σ_c Var_x(q(z_k = c|x)) > 0.01; the KL per
        variable is exact."""
        probs = torch.cat([torch.softmax(self.posterior_logits(x[s: s + 1000]), -1)
                           for s in range(0, len(x), 1000)])
        activity = probs.var(0, unbiased=True).sum(-1) if len(x) > 1 else \
            torch.zeros(self.num_latents)
        kl = torch.cat([self.kl_per_latent(x[s: s + 1000]) for s in range(0, len(x), 1000)])
        return {"active_units": int((activity > 0.01).sum()),
                "activity_per_dim": [round(float(a), 6) for a in activity],
                "kl": round(float(kl.sum(-1).mean()), 6),
                "kl_per_dim": [round(float(k), 6) for k in kl.mean(0)]}

    @torch.no_grad()
    def test_summary(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, Any]:
        """The code's size, and the exact log p(x) and ELBO where the codes can be enumerated
        (the model's own terms: no minibatch scaling, no KL weight enter either)."""
        summary: dict[str, Any] = {"latent_dim": self.num_latents,
                                   "categorical_latents": self.num_latents,
                                   "categories": self.num_categories}
        if self.num_configurations <= MAX_EXACT_CONFIGURATIONS:
            exact = self.exact_log_likelihood(x)
            elbo = torch.cat([self.exact_elbo(x[s: s + 500]) for s in range(0, len(x), 500)])
            for key, values in (("log_likelihood", exact), ("elbo", elbo)):
                summary[f"test_exact_{key}"] = float(values.mean())
                summary[f"test_exact_{key}_stderr"] = (
                    float(values.std() / math.sqrt(len(values))) if len(values) > 1
                    else float("nan"))
        return summary

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Start the decoder's output bias at the logit of the mean training pixel (Bernoulli
        likelihoods), so that early steps need not learn the background."""
        last = [m for m in self.decoder.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(x.float().mean(0).clamp(1e-3, 1 - 1e-3)))

    @torch.no_grad()
    def category_grid(self, x_reference: torch.Tensor) -> tuple[torch.Tensor, int, str]:
        """What each category codes: (images, columns, title).

        With at most 100 codes, every code is decoded (one row per value of the first
        variable). Otherwise row k decodes the reference image's mode with z_k set to each of
        its C classes in turn.
        """
        if self.num_configurations <= 100 and self.num_latents <= 2:
            images = self.decode(self.all_codes())
            columns = self.num_categories if self.num_latents == 2 else min(10, len(images))
            return images, columns, "E[x|z] for every code (row: z_0, column: z_1)" \
                if self.num_latents == 2 else "E[x|z] for every class of z_0"
        base = self.mode(x_reference[:1])[0]                       # [K, C]
        codes = base.expand(self.num_latents, self.num_categories, *base.shape).clone()
        eye = torch.eye(self.num_categories, device=base.device)
        for k in range(self.num_latents):
            codes[k, :, k, :] = eye
        images = self.decode(codes.reshape(-1, self.num_latents, self.num_categories))
        return images, self.num_categories, ("E[x|z]: row k sets z_k to each class, the other "
                                             "variables at a test image's mode")


def test_summary(vae: DiscreteVAE, data: Any, split: str, config: Any) -> dict[str, Any]:
    """The ``test_summary`` hook of the kind ``discrete``: the code's size, and the exact
    log p(x) and ELBO of the split where the codes can be enumerated."""
    return vae.test_summary(*data.split(split))


OPTIONS = {
    "categorical_latents": Option(20, "K categorical latent variables", check=positive,
                                  legacy="categorical_latents"),
    "categories": Option(10, "C classes of each (2: Bernoulli latents)",
                         check=lambda c: None if c >= 2 else "a categorical variable needs at "
                         "least 2 classes (2 is a Bernoulli latent).", legacy="categories"),
    "code_prior": Option("uniform", "p(code): uniform, or learned logits",
                         choices=("uniform", "learned"), legacy="discrete_prior"),
}


def check(config: Config) -> None:
    """The kind ``discrete``'s own checks: a code of at most :data:`MAX_CODE_UNITS` one-hot
    units, and at most :data:`MAX_ENUMERATED_CODES` codes for the objective that sums over
    all of them."""
    options = config.model.options_of("kind")
    latents, categories = options["categorical_latents"], options["categories"]
    units = latents * categories
    if units > MAX_CODE_UNITS:
        raise ConfigError(
            f"[kind] categorical_latents × categories = {latents} × {categories} = {units} "
            f"one-hot units, more than the {MAX_CODE_UNITS} a discrete model is built for: its "
            "encoder outputs every unit and its decoder reads them, with a weight per unit and "
            "hidden unit each. Use fewer latents or categories.")
    if config.train.objective == "enumerate" and categories ** latents > MAX_ENUMERATED_CODES:
        raise ConfigError(
            f"[train] objective = \"enumerate\" sums over all C^K = {categories}^{latents} "
            f"codes, more than the {MAX_ENUMERATED_CODES} it allows (each costs a decoder pass "
            "per datapoint). Use fewer [kind] categorical_latents or categories, or a sampling "
            "objective (score, vimco, concrete, straight_through).")


@MODEL_KINDS.register("discrete", help="K categorical latents of C classes",
                      capabilities={"categorical_latents", "pictures", "latent_means",
                                    "estimator_lab"},
                      hooks=KindHooks(display_name="VAE with a discrete code", check=check,
                                      test_summary=test_summary),
                      options=OPTIONS)
def build_discrete_vae(config: ModelConfig, image_shape: tuple[int, int, int],
                       num_data: int | None = None) -> DiscreteVAE:
    """The discrete VAE a ``[model]`` table describes (MLP encoder and decoder)."""
    num_pixels = image_shape[0] * image_shape[1] * image_shape[2]
    options = config.options_of("kind")
    latents, categories = options["categorical_latents"], options["categories"]
    size = latents * categories
    encoder = mlp([num_pixels, *config.hidden_dims, size], config.activation)
    decoder = mlp([size, *reversed(config.hidden_dims), num_pixels], config.activation)
    likelihood = build_likelihood(config, BuildContext(tuple(image_shape), num_data))
    return DiscreteVAE(encoder, decoder, likelihood, latents, categories,
                       options["code_prior"] == "learned", num_data)
