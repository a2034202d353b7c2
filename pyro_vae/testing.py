"""A kit for plugin authors: checks that a prior, guide, likelihood, objective or model of
one's own is what pyro-vae's commands expect (modelled on scikit-learn's ``check_estimator``).

Each function takes a registered name (or, for the components, a built instance) and returns
a list of what failed, in words; an empty list means every check passed::

    from pyro_vae.testing import check_prior

    def test_my_prior():
        assert check_prior("student_t") == []

The checks, with fixed seeds and tolerances from standard errors:

* **shapes**: a batch of B gives batch shape ``(B,)`` and the event shape the library uses
  (``(D,)`` for z, ``(P,)`` for x); ``log_prob`` gives one value per datapoint, finite.
* **normalization**, where it can be checked: a prior's density integrates to 1 in two
  dimensions (importance sampling from a product of Cauchy densities, whose tails are heavier
  than any proper prior's of interest); a likelihood sums to 1 over the 2^P binary images
  (binary data) or integrates to 1 over one pixel (a grid over its support).
* **gradients**: the log-density (or the objective's loss) reaches every trainable parameter
  with a finite gradient; a guide is reparameterized (``rsample``).
* **save/load**: a copy built again and given the ``state_dict`` scores the same.
* :func:`check_model` also trains the model for an epoch on the embedded digits with
  :func:`pyro_vae.fit`, checks that resuming is exact, and runs every command on the run:
  each must succeed or refuse in words (exit status 2), never with a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pyro_vae.config import ModelConfig
from pyro_vae.errors import PyroVAEError
from pyro_vae.registry import (GUIDES, LIKELIHOODS, MODEL_KINDS, OBJECTIVES, PRIORS,
                               BuildContext)

#: The small image and latent sizes the component checks build with.
IMAGE_SHAPE = (1, 2, 2)
LATENT_DIM = 2
BATCH = 5
#: Draws of the normalization checks, and how many standard errors they may be off.
NORMALIZATION_DRAWS = 20_000
TOLERANCE_STDERRS = 6.0


def _context(config: ModelConfig, options: dict | None = None) -> BuildContext:
    from pyro_vae.networks import build_networks

    encoder, _ = build_networks(config.network, IMAGE_SHAPE, config.latent_dim,
                                config.hidden_dims, config.activation, config.encoder_scale)
    return BuildContext(IMAGE_SHAPE, 100, encoder, options=dict(options or {}))


def _config(role: str, name: str, options: dict | None) -> ModelConfig:
    from pyro_vae.config import Config

    values = {"model": {role: name, "latent_dim": LATENT_DIM, "hidden_dims": [4]}}
    if options:
        values[role] = dict(options)
    return Config.from_dict(values, source=f"check_{role}").model


def _build(role: str, registry, thing: Any, options: dict | None
           ) -> tuple[Callable[[], nn.Module], str]:
    """A function building the component afresh (same seed: same start), and its name."""
    if isinstance(thing, nn.Module):
        return (lambda: copy.deepcopy(thing)), type(thing).__name__
    name = str(thing)
    config = _config(role, name, options)

    def build() -> nn.Module:
        torch.manual_seed(0)
        if role == "likelihood":
            from pyro_vae.likelihoods import build_likelihood

            return build_likelihood(config, _context(config, config.options_of(role)))
        context = _context(config, config.options_of(role))
        try:
            return registry.get(name)(config, context)
        except PyroVAEError:
            if "label_conditional" not in registry.capabilities(name):
                raise
            # A prior only for labelled kinds: built as the cvae and m2 build it, p(z|y).
            torch.manual_seed(0)
            context.num_classes = 3
            return registry.get(name)(config, context)
    return build, f"{role} {name!r}"


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _gradient_failures(who: str, module: nn.Module, value: torch.Tensor) -> list[str]:
    parameters = _trainable(module)
    if not parameters:
        return []
    grads = torch.autograd.grad(value, [p for _, p in parameters], allow_unused=True)
    failures = [f"{who}: the gradient of its log-density is not finite for {n}"
                for (n, _), g in zip(parameters, grads) if g is not None
                and not torch.isfinite(g).all()]
    if all(g is None or not g.abs().sum() for g in grads):
        failures.append(f"{who}: its log-density does not depend on any of its parameters "
                        f"({', '.join(n for n, _ in parameters)}): they would not train.")
    return failures


def _save_load_failures(who: str, build: Callable[[], nn.Module], module: nn.Module,
                        score: Callable[[nn.Module], torch.Tensor]) -> list[str]:
    with torch.no_grad():
        for parameter in module.parameters():  # move off the start, so loading shows
            parameter.add_(0.01 * torch.randn_like(parameter))
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        fresh = build()
        buffer.seek(0)
        try:
            fresh.load_state_dict(torch.load(buffer, weights_only=True))
        except Exception as error:  # noqa: BLE001 (reported in words)
            return [f"{who}: its state_dict does not load into a copy built again "
                    f"({type(error).__name__}: {error})."]
        if not torch.allclose(score(module), score(fresh), atol=1e-5, rtol=1e-5):
            return [f"{who}: a copy built again and given its state_dict scores differently: "
                    "some state is not in the state_dict (keep tensors as parameters or "
                    "buffers)."]
    return []


@contextlib.contextmanager
def _failures_as_list(failures: list[str], who: str):
    try:
        yield
    except PyroVAEError as error:
        failures.append(str(error))
    except Exception as error:  # noqa: BLE001 (the component's own code failed)
        failures.append(f"{who}: {type(error).__name__}: {error}")


# --- priors --------------------------------------------------------------------------------------

def check_prior(prior: Any, options: dict | None = None) -> list[str]:
    """What is wrong with ``prior`` (a registered name, or a built
    :class:`~pyro_vae.priors.Prior` of ``latent_dim`` 2): shapes, normalization, gradients and
    save/load (see the module docstring)."""
    from pyro_vae.priors import check_prior as check_shapes

    failures: list[str] = []
    build, who = _build("prior", PRIORS, prior, options)
    with _failures_as_list(failures, who):
        module = build()
        latent_dim = getattr(module, "latent_dim", LATENT_DIM)
        check_shapes(module, latent_dim, who)
        failures += _prior_normalization(who, module, latent_dim)
        torch.manual_seed(1)
        z = torch.randn(BATCH, latent_dim)
        density = module(torch.Size([BATCH]), torch.device("cpu"), torch.float32)
        failures += _gradient_failures(who, module, density.log_prob(z).sum())
        # A fresh tensor each time: a flow's transforms cache their last (x, y) pair.
        failures += _save_load_failures(who, build, module, lambda m: m(
            torch.Size([BATCH]), torch.device("cpu"), torch.float32).log_prob(z.clone()))
    return failures


def _prior_normalization(who: str, module: nn.Module, latent_dim: int) -> list[str]:
    """∫ p(z) dz = 1, by importance sampling from independent Cauchy(0, 3) coordinates
    (checked where D ≤ 2, where that proposal keeps the weights' variance small)."""
    if latent_dim > 2:
        return []
    generator = torch.Generator().manual_seed(0)
    proposal = torch.distributions.Cauchy(0.0, 3.0)
    z = proposal.icdf(torch.rand(NORMALIZATION_DRAWS, latent_dim, generator=generator)
                      .clamp(1e-6, 1 - 1e-6))
    with torch.no_grad():
        density = module(torch.Size([NORMALIZATION_DRAWS]), torch.device("cpu"), torch.float32)
        weights = (density.log_prob(z) - proposal.log_prob(z).sum(-1)).exp().double()
    mass = float(weights.mean())
    stderr = float(weights.std() / math.sqrt(len(weights)))
    if not abs(mass - 1.0) <= TOLERANCE_STDERRS * stderr + 0.02:
        return [f"{who}: its density integrates to {mass:.3f} ± {stderr:.3f}, not 1 "
                "(importance sampling over z); a prior's log_prob must be normalized, or "
                "log p(x) is off by a constant."]
    return []


# --- guides --------------------------------------------------------------------------------------

def check_guide(guide: Any, options: dict | None = None) -> list[str]:
    """What is wrong with ``guide`` (a registered name, or a built
    :class:`~pyro_vae.guides.Guide`): q(z|x) from the encoder's (μ, σ) with batch shape (B,)
    and event shape (D,), reparameterized, finite log_prob, a ``latent_mean`` of shape (B, D),
    gradients to μ, σ and its own parameters, save/load."""
    failures: list[str] = []
    build, who = _build("guide", GUIDES, guide, options)
    torch.manual_seed(2)
    loc = torch.randn(BATCH, LATENT_DIM, requires_grad=True)
    scale = (0.5 + torch.rand(BATCH, LATENT_DIM)).requires_grad_(True)
    with _failures_as_list(failures, who):
        module = build()
        q = module(loc, scale)
        shapes = (tuple(q.batch_shape), tuple(q.event_shape))
        if shapes != ((BATCH,), (LATENT_DIM,)):
            return [f"{who}: for (μ, σ) of shape {(BATCH, LATENT_DIM)} it gives batch shape "
                    f"{shapes[0]} and event shape {shapes[1]}, not ({BATCH},) and "
                    f"({LATENT_DIM},); return e.g. dist.Normal(loc, scale).to_event(1)."]
        if not q.has_rsample:
            failures.append(f"{who}: q(z|x) has no rsample; the objectives differentiate "
                            "through z = g(ε, x), so a guide must be reparameterized.")
            return failures
        z = q.rsample()
        log_q = q.log_prob(z)
        if tuple(log_q.shape) != (BATCH,) or not torch.isfinite(log_q).all():
            failures.append(f"{who}: log_prob of its own draws has shape "
                            f"{tuple(log_q.shape)} or is not finite; it must be finite, "
                            f"shape ({BATCH},).")
        mean = module.latent_mean(loc, scale)
        if tuple(mean.shape) != (BATCH, LATENT_DIM):
            failures.append(f"{who}: latent_mean gives shape {tuple(mean.shape)}, not "
                            f"{(BATCH, LATENT_DIM)}.")
        grads = torch.autograd.grad((z.sum() + log_q.sum()), [loc, scale], allow_unused=True)
        if any(g is None or not torch.isfinite(g).all() for g in grads):
            failures.append(f"{who}: its draws and log-density do not pass finite gradients "
                            "to the encoder's μ and σ.")
        failures += _gradient_failures(who, module, module(loc, scale).log_prob(z.detach())
                                       .sum())
        fixed_z = z.detach()
        failures += _save_load_failures(who, build, module,
                                        lambda m: m(loc, scale).log_prob(fixed_z.clone()))
    return failures


# --- likelihoods ---------------------------------------------------------------------------------

def check_likelihood(likelihood: Any, options: dict | None = None) -> list[str]:
    """What is wrong with ``likelihood`` (a registered name, or a built
    :class:`~pyro_vae.likelihoods.Likelihood`): p(x|z) from the decoder's output with batch
    shape (B,) and event shape (P,), ``mean`` of shape (B, P), ``output_start`` that gives the
    pixel means back, normalization (a sum over binary images or a grid over one pixel),
    gradients, save/load."""
    failures: list[str] = []
    build, who = _build("likelihood", LIKELIHOODS, likelihood, options)
    pixels = 3
    binary = isinstance(likelihood, str) and "binary_data" in LIKELIHOODS.capabilities(
        likelihood)
    with _failures_as_list(failures, who):
        module = build()
        torch.manual_seed(3)
        output = (0.5 * torch.randn(BATCH, pixels)).requires_grad_(True)
        p = module(output)
        shapes = (tuple(p.batch_shape), tuple(p.event_shape))
        if shapes != ((BATCH,), (pixels,)):
            return [f"{who}: for a decoder output of shape {(BATCH, pixels)} it gives batch "
                    f"shape {shapes[0]} and event shape {shapes[1]}, not ({BATCH},) and "
                    f"({pixels},); add .to_event(1)."]
        x = p.sample().detach()
        log_p = p.log_prob(x)
        if tuple(log_p.shape) != (BATCH,) or not torch.isfinite(log_p).all():
            failures.append(f"{who}: log_prob of its own draws has shape "
                            f"{tuple(log_p.shape)} or is not finite.")
        mean = module.mean(output)
        if tuple(mean.shape) != (BATCH, pixels):
            failures.append(f"{who}: mean gives shape {tuple(mean.shape)}, not "
                            f"{(BATCH, pixels)}.")
        target = torch.full((pixels,), 0.3)
        start = module.output_start(target)
        if start is not None and not torch.allclose(module.mean(start[None]), target[None],
                                                    atol=1e-3):
            failures.append(f"{who}: output_start(m) is not an output whose mean is m "
                            f"(mean {module.mean(start[None]).tolist()} for {target.tolist()}).")
        failures += _likelihood_normalization(who, module, binary)
        failures += _gradient_failures(who, module, module(output).log_prob(x).sum())
        grads = torch.autograd.grad(module(output).log_prob(x).sum(), output)
        if not torch.isfinite(grads[0]).all():
            failures.append(f"{who}: the gradient to the decoder's output is not finite.")
        fixed = output.detach()
        failures += _save_load_failures(who, build, module, lambda m: m(fixed).log_prob(x))
    return failures


def _likelihood_normalization(who: str, module: nn.Module, binary: bool) -> list[str]:
    with torch.no_grad():
        if binary:  # every binary image of 3 pixels
            images = torch.tensor(list(itertools.product((0.0, 1.0), repeat=3)))
            output = torch.tensor([[0.7, -1.2, 0.1]]).expand(len(images), 3)
            mass = float(module(output).log_prob(images).exp().sum())
        else:  # one pixel, a fine grid over its support
            output = torch.tensor([[0.3]])
            p = module(output)
            support = getattr(p, "base_dist", p).support
            low = float(getattr(support, "lower_bound", -math.inf))
            high = float(getattr(support, "upper_bound", math.inf))
            center = float(module.mean(output))
            low = low if math.isfinite(low) else center - 200.0
            high = high if math.isfinite(high) else center + 200.0
            grid = torch.linspace(low, high, 400_001, dtype=torch.float64)[1:-1]
            density = module(output.expand(len(grid), 1)).log_prob(
                grid.float()[:, None]).double().exp()
            mass = float(torch.trapezoid(density, grid))
    if not abs(mass - 1.0) < 0.01:
        return [f"{who}: p(x|z) sums or integrates to {mass:.4f} over the data, not 1; "
                "log p(x) would be off."]
    return []


# --- objectives ----------------------------------------------------------------------------------

def check_objective(objective: str, particles: int = 3, options: dict | None = None
                    ) -> list[str]:
    """What is wrong with the objective registered as ``objective`` on a tiny VAE (a discrete
    one for objectives declaring ``discrete_only``): a finite scalar loss, finite gradients
    that reach both the encoder and the decoder, the same loss for the same seed, and (for
    a lower bound) a bound below the model's log p(x) within Monte Carlo error."""
    from pyro_vae.config import Config
    from pyro_vae.evaluate import estimate_log_likelihood
    from pyro_vae.models import build_vae
    from pyro_vae.objectives import ObjectiveModule, is_lower_bound, make_objective

    failures: list[str] = []
    who = f"objective {objective!r}"
    discrete = "discrete_only" in OBJECTIVES.capabilities(objective)
    model = {"kind": "discrete", "categorical_latents": 2, "categories": 2} if discrete else {}
    values = {"model": {"latent_dim": LATENT_DIM, "hidden_dims": [4], **model},
              "train": {"objective": objective, "particles": max(particles, 2)}}
    if options:
        values["objective"] = dict(options)
    with _failures_as_list(failures, who):
        config = Config.from_dict(values, source="check_objective")
        torch.manual_seed(0)
        vae = build_vae(config.model, IMAGE_SHAPE)
        x = torch.bernoulli(torch.full((BATCH, 4), 0.4))
        losses = []
        for _ in range(2):
            torch.manual_seed(5)
            module = ObjectiveModule(vae, make_objective(
                objective, config.train.particles, options=config.options.get("objective")))
            loss = module(x)
            losses.append(loss)
        if loss.dim() != 0 or not torch.isfinite(loss):
            return [f"{who}: its loss is {loss!r}, not a finite scalar."]
        if not torch.allclose(losses[0], losses[1]):
            failures.append(f"{who}: the same seed gives losses {float(losses[0]):.4f} and "
                            f"{float(losses[1]):.4f}; it draws from a generator that "
                            "torch.manual_seed does not set.")
        inference, generative = vae.parameter_groups()
        grads = torch.autograd.grad(loss, [*inference, *generative], allow_unused=True)
        if any(g is not None and not torch.isfinite(g).all() for g in grads):
            failures.append(f"{who}: its gradient is not finite.")
        for part, group, part_grads in (("encoder", inference, grads[:len(inference)]),
                                        ("decoder", generative, grads[len(inference):])):
            if group and all(g is None or not g.abs().sum() for g in part_grads):
                failures.append(f"{who}: its gradient does not reach the {part}.")
        if is_lower_bound(objective, 0.5) and not discrete:
            torch.manual_seed(6)
            with torch.no_grad():
                bound = -float(torch.stack([module(x) for _ in range(200)]).mean()) / len(x)
            log_p = estimate_log_likelihood(vae, x, 2000).mean_log_likelihood
            if bound > log_p + 0.05:
                failures.append(f"{who}: its bound {bound:.3f} nats per datapoint lies above "
                                f"log p(x) = {log_p:.3f}; a lower bound cannot.")
    return failures


# --- models --------------------------------------------------------------------------------------

def check_model(factory: str | Callable[..., Any], plugin: str | None = None,
                options: dict | None = None, commands: bool = True) -> list[str]:
    """What is wrong with the model that ``factory`` builds (a registered kind name or an
    importable ``"module:function"``/function, as :func:`pyro_vae.fit` takes): the protocol
    methods its capabilities promise, one epoch of :func:`pyro_vae.fit` on the embedded
    digits, exact resume (one epoch and a resumed second equal two epochs straight), and
    every command on the run, which must succeed or refuse in words (exit 2). ``plugin`` is
    the module the commands trust (default: the factory's module); ``options`` are further
    recipe values, e.g. ``{"model": {"latent_dim": 2}}``."""
    from pyro_vae.config import Config
    from pyro_vae.fitting import factory_path
    from pyro_vae.protocol import missing_methods
    from pyro_vae.runs import load_trained
    from pyro_vae.training import train

    failures: list[str] = []
    kind = factory if isinstance(factory, str) and ":" not in factory and \
        factory in MODEL_KINDS else factory_path(factory)
    who = f"model kind {kind!r}"
    tables = {"model": {"kind": kind, "latent_dim": LATENT_DIM, "hidden_dims": [8]},
              "train": {"epochs": 2, "batch_size": 256}, "evaluate": {"num_samples": 4}}
    for table, values in (options or {}).items():
        tables.setdefault(table, {}).update(values)
    with _failures_as_list(failures, who), tempfile.TemporaryDirectory() as folder:
        config = Config.from_dict(tables, source="check_model")
        capabilities = MODEL_KINDS.capabilities(kind)
        from pyro_vae.models import build_vae

        missing = missing_methods(build_vae(config.model, (1, 8, 8)), capabilities)
        if missing:
            return [f"{who} lacks {', '.join(missing)} (see pyro_vae.protocol)."]
        straight, split = Path(folder) / "straight", Path(folder) / "split"
        train(config, straight, progress=False)
        train(config.with_overrides({"train": {"epochs": 1}}), split, progress=False)
        train(config, split, resume=True, progress=False)
        weights = [load_trained(run)[1].state_dict() for run in (straight, split)]
        if any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0]):
            failures.append(f"{who}: one epoch and a resumed second do not give the weights of "
                            "two epochs straight; some state (an RNG, a buffer) is not saved "
                            "in the checkpoint or not restored.")
        if commands:
            trusted = plugin or (kind.split(":")[0] if ":" in kind else
                                 MODEL_KINDS.entry(kind).plugin or None)
            failures += _command_failures(who, straight, trusted)
    return failures


#: Each command on a run, with flags small enough for a check.
COMMANDS = (
    ("evaluate", "--num-samples", "4"),
    ("sample", "--n", "4", "--out", "{run}/s.npz"),
    ("traverse",),
    ("anomaly", "--against", "digits", "--num-samples", "4", "--limit", "60",
     "--regret-steps", "2"),
    ("compare", "--particles", "2", "--repeats", "2", "--batch-size", "8", "--out",
     "{run}/lab"),
    ("gaps", "--n", "2", "--num-samples", "8", "--steps", "2", "--nuts-points", "1",
     "--chains", "2", "--draws", "4"),
)


def _command_failures(who: str, run: Path, plugin: str | None) -> list[str]:
    """Every command of :data:`COMMANDS` on ``run``, each as ``python -m pyro_vae`` in a
    process of its own (the library never imports its command line) seeing this process's
    import path: exit 0, or 2 with a paragraph."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    failures = []
    for command, *flags in COMMANDS:
        argv = [command, str(run), *(f.format(run=run) for f in flags)]
        if plugin:
            argv += ["--plugin", plugin]
        result = subprocess.run([sys.executable, "-m", "pyro_vae", *argv], env=env,
                                capture_output=True, text=True)
        if result.returncode not in (0, 2) or "Traceback" in result.stderr:
            failures.append(f"{who}: `pyro-vae {command}` ended with status "
                            f"{result.returncode}: {result.stderr.strip()[-300:]}")
    return failures
