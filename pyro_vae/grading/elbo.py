"""Graders of exercise 1: a diagonal Gaussian's log-density, and the Monte Carlo ELBO.

The student writes

* ``log_normal(x, loc, scale)`` = log N(x; μ, diag σ²) = Σ_d [−½ log 2π − log σ_d
  − (x_d − μ_d)² / (2σ_d²)], summed over the last dimension, and
* ``elbo_estimate(x, encoder, decoder, sigma, num_samples)``, the reparameterized estimate

      ELBO(x) ≈ (1/S) Σ_s [log p(x | z_s) + log p(z_s) − log q(z_s | x)],
      z_s = μ(x) + σ(x) ⊙ ε_s,  ε_s ~ N(0, I),

  per datapoint, for p(z) = N(0, I), p(x|z) = N(decoder(z), sigma² I) and
  q(z|x) = N(μ, diag σ²) with ``(μ, σ) = encoder(x)``.

The ELBO is checked on the linear-Gaussian model (:mod:`pyro_vae.toy`), where E_q[log p(x|z)],
KL(q ‖ p) and log p(x) are exact: at the exact posterior every draw gives log p(x); elsewhere
the average of many calls must match the exact ELBO within five standard errors, and so must
its gradient in the encoder's parameters (the reparameterization at work). A wrong answer is
compared with the values of typical mistakes (a missing constant, averaging over pixels,
a KL weight β ≠ 1, ...), each computed exactly, and the message names the one it matches.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.distributions import Normal

from pyro_vae.grading.result import (GradeResult, Report, as_tensor, call_student, check_shape,
                                     first_match, fmt)
from pyro_vae.toy import LATENT, PIXELS, SIGMA, LinearGaussian

LOG_2PI = math.log(2 * math.pi)
#: Standard errors by which a Monte Carlo answer may miss the exact one (the draws are seeded,
#: so a correct answer passes every time; five keeps 40 datapoints' worth of checks honest).
Z_LIMIT = 5.0


def check_log_normal(log_normal: Callable) -> GradeResult:
    """Grade ``log_normal(x, loc, scale)`` against ``Normal(loc, scale).log_prob(x).sum(-1)``."""
    report = Report("Exercise 1a — log N(x; μ, diag σ²)")
    with report.grading():
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(5, 3, generator=generator)
        loc = torch.randn(5, 3, generator=generator)
        scale = 0.3 + 1.5 * torch.rand(5, 3, generator=generator)
        answer = as_tensor(report, "value", call_student(report, "value", log_normal, x, loc,
                                                          scale))
        check_shape(report, answer, (5,), "one log-density per row", {
            (5, 3): "You returned one value per coordinate: the density of independent "
                    "coordinates is their product, so sum the log-densities over the last "
                    "dimension.",
            (): "You reduced over the rows too: sum over the last dimension only.",
            (3,): "You summed over the rows (dimension 0): sum over the last dimension."})
        exact = Normal(loc, scale).log_prob(x).sum(-1)
        if torch.allclose(answer, exact, atol=1e-4, rtol=1e-5):
            report.ok("value", "equals Normal(μ, σ).log_prob(x) summed over dimensions")
        else:
            report.fail("value", _log_normal_mistake(answer, x, loc, scale, exact))
        broadcast_x = torch.randn(4, 5, 3, generator=generator)
        answer = call_student(report, "broadcasting", log_normal, broadcast_x, loc, scale)
        exact = Normal(loc, scale).log_prob(broadcast_x).sum(-1)
        if isinstance(answer, torch.Tensor) and answer.shape == exact.shape \
                and torch.allclose(answer, exact, atol=1e-4, rtol=1e-5):
            report.ok("broadcasting", "x of shape [S, B, D] against μ, σ of shape [B, D] "
                      "gives [S, B], as the ELBO's samples need")
        else:
            report.fail("broadcasting", "with x of shape [4, 5, 3] (four samples of a batch) "
                        "and μ, σ of shape [5, 3] the answer should have shape [4, 5]; use "
                        "elementwise operations and .sum(-1) so that shapes broadcast.")
    return report.result()


def _log_normal_mistake(answer: torch.Tensor, x: torch.Tensor, loc: torch.Tensor,
                        scale: torch.Tensor, exact: torch.Tensor) -> str:
    dims = x.shape[-1]
    square = (x - loc).pow(2)
    per_dim = Normal(loc, scale).log_prob(x)
    candidates = [
        ("your log-density is off by the constant −D/2·log 2π: each coordinate's density "
         "has the normalizer 1/√(2π σ²), whose log is −½ log 2π − log σ.",
         exact + 0.5 * dims * LOG_2PI),
        ("your log-density is off by a constant: the normalizer is −½ log 2π per coordinate "
         "(you wrote −log 2π).", exact - 0.5 * dims * LOG_2PI),
        ("the −Σ_d log σ_d term is missing: the normalizer 1/√(2π σ²) depends on σ.",
         exact + scale.log().sum(-1)),
        ("you wrote −log σ² where the normalizer has −log σ (the log of √(σ²)).",
         exact - scale.log().sum(-1)),
        ("you averaged over the D coordinates instead of summing them.", per_dim.mean(-1)),
        ("you divided (x − μ)² by σ, not by σ²: the scale argument is the standard deviation.",
         exact + (square / (2 * scale.pow(2)) - square / (2 * scale)).sum(-1)),
        ("the ½ in front of (x − μ)²/σ² is missing.", exact - (square / (2 * scale.pow(2))).sum(-1)),
        ("the sign of the quadratic term is wrong: it is −(x − μ)²/(2σ²), so the density falls "
         "away from μ.", exact + (square / scale.pow(2)).sum(-1)),
        ("your answer is the negative of the log-density (a negative log-likelihood?).", -exact),
    ]
    found = first_match(answer, candidates, atol=1e-4)
    if found:
        return found
    worst = int((answer - exact).abs().argmax())
    return (f"for row {worst} the log-density is {fmt(float(exact[worst]))} and yours is "
            f"{fmt(float(answer[worst]))}; log N(x; μ, σ²) = Σ_d [−½ log 2π − log σ_d "
            "− (x_d − μ_d)²/(2σ_d²)].")


def _toy_off_posterior() -> LinearGaussian:
    """The toy with its encoder moved off the exact posterior (mean off by 0.7, scale ×1.6),
    so that the ELBO is well below log p(x) and both of its terms matter."""
    toy = LinearGaussian(num_points=40, seed=0)
    toy.set_encoder(loc_error=torch.tensor([0.7, -0.5]), scale_factor=1.6)
    return toy


def _repeat(report: Report, name: str, function: Callable, toy: LinearGaussian,
            num_samples: int, repeats: int, grad: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Mean and standard error over ``repeats`` seeded calls of the student's per-datapoint
    estimate, and the gradients of its sum in the encoder's head (when ``grad``)."""
    values, grads = [], []
    params = list(toy.vae.encoder.head.parameters())
    for repeat in range(repeats):
        torch.default_generator.manual_seed(1000 + repeat)
        with torch.set_grad_enabled(grad):
            answer = as_tensor(report, name, call_student(
                report, name, function, toy.x, toy.vae.encoder, toy.vae.decoder, SIGMA,
                num_samples))
        if grad:
            if not answer.requires_grad:
                report.fail(name, "your ELBO carries no gradient to the encoder's parameters "
                            "(it was computed under torch.no_grad(), detached, or through "
                            "numpy): keep every step in torch so that training can "
                            "differentiate it.")
            found = torch.autograd.grad(answer.sum(), params, allow_unused=True)
            grads.append(torch.cat([torch.zeros_like(p).flatten() if g is None else g.flatten()
                                    for p, g in zip(params, found)]))
        values.append(answer.detach())
    stacked = torch.stack(values)
    stderr = stacked.std(0) / math.sqrt(repeats) if repeats > 1 else torch.zeros_like(values[0])
    return stacked.mean(0), stderr, grads


def check_elbo(elbo_estimate: Callable) -> GradeResult:
    """Grade ``elbo_estimate(x, encoder, decoder, sigma, num_samples)`` on the linear-Gaussian
    model: shape, exactness at the exact posterior, value and encoder gradient elsewhere."""
    report = Report("Exercise 1b — the Monte Carlo ELBO with the reparameterization trick")
    with report.grading():
        toy = LinearGaussian(num_points=40, seed=0)
        toy.set_encoder()
        torch.default_generator.manual_seed(0)
        with torch.no_grad():
            answer = as_tensor(report, "shape", call_student(
                report, "shape", elbo_estimate, toy.x, toy.vae.encoder, toy.vae.decoder,
                SIGMA, 8))
        batch = len(toy.x)
        check_shape(report, answer, (batch,), "one ELBO per datapoint", {
            (): "You reduced over the batch: the ELBO is a bound on each log p(x_n), so return "
                "one value per datapoint and average over the samples only.",
            (8, batch): "You returned one value per sample: average over the num_samples "
                        "samples (dimension 0).",
            (batch, LATENT): "You returned one value per latent dimension: sum log p(z) and "
                             "log q(z|x) over the latent dimension.",
            (8, batch, PIXELS): "Sum log p(x|z) over the pixels and average over the samples."})

        # At the exact posterior, log p(x, z) − log q(z|x) = log p(x) for every z.
        mean, stderr, _ = _repeat(report, "exact posterior", elbo_estimate, toy, 64, 16)
        _compare_elbo(report, "at the exact posterior q = p(z|x)", mean, stderr, toy,
                      toy.log_px, stop=True)

        toy = _toy_off_posterior()
        mean, stderr, grads = _repeat(report, "value", elbo_estimate, toy, 100, 20, grad=True)
        with torch.no_grad():
            exact = toy.exact_elbo(toy.x)
        _compare_elbo(report, "off the posterior", mean, stderr, toy, exact, stop=True)
        _check_gradient(report, toy, grads)
    return report.result()


def _compare_elbo(report: Report, where: str, mean: torch.Tensor, stderr: torch.Tensor,
                  toy: LinearGaussian, exact: torch.Tensor, stop: bool) -> None:
    name = f"value {where}"
    tolerance = Z_LIMIT * stderr + 1e-3
    if bool(((mean - exact).abs() <= tolerance).all()):
        report.ok(name, f"matches the exact value (mean {fmt(float(exact.mean()))} nats) within "
                  "Monte Carlo error")
        return
    report.fail(name, _elbo_mistake(mean, tolerance, toy, exact), stop=stop)


def _elbo_mistake(mean: torch.Tensor, tolerance: torch.Tensor, toy: LinearGaussian,
                  exact: torch.Tensor) -> str:
    """Which typical mistake the averaged answer equals, in words."""
    with torch.no_grad():
        recon, kl = toy.exact_elbo_terms(toy.x)
        loc, scale = toy.vae.encoder(toy.x)
        layer = toy.vae.decoder.net[0]
        expected_sq = (toy.x - layer(loc)).pow(2).sum(-1) + (
            scale.pow(2) * layer.weight.pow(2).sum(0)).sum(-1)
        at_mean = Normal(layer(loc), SIGMA).log_prob(toy.x).sum(-1)
        mc_kl_at_mean = (Normal(loc, scale).log_prob(loc) - Normal(0.0, 1.0).log_prob(loc)).sum(-1)
        variance_as_scale = (-0.5 * expected_sq / SIGMA ** 4 - PIXELS * math.log(SIGMA ** 2)
                             - 0.5 * PIXELS * LOG_2PI)
    constant = 0.5 * PIXELS * LOG_2PI
    log_sigma = PIXELS * math.log(SIGMA)
    candidates = [
        ("your ELBO is the negative of the exact one: you returned the loss −ELBO. Return the "
         "ELBO itself (training minimizes its negative).", -exact),
        (f"your ELBO is off by the constant +P/2·log 2π = {fmt(constant)} nats (P = {PIXELS} "
         "pixels): log p(x|z) lost the −½ log 2π of each pixel's Gaussian normalizer.",
         exact + constant),
        (f"your ELBO is off by P·log σ = {fmt(log_sigma)} nats: log p(x|z) lost the −log σ of "
         "each pixel's normalizer.", exact + log_sigma),
        ("your ELBO lost log p(x|z)'s whole normalizer, −P/2·log(2πσ²): write the Gaussian "
         "log-density in full.", exact + constant + log_sigma),
        ("your ELBO adds the KL instead of subtracting it: ELBO = E_q[log p(x|z)] − KL(q ‖ p), "
         "i.e. + log p(z) − log q(z|x).", recon + kl),
        ("your ELBO averages log p(x|z) over the pixels instead of summing them: the pixels are "
         "independent given z, so their log-densities add.", recon / PIXELS - kl),
        (f"your KL term (log q(z|x) − log p(z)) is weighted 1/{LATENT}: you averaged it over "
         f"the D = {LATENT} latent dimensions instead of summing them (or scaled it by "
         f"β = 1/{LATENT}; the ELBO has β = 1).", recon - kl / LATENT),
        ("your ELBO leaves out the KL term (log p(z) − log q(z|x)): that is only the expected "
         "reconstruction term.", recon),
        ("your ELBO does not vary from draw to draw and equals log p(x | z = μ) − KL: you used "
         "z = μ(x) without noise; draw z = μ + σ ⊙ ε with ε ~ N(0, I).", at_mean - kl),
        ("your ELBO equals log p(x | z = μ) + log p(μ) − log q(μ|x): you used z = μ(x) without "
         "noise; draw z = μ + σ ⊙ ε with ε ~ N(0, I).", at_mean - mc_kl_at_mean),
        ("your likelihood uses σ² as the scale of p(x|z): Normal(mean, sigma) takes the "
         "standard deviation.", variance_as_scale - kl),
    ]
    found = first_match(mean, candidates, tolerance)
    if found:
        return found
    fitted = _fit_terms(mean, tolerance, recon, kl)
    if fitted is not None:
        return fitted
    worst = int(((mean - exact).abs() / tolerance).argmax())
    return (f"for datapoint {worst} the exact ELBO is {fmt(float(exact[worst]))} and "
            f"yours averages {fmt(float(mean[worst]))} (± {fmt(float(tolerance[worst]))}). Check "
            "each of log p(x|z) (summed over pixels), log p(z) and log q(z|x) (summed over latent "
            "dimensions), and the draw z = μ + σ ⊙ ε.")


def _fit_terms(mean: torch.Tensor, tolerance: torch.Tensor, recon: torch.Tensor,
               kl: torch.Tensor) -> str | None:
    """Fit ``mean ≈ a·recon − β·KL + c`` across datapoints; describe a fit that holds within
    ``tolerance`` in words."""
    design = torch.stack([recon, -kl, torch.ones_like(kl)], -1).double()
    solution = torch.linalg.lstsq(design, mean.double().unsqueeze(-1)).solution.squeeze(-1)
    residual = (design @ solution - mean.double()).abs()
    if bool((residual > tolerance.double()).any()):
        return None
    a, beta, c = (float(v) for v in solution)
    parts = []
    if abs(a - 1) > 0.05:
        parts.append(f"its reconstruction term is weighted {a:.2g}, not 1")
    if abs(beta - 1) > 0.05:
        parts.append(f"its KL term is weighted β ≈ {beta:.2g}, not 1 (it would match the "
                     f"exact ELBO of a β-VAE with β = {beta:.2g}; this model's ELBO has β = 1)")
    if abs(c) > 0.05:
        parts.append(f"it is off by the constant {c:+.3g} nats")
    if not parts:
        return None
    return ("your ELBO equals a·E_q[log p(x|z)] − β·KL + c across the datapoints, and "
            + "; ".join(parts) + ".")


def _check_gradient(report: Report, toy: LinearGaussian, grads: list[torch.Tensor]) -> None:
    """The mean gradient of the student's ELBO in the encoder's head equals the exact one."""
    params = list(toy.vae.encoder.head.parameters())
    exact = torch.autograd.grad(toy.exact_elbo(toy.x).sum(), params)
    exact = torch.cat([g.flatten() for g in exact])
    stacked = torch.stack(grads)
    mean, stderr = stacked.mean(0), stacked.std(0) / math.sqrt(len(grads))
    tolerance = Z_LIMIT * stderr + 1e-3 * (1 + exact.abs())
    name = "gradient in the encoder"
    if bool(((mean - exact).abs() <= tolerance).all()):
        report.ok(name, "the average gradient in μ's and σ's weights matches the exact ELBO's "
                  "gradient: the reparameterization z = μ + σ ⊙ ε carries it")
        return
    loc_part = slice(0, LATENT * PIXELS + LATENT)
    if bool((mean[loc_part].abs() <= tolerance[loc_part]).all()):
        report.fail(name, "the values are right but no gradient reaches the encoder's mean "
                    "through z: you drew z with .sample() (or detached it). Use the "
                    "reparameterization z = μ + σ ⊙ ε (or .rsample()) so that ∇_φ flows through "
                    "the sample.", stop=False)
        return
    worst = int(((mean - exact).abs() / tolerance).argmax())
    report.fail(name, f"the average gradient differs from the exact ELBO's (component {worst}: "
                f"{fmt(float(mean[worst]))} against {fmt(float(exact[worst]))}): draw z as "
                "μ + σ ⊙ ε with fresh ε ~ N(0, I) for every sample and datapoint, and use that "
                "same z in log p(x|z), log p(z) and log q(z|x).", stop=False)
