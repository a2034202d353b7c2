"""Graders of exercise 2: the closed-form KL divergence between diagonal Gaussians.

The student writes, with log-variances s = log σ² (what an encoder head often outputs),

* ``gaussian_kl(mu, logvar)`` = KL(N(μ, diag e^s) ‖ N(0, I)) = ½ Σ_d (μ_d² + e^{s_d} − 1 − s_d),
* ``kl_between_gaussians(mu_q, logvar_q, mu_p, logvar_p)`` = KL(q ‖ p)
  = ½ Σ_d [s_p − s_q + (e^{s_q} + (μ_q − μ_p)²) / e^{s_p} − 1],

each summed over the last dimension (one KL per datapoint). The exact answer is
``torch.distributions.kl_divergence``; a wrong answer is compared with the values of the
typical mistakes (the log-variance's sign, log σ taken for log σ², the ½, the −1, averaging
over dimensions, the arguments swapped, ...) and the message names the one it matches, quoting
a case in words (e.g. q = N(1, 0.5²)).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae.grading.result import (GradeResult, Report, as_tensor, call_student, check_shape,
                                     first_match, fmt)

ATOL = 1e-4
DIMS = 3
SHAPE_HINTS = {
    (6, DIMS): "You returned one KL per latent dimension: sum over the last dimension (the "
               "KL between product densities is the sum of the per-dimension KLs).",
    (): "You reduced over the batch: return one KL per datapoint (row).",
}


def _standard_cases() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (μ, log σ²): q = p; q = N(1, 0.5²) in every dimension; four random rows."""
    generator = torch.Generator().manual_seed(2)
    mu = torch.cat([torch.zeros(1, DIMS), torch.ones(1, DIMS), torch.randn(4, DIMS,
                                                                          generator=generator)])
    logvar = torch.cat([torch.zeros(1, DIMS), torch.full((1, DIMS), 2 * torch.log(
        torch.tensor(0.5)).item()), 1.2 * torch.randn(4, DIMS, generator=generator)])
    return mu, logvar


def _exact(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
           logvar_p: torch.Tensor) -> torch.Tensor:
    q = Normal(mu_q, (0.5 * logvar_q).exp())
    p = Normal(mu_p, (0.5 * logvar_p).exp())
    return kl_divergence(q, p).sum(-1)


def _describe_row(mu: torch.Tensor, logvar: torch.Tensor) -> str:
    """``N(1, 0.5²)`` for a row whose dimensions agree, else ``row (μ = [...], log σ² = [...])``."""
    if bool((mu == mu[0]).all() and (logvar == logvar[0]).all()):
        return f"q = N({fmt(float(mu[0]))}, {fmt(float((0.5 * logvar[0]).exp()))}²) in every dimension"
    return (f"μ = {[round(v, 3) for v in mu.tolist()]}, log σ² = "
            f"{[round(v, 3) for v in logvar.tolist()]}")


def check_gaussian_kl(gaussian_kl: Callable) -> GradeResult:
    """Grade ``gaussian_kl(mu, logvar)`` = KL(N(μ, diag exp(logvar)) ‖ N(0, I)) per row."""
    report = Report("Exercise 2a — KL(N(μ, σ²) ‖ N(0, I)) in closed form")
    with report.grading():
        mu, logvar = _standard_cases()
        answer = as_tensor(report, "value", call_student(report, "value", gaussian_kl, mu,
                                                          logvar))
        check_shape(report, answer, (len(mu),), "one KL per datapoint", SHAPE_HINTS)
        exact = _exact(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar))
        if abs(float(answer[0])) <= ATOL:
            report.ok("KL(p ‖ p) = 0", "zero where q = p = N(0, I)")
        else:
            report.fail("KL(p ‖ p) = 0", f"your KL is {fmt(float(answer[0]))} for q = N(0, I) = p, "
                        "where it must be 0: " + (_kl_mistake(answer, mu, logvar, exact) or
                                                  "check the constant −1 inside the sum."),
                        stop=False)
        if torch.allclose(answer, exact, atol=ATOL, rtol=1e-5):
            report.ok("value", "equals torch.distributions.kl_divergence on every row")
            return report.result()
        found = _kl_mistake(answer, mu, logvar, exact)
        row = int((answer - exact).abs().argmax())
        negative = [i for i in range(len(answer)) if float(answer[i]) < -ATOL]
        if negative:
            row = negative[0]
            lead = (f"your KL is {fmt(float(answer[row]))} for {_describe_row(mu[row], logvar[row])}, "
                    "and a KL is never negative")
        else:
            lead = (f"your KL is {fmt(float(answer[row]))} for {_describe_row(mu[row], logvar[row])}"
                    f", where it is {fmt(float(exact[row]))}")
        report.fail("value", f"{lead}: {found or 'KL = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²).'}")
    return report.result()


def _kl_mistake(answer: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                exact: torch.Tensor) -> str | None:
    var = logvar.exp()
    candidates = [
        ("did you swap the sign of the log-variance? KL = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²), "
         "with −log σ².", 0.5 * (mu.pow(2) + var - 1 + logvar).sum(-1)),
        ("you wrote the negative of the KL: −½ Σ (1 + log σ² − μ² − σ²) has a minus in front "
         "(the ELBO subtracts the KL; the KL itself is ≥ 0).", -exact),
        ("you treated logvar as log σ: it is log σ², so σ² = exp(logvar), not exp(2·logvar).",
         0.5 * (mu.pow(2) + (2 * logvar).exp() - 1 - 2 * logvar).sum(-1)),
        ("you took exp(logvar / 2) = σ where σ² = exp(logvar) belongs.",
         0.5 * (mu.pow(2) + (0.5 * logvar).exp() - 1 - logvar).sum(-1)),
        ("you wrote exp(−logvar) = 1/σ² where σ² = exp(logvar) belongs.",
         0.5 * (mu.pow(2) + (-logvar).exp() - 1 - logvar).sum(-1)),
        ("the ½ in front of the sum is missing.", 2 * exact),
        (f"the −1 inside the sum is missing (your KL is D/2 = {DIMS / 2} too large everywhere).",
         exact + 0.5 * DIMS),
        ("you averaged over the latent dimensions instead of summing them.", exact / DIMS),
        ("the mean enters squared: μ², not μ.", 0.5 * (mu + var - 1 - logvar).sum(-1)),
        ("the μ² term is missing: the KL must grow as the mean moves away from 0.",
         0.5 * (var - 1 - logvar).sum(-1)),
    ]
    return first_match(answer, candidates, ATOL)


def check_kl_between_gaussians(kl_between_gaussians: Callable) -> GradeResult:
    """Grade ``kl_between_gaussians(mu_q, logvar_q, mu_p, logvar_p)`` = KL(q ‖ p) per row."""
    report = Report("Exercise 2b — KL(q ‖ p) between two diagonal Gaussians")
    with report.grading():
        mu_q, logvar_q = _standard_cases()
        generator = torch.Generator().manual_seed(3)
        mu_p = 0.8 * torch.randn(mu_q.shape, generator=generator)
        logvar_p = 0.8 * torch.randn(mu_q.shape, generator=generator)
        answer = as_tensor(report, "value", call_student(
            report, "value", kl_between_gaussians, mu_q, logvar_q, mu_p, logvar_p))
        check_shape(report, answer, (len(mu_q),), "one KL per datapoint", SHAPE_HINTS)
        exact = _exact(mu_q, logvar_q, mu_p, logvar_p)
        same = call_student(report, "KL(p ‖ p) = 0", kl_between_gaussians, mu_p, logvar_p, mu_p,
                            logvar_p)
        if isinstance(same, torch.Tensor) and bool((same.abs() <= ATOL).all()):
            report.ok("KL(p ‖ p) = 0", "zero when q and p are the same Gaussian")
        else:
            report.fail("KL(p ‖ p) = 0", "your KL is not 0 when q = p: check the −1 and the "
                        "log-ratio log σ_p² − log σ_q².", stop=False)
        if torch.allclose(answer, exact, atol=ATOL, rtol=1e-5):
            report.ok("value", "equals torch.distributions.kl_divergence on every row")
            return report.result()
        var_q, var_p = logvar_q.exp(), logvar_p.exp()
        square = (mu_q - mu_p).pow(2)
        candidates = [
            ("you computed KL(p ‖ q): the KL is not symmetric. KL(q ‖ p) = E_q[log q − log p] "
             "divides by p's variance.", _exact(mu_p, logvar_p, mu_q, logvar_q)),
            ("your log-ratio has the wrong sign: it is log σ_p² − log σ_q² (= log(σ_p²/σ_q²)).",
             0.5 * (logvar_q - logvar_p + (var_q + square) / var_p - 1).sum(-1)),
            ("(μ_q − μ_p)² must be divided by σ_p² as well.",
             0.5 * (logvar_p - logvar_q + var_q / var_p + square - 1).sum(-1)),
            ("σ_q² must be divided by σ_p².",
             0.5 * (logvar_p - logvar_q + var_q + square / var_p - 1).sum(-1)),
            ("your answer ignores p: it is KL(q ‖ N(0, I)), whatever μ_p and σ_p are.",
             _exact(mu_q, logvar_q, torch.zeros_like(mu_q), torch.zeros_like(logvar_q))),
            ("you wrote the negative of the KL.", -exact),
            ("the ½ in front of the sum is missing.", 2 * exact),
            ("you averaged over the latent dimensions instead of summing them.", exact / DIMS),
        ]
        found = first_match(answer, candidates, ATOL)
        row = int((answer - exact).abs().argmax())
        report.fail("value", f"for row {row} KL(q ‖ p) is {fmt(float(exact[row]))} and yours is "
                    f"{fmt(float(answer[row]))}: " + (found or "KL(q ‖ p) = ½ Σ_d [log σ_p² − "
                                                       "log σ_q² + (σ_q² + (μ_q − μ_p)²)/σ_p² − 1]."))
    return report.result()
