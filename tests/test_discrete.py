"""Discrete latents: the model, its estimators against the exact gradient, config and CLI.

The model is small enough (2 variables of 3 classes: 9 codes) that the ELBO, its gradient, the
IWAE bound and log p(x) are exact sums, so every sampling estimator is checked against the
truth. Unbiasedness: the coordinates of a gradient draw are strongly correlated (they share
a few discrete samples), so each part's draws g (encoder, decoder) are projected on that part's
exact gradient g*, u = g · g*/‖g*‖, a scalar whose mean is ‖g*‖ for an unbiased estimator;
with R independent draws t = (ū − ‖g*‖) / (sd(u)/√R) is about N(0, 1) and |t| < 4 fails with
probability 6e-5. The same statistic is shown to catch biased estimators, so the check can fail.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.models.discrete import build_discrete_vae
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.lab import compare_estimators
from pyro_vae.objectives import make_objective
from pyro_vae.objectives.particles import log_weights, run_particles
from helpers import model_config

DRAWS = 150


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(1)
    config = model_config(kind="discrete", categorical_latents=2, categories=3, hidden_dims=[8])
    vae = build_discrete_vae(config, (1, 4, 4))
    x = (torch.rand(3, 16) < 0.4).float()
    return vae, x


def _flat_grad(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1)
                      for g, p in zip(grads, params)])


def _draws(vae, x, objective, count: int = DRAWS) -> torch.Tensor:
    params = list(vae.parameters())
    return torch.stack([_flat_grad(objective.differentiable_loss(vae.model, vae.guide, x),
                                   params) for _ in range(count)])


def _t_statistics(draws: torch.Tensor, exact: torch.Tensor, vae) -> list[float]:
    """t of the projection on the exact gradient, for the encoder's and the decoder's part."""
    encoder_size = sum(p.numel() for p in vae.encoder.parameters())
    stats = []
    for part in (slice(0, encoder_size), slice(encoder_size, None)):
        direction = exact[part] / exact[part].norm()
        u = draws[:, part] @ direction
        stats.append(float((u.mean() - exact[part].norm()) / (u.std() / math.sqrt(len(u)))))
    return stats


def _exact_negative_elbo_grad(vae, x) -> torch.Tensor:
    return _flat_grad(-vae.exact_elbo(x).sum(), list(vae.parameters()))


def _exact_negative_iwae2_grad(vae, x) -> torch.Tensor:
    """−∇ Σ_n E_{z1, z2 ~ q}[log ½(w1 + w2)], summed over all 9 × 9 pairs of codes."""
    codes = vae.all_codes()
    log_q = torch.einsum("mkc,bkc->mb", codes, torch.log_softmax(vae.posterior_logits(x), -1))
    log_w = vae._joint_log_density(x, codes) - log_q                            # [M, B]
    pair = torch.logaddexp(log_w[:, None], log_w[None, :]) - math.log(2)        # [M, M, B]
    weight = log_q[:, None].exp() * log_q[None, :].exp()
    return _flat_grad(-(weight * pair).sum(), list(vae.parameters()))


def test_enumeration_gives_the_exact_elbo_and_gradient(small):
    vae, x = small
    objective = make_objective("enumerate")
    loss = objective.differentiable_loss(vae.model, vae.guide, x)
    assert torch.allclose(loss, -vae.exact_elbo(x).sum(), atol=1e-4)
    exact = _exact_negative_elbo_grad(vae, x)
    enumerated = _draws(vae, x, objective, count=1)[0]
    assert torch.allclose(enumerated, exact, atol=1e-4 * float(exact.abs().max()))


def test_exact_log_likelihood_against_importance_sampling(small):
    vae, x = small
    with torch.no_grad():
        exact = vae.exact_log_likelihood(x)
        elbo = vae.exact_elbo(x)
        estimate = estimate_log_likelihood(vae, x, num_samples=4000)
    assert (exact >= elbo - 1e-5).all()
    # 4000 draws over 9 codes: the estimate's O(1/K) bias and its noise are far below 0.05.
    assert torch.allclose(estimate.log_likelihood, exact, atol=0.05)


@pytest.mark.parametrize("name, particles, exact_grad", [
    ("score", 2, _exact_negative_elbo_grad),
    ("vimco", 2, _exact_negative_iwae2_grad),
])
@pytest.mark.slow
def test_score_function_gradients_are_unbiased(small, name, particles, exact_grad):
    vae, x = small
    t = _t_statistics(_draws(vae, x, make_objective(name, particles)), exact_grad(vae, x), vae)
    assert max(abs(value) for value in t) < 4.0, t


@pytest.mark.slow
def test_the_unbiasedness_check_catches_a_missing_score_term(small):
    """The same statistic on the score-function estimator *without* its score term (samples
    detached, gradient of log w only: the encoder then learns nothing about x's likelihood)."""
    vae, x = small

    class NoScoreTerm:
        def differentiable_loss(self, model, guide, x):
            traces = run_particles(model, guide, 2, (x,), {}, detach_samples=True)
            return -log_weights(traces).mean(0).sum()

    exact = _exact_negative_elbo_grad(vae, x)
    encoder_t, _ = _t_statistics(_draws(vae, x, NoScoreTerm(), count=50), exact, vae)
    assert abs(encoder_t) > 4.0


def _squared_bias(draws: torch.Tensor, exact: torch.Tensor) -> float:
    """‖mean − exact‖² less its expected noise tr Cov / R: an unbiased estimate of ‖bias‖²."""
    return float(((draws.mean(0) - exact) ** 2).sum() - draws.var(0).sum() / len(draws))


@pytest.mark.slow
def test_relaxed_gradient_bias_shrinks_as_the_temperature_falls(small):
    vae, x = small
    exact = _exact_negative_elbo_grad(vae, x)
    hot = _draws(vae, x, make_objective("concrete", temperature=2.0), count=100)
    cold = _draws(vae, x, make_objective("concrete", temperature=0.2), count=100)
    # At τ = 2 the relaxation is measurably biased (the check above rejects it) ...
    assert max(abs(t) for t in _t_statistics(hot, exact, vae)) > 4.0
    # ... and its squared bias falls by much more than a factor 4 at τ = 0.2.
    assert _squared_bias(cold, exact) < 0.25 * _squared_bias(hot, exact)


@pytest.mark.slow
def test_relaxed_objective_reports_the_discrete_elbo(small):
    vae, x = small
    objective = make_objective("concrete", temperature=2.0)
    with torch.no_grad():
        values = torch.tensor([-objective.loss(vae.model, vae.guide, x) for _ in range(100)])
    exact = float(vae.exact_elbo(x).sum().detach())
    stderr = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - exact) < 4 * stderr
    assert objective.last_relaxed_bound is not None


@pytest.mark.slow
def test_lab_bias_column_uses_the_exact_gradient(small):
    vae, x = small
    reports = compare_estimators(vae, x, ["enumerate", "score", "vimco"], [1, 2], repeats=3)
    assert [(r.objective, r.particles) for r in reports] == [
        ("enumerate", 1), ("score", 1), ("score", 2), ("vimco", 2)]
    assert reports[0].encoder_bias < 1e-6 and reports[0].encoder_grad_variance == 0.0
    assert all(r.encoder_bias is not None for r in reports)


@pytest.mark.parametrize("overrides, words", [
    ({"train": {"objective": "concrete"}}, "kind = \"discrete\""),
    ({"model": {"kind": "discrete"}, "train": {"objective": "iwae"}}, "reparameterized"),
    ({"model": {"kind": "discrete"}, "train": {"objective": "vimco"}}, "particles"),
    ({"model": {"kind": "discrete", "categorical_latents": 20},
      "train": {"objective": "enumerate"}}, r"10\^20 codes"),
    ({"model": {"kind": "discrete", "categories": 1}}, "at least 2"),
])
def test_config_refuses_mismatched_estimators(overrides, words):
    with pytest.raises(ConfigError, match=words):
        Config().with_overrides(overrides)


@pytest.mark.slow
def test_train_and_compare_from_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "models/digits_discrete.toml", "--epochs", "1", "--objective",
                 "straight_through", "--eval-samples", "20", "--out", str(run)])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_exact_log_likelihood"] >= summary["test_elbo"]
    assert (run / "categories.png").is_file() and (run / "samples.png").is_file()
    assert "exact (sum over all codes)" in capsys.readouterr().out
    code = main(["compare", str(run), "--objectives", "concrete,enumerate", "--particles", "1",
                 "--repeats", "3", "--batch-size", "4", "--temperatures", "1,0.5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "concrete@0.5" in out and "decoder bias" in out
    code = main(["compare", str(run), "--objectives", "iwae"])
    assert code == 2
