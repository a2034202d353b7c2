"""Graders of exercise 5: the score-function (REINFORCE) gradient of the ELBO.

With z ~ q_φ(z|x) drawn without reparameterization, the score-function identity
∇_φ E_q[f(z)] = E_q[f(z) ∇_φ log q_φ(z|x)] (for f free of φ), applied to the ELBO, whose
integrand log w = log p_θ(x, z) − log q_φ(z|x) also depends on φ, gives

    ∇ ELBO = E_q[ ∇ log w(z) + log w(z) ∇_φ log q_φ(z|x) ] = E_q[ ∇_θ log p_θ(x, z)
             + (log w(z) − b) ∇_φ log q_φ(z|x) ]

(E_q[∇_φ log q] = 0, so a baseline b that does not depend on z changes nothing in expectation).
The student writes a *surrogate* whose autograd gradient is that estimate,

    surrogate = log w + stop(log w − b) · log q(z|x),   z = stop(z),

averaged over ``num_samples`` draws, per datapoint: ``score_function_surrogate`` without a
baseline and ``score_function_surrogate_with_baseline`` with the leave-one-out baseline
b_k = mean of the other draws' log w for the same datapoint (Williams 1992; Mnih & Rezende 2016).

Checked on the linear-Gaussian model (:mod:`pyro_vae.toy`), whose ELBO gradient in every encoder
and decoder parameter is exact: the average of many seeded gradients must match it within five
standard errors. A miss is compared with the expectations of typical mistakes, each known in
closed form: the stop-gradient left out (which adds ∇_φ H[q], the entropy's gradient), the sign,
no score term at all (no gradient reaches the encoder on average), and a baseline that includes
the draw's own log w (which shrinks the gradient by (K − 1)/K).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.distributions import Normal

from pyro_vae.grading.result import (GradeResult, Report, as_tensor, call_student, check_shape,
                                     fmt)
from pyro_vae.toy import SIGMA, LinearGaussian

Z_LIMIT = 5.0


def _toy() -> LinearGaussian:
    """The toy with its encoder off the posterior (so the gradient is far from 0), on 10 points
    (the score-function estimate is noisy; fewer points keep its error small)."""
    toy = LinearGaussian(num_points=10, seed=0)
    toy.set_encoder(loc_error=torch.tensor([0.7, -0.5]), scale_factor=1.6)
    return toy


def _parameters(toy: LinearGaussian) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    return list(toy.vae.encoder.head.parameters()), list(toy.vae.decoder.parameters())


def _flat(grads: tuple[torch.Tensor | None, ...], params: list[torch.nn.Parameter]
          ) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel()) if g is None else g.flatten()
                      for p, g in zip(params, grads)])


def reference_surrogate(x: torch.Tensor, encoder: Callable, decoder: Callable, sigma: float,
                        num_samples: int, baseline: bool = False) -> torch.Tensor:
    """The surrogate log w + stop(log w − b)·log q per datapoint, mean over the draws (b = 0, or
    the leave-one-out mean with ``baseline``): the grader's yardstick for the variance."""
    loc, scale = encoder(x)
    q = Normal(loc, scale)
    z = q.sample((num_samples,))
    log_q = q.log_prob(z).sum(-1)
    log_w = (Normal(decoder(z), sigma).log_prob(x).sum(-1)
             + Normal(0.0, 1.0).log_prob(z).sum(-1) - log_q)
    b = (log_w.sum(0, keepdim=True) - log_w) / (num_samples - 1) if baseline else 0.0
    return (log_w + (log_w - b).detach() * log_q).mean(0)


def _gradients(report: Report, name: str, surrogate: Callable, toy: LinearGaussian,
               num_samples: int, repeats: int) -> torch.Tensor:
    """``[repeats, encoder + decoder parameters]``: the gradient of each seeded call's sum."""
    encoder_params, decoder_params = _parameters(toy)
    rows = []
    for repeat in range(repeats):
        torch.default_generator.manual_seed(3000 + repeat)
        value = as_tensor(report, name, call_student(report, name, surrogate, toy.x,
                                                     toy.vae.encoder, toy.vae.decoder, SIGMA,
                                                     num_samples))
        if value.shape != toy.x.shape[:1]:
            report.fail(name, f"your surrogate has shape {list(value.shape)}; return one value "
                        f"per datapoint, shape [{len(toy.x)}] (average over the samples only).")
        if not value.requires_grad:
            report.fail(name, "your surrogate carries no gradient (computed under no_grad, "
                        "detached, or through numpy): the surrogate exists to be differentiated.")
        grads = torch.autograd.grad(value.sum(), encoder_params + decoder_params,
                                    allow_unused=True)
        if repeat == 0 and all(g is None for g in grads[len(encoder_params):]):
            report.fail(name, "no gradient reaches the decoder: add log w itself to the surrogate "
                        "(its gradient in θ is ∇_θ log p(x, z)); stop(log w)·log q only "
                        "trains the encoder.")
        if repeat == 0 and all(g is None for g in grads[:len(encoder_params)]):
            report.fail(name, "no gradient reaches the encoder: the score term stop(log w)·log "
                        "q(z|x) is missing, or log q was computed from detached μ and σ.")
        rows.append(torch.cat([_flat(grads[:len(encoder_params)], encoder_params),
                               _flat(grads[len(encoder_params):], decoder_params)]))
    return torch.stack(rows)


def _exact_gradients(toy: LinearGaussian) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact ELBO's gradient, and the entropy H[q]'s gradient (zero for the decoder)."""
    encoder_params, decoder_params = _parameters(toy)
    exact = torch.autograd.grad(toy.exact_elbo(toy.x).sum(), encoder_params + decoder_params)
    loc, scale = toy.vae.encoder(toy.x)
    entropy = torch.autograd.grad(Normal(loc, scale).entropy().sum(), encoder_params,
                                  allow_unused=True)  # H[q] does not depend on μ
    decoder_zeros = torch.zeros(sum(p.numel() for p in decoder_params))
    return (torch.cat([g.flatten() for g in exact]),
            torch.cat([_flat(entropy, encoder_params), decoder_zeros]))


def _consistent(mean: torch.Tensor, stderr: torch.Tensor, target: torch.Tensor) -> bool:
    return bool(((mean - target).abs() <= Z_LIMIT * stderr + 1e-3 * (1 + target.abs())).all())


def _unbiased(report: Report, name: str, surrogate: Callable, toy: LinearGaussian,
              num_samples: int, repeats: int, baseline: bool) -> torch.Tensor:
    """Check the mean gradient against the exact one; name the mistake it matches instead."""
    grads = _gradients(report, name, surrogate, toy, num_samples, repeats)
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(repeats)
    exact, entropy = _exact_gradients(toy)
    if _consistent(mean, stderr, exact):
        report.ok(name, f"the average of {repeats} gradients ({num_samples} draws each) matches "
                  "the exact ELBO gradient in every encoder and decoder weight")
        return grads
    encoder = torch.zeros_like(exact, dtype=torch.bool)
    encoder[: sum(p.numel() for p in _parameters(toy)[0])] = True
    shrink = (num_samples - 1) / num_samples
    # (message, expected gradient, compared on the encoder's weights only?): the score term's
    # mistakes leave the decoder's gradient, ∇_θ log w, as it is (or change it in ways that
    # have no closed form), so they are recognized by the encoder's part alone.
    candidates = [
        ("the average gradient is the exact one plus the gradient of q's entropy: the "
         "stop-gradient is missing. Multiply log q(z|x) by log w.detach() (stop(log w)); without "
         "it autograd also differentiates log w through its −log q term.", exact + entropy, True),
        ("the average gradient points the opposite way: the surrogate should be the ELBO's, to be "
         "maximized (training minimizes its negative), not the loss.", -exact, False),
        (f"the encoder's average gradient is (K − 1)/K = {fmt(shrink)} of the exact one: your "
         "baseline includes the draw's own log w, which correlates it with the score. Use the "
         "mean of the other K − 1 draws.", shrink * exact, True),
        ("on average no gradient reaches the encoder: the score term stop(log w)·log q(z|x) is "
         "missing (log w's own gradient in φ, −∇ log q, averages to zero).",
         torch.zeros_like(exact), True),
    ]
    for message, target, encoder_only in candidates:
        part = encoder if encoder_only else torch.ones_like(encoder)
        if _consistent(mean[part], stderr[part], target[part]):
            report.fail(name, message, stop=False)
            return grads
    worst = int(((mean - exact).abs() / (stderr + 1e-12)).argmax())
    report.fail(name, f"the average gradient misses the exact one (weight {worst}: "
                f"{fmt(float(mean[worst]))} ± {fmt(float(stderr[worst]))} against "
                f"{fmt(float(exact[worst]))}): draw z with .sample() (no gradient through z), "
                "and return log w + stop(log w" + (" − b" if baseline else "") + ")·log q(z|x).",
                stop=False)
    return grads


def check_score_function(score_function_surrogate: Callable) -> GradeResult:
    """Grade ``score_function_surrogate(x, encoder, decoder, sigma, num_samples)``: its
    gradient is an unbiased estimate of the exact ELBO gradient."""
    report = Report("Exercise 5a — the score-function gradient of the ELBO")
    with report.grading():
        toy = _toy()
        torch.default_generator.manual_seed(0)
        value = as_tensor(report, "shape", call_student(
            report, "shape", score_function_surrogate, toy.x, toy.vae.encoder, toy.vae.decoder,
            SIGMA, 4))
        check_shape(report, value, (len(toy.x),), "one surrogate value per datapoint", {
            (): "You reduced over the batch: average over the samples only.",
            (4, len(toy.x)): "Average over the num_samples draws (dimension 0)."})
        _unbiased(report, "unbiased gradient", score_function_surrogate, toy, 100, 50, False)
    return report.result()


def check_score_function_baseline(surrogate_with_baseline: Callable) -> GradeResult:
    """Grade ``score_function_surrogate_with_baseline(x, encoder, decoder, sigma, num_samples)``:
    unbiased for K = 2 and K = 8, and of lower variance than no baseline."""
    report = Report("Exercise 5b — the score-function gradient with a leave-one-out baseline")
    with report.grading():
        toy = _toy()
        for samples in (2, 8):
            grads = _unbiased(report, f"unbiased gradient (K = {samples})",
                              surrogate_with_baseline, toy, samples, 200 if samples == 2 else 60,
                              True)
        if not report.checks[-1].passed:
            return report.result()
        plain = _gradients(report, "reference", reference_surrogate, toy, 8, 60)
        encoder = sum(p.numel() for p in _parameters(toy)[0])
        ratio = float(grads[:, :encoder].var(0).sum() / plain[:, :encoder].var(0).sum())
        if ratio < 0.5:
            report.ok("lower variance", f"the encoder gradient's variance is {ratio:.2g} of "
                      "the estimator's without a baseline (K = 8)")
        else:
            report.fail("lower variance", f"the encoder gradient's variance is {ratio:.2g} of the "
                        "estimator's without a baseline (K = 8): a good baseline takes most of it "
                        "away. Subtract, from each draw's log w, the mean log w of the other "
                        "draws of the same datapoint.", stop=False)
    return report.result()
