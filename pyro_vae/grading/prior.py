"""Grader of exercise 4: a prior of one's own, registered by a plugin module.

The student writes a module (``my_prior.py``) holding

* a :class:`~pyro_vae.priors.Prior` subclass, p(z) = N(m, diag s²) with a learned mean m and a
  learned scale s > 0 (e.g. s = softplus(a)), starting at N(0, I), whose ``forward(batch_shape,
  device, dtype)`` returns a distribution of batch shape ``batch_shape`` and one event
  dimension of size D; and
* its registration, ``@PRIORS.register("learned_gaussian", ...)`` on a factory
  ``build(config, context)``,

and loads it as every command does, with :func:`pyro_vae.registry.load_plugin`.

The check of last resort is exact. With a learned Gaussian prior the linear-Gaussian model
(:mod:`pyro_vae.toy`) still has a closed-form marginal, log p(x) = log N(x; W m + b,
W S Wᵀ + σ² I), and a closed-form posterior N(Σ(S⁻¹m + Wᵀ(x − b)/σ²), Σ), Σ = (S⁻¹ + WᵀW/σ²)⁻¹,
which the toy's linear encoder represents exactly. With the encoder set there, every importance
weight the library's own model and guide produce, p(x, z)/q(z|x), must equal that p(x): the
student's prior then works inside the Pyro model, its plates and its objectives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import Normal

from pyro_vae.config import ModelConfig
from pyro_vae.evaluate import log_importance_weights
from pyro_vae.grading.result import GradeResult, Report, fmt
from pyro_vae.priors import Prior
from pyro_vae.registry import PRIORS, BuildContext, suggestion
from pyro_vae.toy import LATENT, SIGMA, LinearGaussian

DIMS = 3


def _build(report: Report, name: str, latent_dim: int) -> Prior:
    try:
        config = ModelConfig(latent_dim=latent_dim, prior=name)
        prior = PRIORS.get(name)(config, BuildContext(image_shape=(1, 2, 3),
                                                      options=config.options_of("prior")))
    except Exception as error:  # the student's factory may raise anything
        report.fail("factory", f"building the prior with its registered factory, "
                    f"factory(config, context) with config.latent_dim = {latent_dim}, raised "
                    f"{type(error).__name__}: {error}. The factory receives the [model] table "
                    "(a ModelConfig) and a BuildContext; return your Prior(config.latent_dim).")
    if not isinstance(prior, Prior):
        report.fail("factory", f"the factory returned a {type(prior).__name__}; return an "
                    "instance of your subclass of pyro_vae.priors.Prior.")
    if getattr(prior, "latent_dim", None) != latent_dim:
        report.fail("factory", f"with config.latent_dim = {latent_dim} your prior has latent_dim "
                    f"= {getattr(prior, 'latent_dim', None)}; pass config.latent_dim on to "
                    "Prior.__init__.")
    return prior


def _distribution(report: Report, name: str, prior: Prior, batch: int) -> Any:
    try:
        return prior(torch.Size([batch]), torch.device("cpu"), torch.float32)
    except Exception as error:  # the student's forward may raise anything
        report.fail(name, f"prior(batch_shape, device, dtype) raised {type(error).__name__}: "
                    f"{error}.")


def _moments(report: Report, name: str, distribution: Any) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        return distribution.mean, distribution.variance
    except (AttributeError, NotImplementedError):
        report.fail(name, f"the distribution ({type(distribution).__name__}) has no mean and "
                    "variance; build it from torch/pyro distributions, e.g. "
                    "dist.Normal(loc, scale).to_event(1).")


def check_prior_plugin(name: str = "learned_gaussian") -> GradeResult:
    """Grade the prior registered as ``name``: registered by a plugin, a Prior with the right
    shapes, starting at N(0, I), a diagonal Gaussian whose mean and scale are learned and stay
    valid, and exact inside the library's model (see the module docstring)."""
    report = Report(f"Exercise 4 — the prior {name!r} as a plugin")
    with report.grading():
        if name not in PRIORS:
            report.fail("registered", f"no prior is registered as {name!r} (the priors are "
                        f"{', '.join(PRIORS.choices())}).{suggestion(name, PRIORS.choices())} "
                        "Register it with @PRIORS.register(...) in your module, and load the "
                        "module with pyro_vae.registry.load_plugin('my_prior').")
        if PRIORS.entry(name).plugin:
            report.ok("registered", f"by the plugin module {PRIORS.entry(name).plugin!r}, so a "
                      "recipe's plugins = [...] or --plugin finds it again")
        else:
            report.fail("registered", "the prior was registered by code run here (or by a plain "
                        "import), not by loading a plugin module: a saved run could not name the "
                        "module to import. Write it to a file and load it with "
                        "pyro_vae.registry.load_plugin('my_prior').", stop=False)

        prior = _build(report, name, DIMS)
        report.ok("factory", "builds a Prior of the configured latent_dim from (config, context)")

        distribution = _distribution(report, "shapes", prior, 5)
        batch_shape = tuple(getattr(distribution, "batch_shape", ()))
        event_shape = tuple(getattr(distribution, "event_shape", ()))
        if (batch_shape, event_shape) != ((5,), (DIMS,)):
            hint = ""
            if batch_shape == (5, DIMS) and event_shape == ():
                hint = (" The latent dimension is a batch dimension: add .to_event(1), so that "
                        "log_prob sums over it and the model scores one z per datapoint.")
            elif batch_shape == () and event_shape == (DIMS,):
                hint = " Build the distribution over batch_shape + (D,), e.g. expand it."
            report.fail("shapes", f"for batch_shape [5] and D = {DIMS} the distribution should have "
                        f"batch shape [5] and event shape [{DIMS}], but has {list(batch_shape)} "
                        f"and {list(event_shape)}.{hint}")
        report.ok("shapes", "batch shape = batch_shape, one event dimension of size D")

        points = torch.randn(5, DIMS, generator=torch.Generator().manual_seed(5))
        log_prob = distribution.log_prob(points)
        start = Normal(0.0, 1.0).log_prob(points).sum(-1)
        if torch.allclose(log_prob, start, atol=1e-4):
            report.ok("starts at N(0, I)", "a new prior scores z exactly as N(0, I) does")
        else:
            report.fail("starts at N(0, I)", "a new prior should be N(0, I), so that a model "
                        "starts where the standard VAE does: start the mean at 0 and the scale at 1 "
                        "(softplus(a) = 1 at a = log(e − 1) ≈ 0.5413).", stop=False)

        params = list(prior.parameters())
        if not params:
            report.fail("learned", "your prior has no parameters for the optimizer to train: hold "
                        "the mean and the scale's raw value in nn.Parameter attributes.")
        grads = torch.autograd.grad(log_prob.sum(), params, allow_unused=True)
        if any(g is None for g in grads):
            report.fail("learned", "some of your prior's parameters get no gradient from log p(z): "
                        "compute the distribution from them inside forward (not once in "
                        "__init__, and not from .data or a detached copy).")

        generator = torch.Generator().manual_seed(6)
        with torch.no_grad():
            for param in params:
                param.add_(0.4 * torch.randn(param.shape, generator=generator))
        moved = _distribution(report, "learned", prior, 5)
        mean, variance = _moments(report, "learned", moved)
        if torch.allclose(mean, torch.zeros_like(mean)):
            report.fail("learned", "your prior's mean does not move when its parameters do: the "
                        "mean m should be a learned parameter.")
        if torch.allclose(variance, torch.ones_like(variance)):
            report.fail("learned", "your prior's scale does not move when its parameters do: the "
                        "scale s should be learned too.")
        gaussian = Normal(mean, variance.sqrt()).log_prob(points).sum(-1)
        if not torch.allclose(moved.log_prob(points), gaussian, atol=1e-4):
            report.fail("learned", "with its parameters moved, your prior's log-density is not "
                        "that of N(mean, diag variance): is it a diagonal Gaussian?")
        report.ok("learned", "mean and scale move with the parameters, and the density stays "
                  "the Gaussian's")

        for value in (-4.0, 4.0):
            with torch.no_grad():
                for param in params:
                    param.fill_(value)
            try:
                extreme = prior(torch.Size([5]), torch.device("cpu"), torch.float32)
                _, variance = extreme.mean, extreme.variance
                valid = bool(torch.isfinite(variance).all() and (variance > 0).all()
                             and torch.isfinite(extreme.log_prob(points)).all())
            except (ValueError, AttributeError, NotImplementedError):
                valid = False  # e.g. a Normal refusing a negative scale
            if not valid:
                report.fail("scale stays positive", f"with every parameter at {value:+g} your "
                            "prior's scale is not positive (or its density is not finite): pass "
                            "the raw parameter through softplus or exp, as the library does.")
        report.ok("scale stays positive", "for parameters at −4 and +4 alike")

        _check_exact_marginal(report, name)
    return report.result()


def _check_exact_marginal(report: Report, name: str) -> None:
    """Put the student's prior (moved off N(0, I)) in the toy model, set the encoder at the exact
    posterior, and compare every importance weight with the closed-form log p(x)."""
    check = "exact inside the model"
    toy = LinearGaussian(num_points=40, seed=0)
    prior = _build(report, name, LATENT)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in prior.parameters():
            param.add_(0.4 * torch.randn(param.shape, generator=generator))
        mean, variance = _moments(report, check, _distribution(report, check, prior, 1))
        mean, variance = mean[0], variance[0]
    toy.vae.prior = prior
    weight, bias = toy.weight, toy.bias
    marginal = torch.distributions.MultivariateNormal(
        weight @ mean + bias,
        weight @ torch.diag(variance) @ weight.T + SIGMA ** 2 * torch.eye(len(bias)))
    post_cov = torch.linalg.inv(torch.diag(1 / variance) + weight.T @ weight / SIGMA ** 2)
    head = toy.vae.encoder.head
    with torch.no_grad():
        gain = post_cov @ weight.T / SIGMA ** 2
        head.loc.weight.copy_(gain)
        head.loc.bias.copy_(post_cov @ (mean / variance) - gain @ bias)
        head.raw_scale.weight.zero_()
        head.raw_scale.bias.copy_(torch.log(torch.expm1(torch.diag(post_cov).sqrt())))
        exact = marginal.log_prob(toy.x)
        torch.default_generator.manual_seed(8)
        try:
            log_w = log_importance_weights(toy.vae.model, toy.vae.guide, toy.x, 16)
        except Exception as error:  # the student's prior inside the Pyro model
            report.fail(check, f"the library's model with your prior raised "
                        f"{type(error).__name__}: {error}.")
    error = float((log_w - exact).abs().max())
    if error <= 1e-3:
        report.ok(check, "in the toy model with your prior, every importance weight p(x, z)/q(z|x) "
                  "at the exact posterior equals the closed-form p(x)")
    else:
        report.fail(check, f"in the toy model with your prior (moved to mean {mean.tolist()}, "
                    f"variance {variance.tolist()}) the library's log weights miss the "
                    f"closed-form log p(x) by up to {fmt(error)} nats: does log_prob sum over the "
                    "latent dimension (one event dimension) and broadcast over the batch?")
