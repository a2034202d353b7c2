"""Structured output prediction: quadrant masks, masked likelihoods, vectorized particles."""

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models.quadrants import build_quadrant_model, given_mask
from pyro_vae.training import train

SHAPE = (1, 4, 4)


def _model(kind, quadrants=1):
    config = ModelConfig(kind=kind, quadrants=quadrants, latent_dim=3, hidden_dims=[16])
    return build_quadrant_model(config, SHAPE)


@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_given_quadrants(quadrants):
    given = given_mask(SHAPE, quadrants).reshape(4, 4)
    assert int(given.sum()) == 4 * quadrants
    assert bool(given[2:, :2].all())                     # bottom-left is always given
    assert bool(given[:2, :2].all()) == (quadrants > 1)  # then top-left
    assert bool(given[:2, 2:].all()) == (quadrants > 2)  # then top-right
    assert not bool(given[2:, 2:].any())                 # bottom-right is always predicted


def test_baseline_score_is_the_exact_likelihood_of_the_missing_pixels():
    baseline = _model("quadrant_baseline", 2)
    x = torch.rand(5, 16).round()
    logits = baseline.decoder(baseline.inputs(x))
    missing = ~baseline.given
    exact = torch.distributions.Bernoulli(logits=logits[:, missing]).log_prob(
        x[:, missing]).sum(-1)
    estimate = estimate_log_likelihood(baseline, x, num_samples=4)
    assert torch.allclose(estimate.log_likelihood, exact, atol=1e-5)
    # the given pixels are inputs, never scored: changing them only changes the prediction
    flipped = x.clone()
    flipped[:, missing] = 1 - flipped[:, missing]
    assert not torch.allclose(estimate_log_likelihood(baseline, flipped, 1).log_likelihood,
                              exact)


def test_cvae_trains_and_scores_with_vectorized_particles():
    cvae = _model("quadrant_cvae", 1)
    cvae.num_data = 100
    x = torch.rand(6, 16).round()
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(cvae.model, cvae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in cvae.prior.parameters())
    cvae.num_data = None
    torch.manual_seed(0)
    estimate = estimate_log_likelihood(cvae, x, num_samples=200)
    assert estimate.log_likelihood.shape == (6,)
    assert bool((estimate.elbo <= estimate.log_likelihood).all())
    assert cvae.predict(x, 3).shape == (3, 6, 16)
    # completions keep the given pixels
    assert torch.equal(cvae.predict(x, 2)[:, :, cvae.given], x[:, cvae.given].expand(2, 6, -1))


def test_quadrant_runs_write_completions(tmp_path):
    config = Config().with_overrides({"model": {"kind": "quadrant_cvae", "quadrants": 3},
                                      "train": {"epochs": 1}, "evaluate": {"num_samples": 5}})
    summary = train(config, tmp_path / "run")
    assert summary["score_name"] == "log p(y|x) of the missing quadrants"
    assert (tmp_path / "run" / "completions.png").exists()


def test_bad_quadrant_count(tmp_path, capsys):
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        Config.from_dict({"model": {"kind": "quadrant_cvae", "quadrants": 0}})
    assert main(["train", "--model", "quadrant_cvae", "--quadrants", "4",
                 "--out", str(tmp_path / "r")]) == 2
    assert "give 1, 2 or 3 quadrants" in capsys.readouterr().err
