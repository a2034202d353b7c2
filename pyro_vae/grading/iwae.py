"""Graders of exercise 3: the importance-weighted bound (IWAE).

The student writes

* ``log_mean_exp(values, dim)`` = log (1/K) Σ_k exp(values_k) along ``dim``, stable for any
  values (m + log (1/K) Σ_k exp(values_k − m), m the maximum), and
* ``iwae_bound(x, encoder, decoder, sigma, num_particles)``, the estimate of

      L_K(x) = E[log (1/K) Σ_k w_k],  w_k = p(x, z_k) / q(z_k | x),  z_k ~ q(z|x),

  per datapoint (Burda, Grosse & Salakhutdinov 2016).

Checked on the linear-Gaussian model (:mod:`pyro_vae.toy`) against the exact limits: at the
exact posterior every weight is p(x), so L_K = log p(x) for every K; elsewhere L_1 is the exact
ELBO, L_K rises with K and stays below log p(x), to which it tends (Burda et al., Theorem 1).
The typical mistakes are named: the mean of the log weights in place of the log of their mean
(which stays at the ELBO for every K), log Σ w without the 1/K (which passes log p(x) by log K),
and exp overflowing or underflowing without the maximum taken out.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pyro_vae.grading.result import (GradeResult, Report, as_tensor, call_student, check_shape,
                                     first_match, fmt)
from pyro_vae.toy import SIGMA, LinearGaussian

Z_LIMIT = 5.0
#: The numbers of particles at which the bound's rise is checked.
PARTICLES = (1, 4, 16, 64, 256)
REPEATS = 12


def check_log_mean_exp(log_mean_exp: Callable) -> GradeResult:
    """Grade ``log_mean_exp(values, dim)`` against ``logsumexp(values, dim) − log K``."""
    report = Report("Exercise 3a — a stable log-mean-exp")
    with report.grading():
        generator = torch.Generator().manual_seed(4)
        values = 3 * torch.randn(5, 4, generator=generator)
        answer = as_tensor(report, "value", call_student(report, "value", log_mean_exp, values,
                                                          0))
        check_shape(report, answer, (4,), "one value per column for dim=0", {
            (5,): "You reduced over dimension 1: reduce over the dimension `dim` given.",
            (): "You reduced over every dimension: reduce over `dim` only."})
        exact = torch.logsumexp(values, 0) - math.log(len(values))
        candidates = [
            ("you averaged the log weights (mean of log): that is the ELBO's estimate, and by "
             "Jensen's inequality it is below the log of the mean. Take the log of the mean of "
             "exp(values).", values.mean(0)),
            (f"your answer is off by log K = {fmt(math.log(5))}: you computed log Σ_k exp(v_k), "
             "not log (1/K) Σ_k exp(v_k); subtract log K.", torch.logsumexp(values, 0)),
            (f"you added log K = {fmt(math.log(5))} where it is subtracted: log (1/K) Σ w = "
             "log Σ w − log K.", torch.logsumexp(values, 0) + math.log(5)),
            ("your answer is the maximum only: after taking out m = max, add log (1/K) Σ_k "
             "exp(v_k − m).", values.max(0).values),
        ]
        if torch.allclose(answer, exact, atol=1e-4, rtol=1e-5):
            report.ok("value", "equals log (1/K) Σ_k exp(v_k)")
        else:
            report.fail("value", first_match(answer, candidates, 1e-4) or
                        f"for column 0 the answer is {fmt(float(exact[0]))} and yours is "
                        f"{fmt(float(answer[0]))}: log (1/K) Σ_k exp(v_k) = m + log (1/K) Σ_k "
                        "exp(v_k − m) with m = max_k v_k.")
        answer = call_student(report, "dim", log_mean_exp, values.T, 1)
        if isinstance(answer, torch.Tensor) and answer.shape == exact.shape \
                and torch.allclose(answer, exact, atol=1e-4, rtol=1e-5):
            report.ok("dim", "reduces along the dimension asked for (dim=1 too)")
        else:
            report.fail("dim", "with dim=1 on the transposed values the answer differs: reduce "
                        "along `dim` (and count K as values.shape[dim]).")
        for offset in (-1000.0, 1000.0):
            shifted = values + offset
            answer = call_student(report, "stability", log_mean_exp, shifted, 0)
            if not (isinstance(answer, torch.Tensor) and torch.isfinite(answer).all()):
                report.fail("stability", f"for log weights near {offset:+.0f} your answer is not "
                            f"finite: exp({offset:+.0f}) {'underflows to 0' if offset < 0 else 'overflows to inf'}"
                            " in floating point. Take out the maximum m first: m + log (1/K) Σ_k "
                            "exp(v_k − m) (or use torch.logsumexp).")
            if not torch.allclose(answer, exact + offset, atol=1e-3, rtol=1e-6):
                report.fail("stability", f"for log weights near {offset:+.0f} your answer is "
                            f"{fmt(float(answer[0]))}, where it is {fmt(float(exact[0] + offset))}.")
        report.ok("stability", "finite and right for log weights near −1000 and +1000, where "
                  "exp itself underflows or overflows")
    return report.result()


def _bound(report: Report, name: str, iwae_bound: Callable, toy: LinearGaussian, particles: int,
           repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint mean over seeded calls, and the standard error of the mean over datapoints."""
    values = []
    for repeat in range(repeats):
        torch.default_generator.manual_seed(2000 + 7 * particles + repeat)
        with torch.no_grad():
            answer = as_tensor(report, name, call_student(
                report, name, iwae_bound, toy.x, toy.vae.encoder, toy.vae.decoder, SIGMA,
                particles))
        if answer.shape != toy.x.shape[:1]:
            report.fail(name, f"with num_particles = {particles} your bound has shape "
                        f"{list(answer.shape)}; it should have one value per datapoint.")
        values.append(answer)
    stacked = torch.stack(values)
    overall = stacked.mean(1)  # each call's mean over datapoints
    stderr = overall.std() / math.sqrt(repeats) if repeats > 1 else torch.tensor(0.0)
    return stacked.mean(0), stderr


def check_iwae_bound(iwae_bound: Callable) -> GradeResult:
    """Grade ``iwae_bound(x, encoder, decoder, sigma, num_particles)`` on the linear-Gaussian
    model: its exact limits (log p(x) at the posterior, the ELBO at K = 1) and its rise in K."""
    report = Report("Exercise 3b — the IWAE bound L_K")
    with report.grading():
        toy = LinearGaussian(num_points=40, seed=0)
        toy.set_encoder()
        batch = len(toy.x)
        torch.default_generator.manual_seed(0)
        with torch.no_grad():
            answer = as_tensor(report, "shape", call_student(
                report, "shape", iwae_bound, toy.x, toy.vae.encoder, toy.vae.decoder, SIGMA, 8))
        check_shape(report, answer, (batch,), "one bound per datapoint", {
            (8,): "You took the mean over the batch dimension: the K particles are dimension 0 "
                  "of the log weights [K, B]; reduce over them, one bound per datapoint.",
            (): "You reduced over the batch: return one bound per datapoint.",
            (8, batch): "Reduce over the K particles (dimension 0) with log-mean-exp."})

        name = "exact posterior"
        for particles in (1, 16):
            mean, _ = _bound(report, name, iwae_bound, toy, particles, 1)
            if not torch.allclose(mean, toy.log_px, atol=1e-3):
                offset = float((mean - toy.log_px).mean())
                hint = (f"it is log p(x) + {fmt(offset)} ≈ log p(x) + log K: you left out the "
                        "1/K (subtract log K)." if abs(offset - math.log(particles)) < 1e-2
                        and particles > 1 else "check the log weights log p(x, z) − log q(z|x).")
                report.fail(name, f"at the exact posterior every weight is p(x), so L_{particles} "
                            f"= log p(x) exactly, but yours differs by {fmt(offset)} nats on "
                            f"average: {hint}")
        report.ok(name, "L_K = log p(x) for K = 1 and 16 when q is the exact posterior")

        toy.set_encoder(loc_error=torch.tensor([0.7, -0.5]), scale_factor=1.6)
        with torch.no_grad():
            elbo = toy.exact_elbo(toy.x).mean()
        log_px = toy.log_px.mean()
        bounds = {k: _bound(report, "rise with K", iwae_bound, toy, k, REPEATS)
                  for k in PARTICLES}
        means = {k: float(bounds[k][0].mean()) for k in PARTICLES}
        errors = {k: float(bounds[k][1]) for k in PARTICLES}
        table = ", ".join(f"L_{k} = {means[k]:.3f}" for k in PARTICLES)
        known = f"(ELBO {float(elbo):.3f}, log p(x) {float(log_px):.3f}; yours: {table})"
        if abs(means[1] - float(elbo)) <= Z_LIMIT * errors[1] + 1e-3:
            report.ok("L_1 = ELBO", f"with one particle the bound is the ELBO, {float(elbo):.3f}")
        else:
            report.fail("L_1 = ELBO", f"with one particle the IWAE bound is the ELBO, but yours "
                        f"averages {means[1]:.3f} against {float(elbo):.3f} nats.", stop=False)
        top = PARTICLES[-1]
        if means[top] - float(log_px) > Z_LIMIT * errors[top] + 1e-3:
            excess = means[top] - float(log_px)
            hint = ("close to log K: you left out the 1/K in log (1/K) Σ w"
                    if abs(excess - math.log(top)) < 0.5 else "a lower bound cannot pass it")
            report.fail("below log p(x)", f"L_{top} exceeds log p(x) by {excess:.3f} nats, "
                        f"{hint} {known}.", stop=False)
        else:
            report.ok("below log p(x)", "L_K stays below log p(x) for every K")
        gap = float(log_px - elbo)
        falls = [(a, b) for a, b in zip(PARTICLES, PARTICLES[1:])
                 if means[b] < means[a] - Z_LIMIT * math.hypot(errors[a], errors[b])]
        if means[top] - means[1] < 0.25 * gap:
            flat = abs(means[top] - float(elbo)) <= Z_LIMIT * errors[top] + 1e-2
            report.fail("rises with K", "your bound does not rise towards log p(x) as K grows"
                        + (": it stays at the ELBO, as the mean of the log weights does. Take "
                           "the log of the mean of the weights, log (1/K) Σ_k w_k, not the mean "
                           "of their logs" if flat else "") + f" {known}.", stop=False)
        elif falls:
            a, b = falls[0]
            report.fail("rises with K", f"your bound falls from K = {a} to K = {b} "
                        f"({means[a]:.3f} to {means[b]:.3f}); L_K never decreases in K {known}.",
                        stop=False)
        else:
            report.ok("rises with K", f"{table}: from the ELBO ({float(elbo):.3f}) towards log "
                      f"p(x) ({float(log_px):.3f})")
    return report.result()
